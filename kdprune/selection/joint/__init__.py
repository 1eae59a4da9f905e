"""Joint selectors (DeepCore's geometry, submodular and gradient-matching baselines), one module each,
registered in ``JOINT`` with their options, inputs and whether they are seeded (see ``base``). Every
module of this package is imported here, so adding a joint selector is adding one file."""
from kdprune.registry import discover
from kdprune.selection.joint.base import (  # noqa: F401
    JOINT, JointInputs, JointSpec, Option, Picked, Similarity, lazy_greedy, register_joint, run_joint,
)

discover(__name__, __path__)
