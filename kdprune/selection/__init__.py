"""Selection: static selectors (score -> kept subset of sample ids) and per-epoch samplers."""
from kdprune.selection.static import (  # noqa: F401
    SELECTOR_OPTIONS, SELECTORS, budget, class_quotas, declare_options, register_selector, select,
    selector_options,
)
from kdprune.selection.ccs import CCS, ccs_allocation, ccs_beta_at, ccs_budget, ccs_strata  # noqa: F401  (registers "ccs")
from kdprune.selection.samplers import SAMPLERS, Sampler, make_sampler, register_sampler  # noqa: F401
from kdprune.selection.joint import JOINT, JointInputs, run_joint  # noqa: F401
from kdprune.selection.methods import Method, method_from_params, parse_method, valid_names  # noqa: F401
