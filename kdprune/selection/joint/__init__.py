"""Joint selectors (DeepCore's geometry, submodular and gradient-matching baselines), one module each,
registered in ``JOINT`` with their options, inputs and whether they are seeded (see ``base``)."""
from kdprune.selection.joint.base import (  # noqa: F401
    JOINT, JointInputs, JointSpec, Option, Picked, Similarity, lazy_greedy, register_joint, run_joint,
)
from kdprune.selection.joint import (  # noqa: F401,E402
    cal, craig, deepfool, facility_location, glister, gradmatch, graph_cut, herding, kcenter,
)
