"""Pruning scores, one module each, registered by name with their keep direction."""
from kdprune.scores.base import SCORES, ScoreContext, ScoreSpec, register_score  # noqa: F401
from kdprune.scores import random_score, el2n, forgetting  # noqa: F401,E402
from kdprune.scores import (  # noqa: F401,E402
    aum,
    dynamic_uncertainty,
    el2n_proxy,
    grand,
    memorization,
    moderate_ds,
    prototypes,
    uncertainty,
)
