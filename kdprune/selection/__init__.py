"""Selection: static selectors (score -> kept subset of sample ids), per-epoch samplers and joint
selectors, each a package of one module per method that discovers its modules; ``methods`` says what a
name in ``select.methods`` means."""
from kdprune.selection.static import (  # noqa: F401
    SELECTORS, STATIC_METHODS, budget, class_quotas, register_selector, select, selector_options,
)
from kdprune.selection.samplers import SAMPLERS, Sampler, make_sampler, register_sampler  # noqa: F401
from kdprune.selection.joint import JOINT, JointInputs, run_joint  # noqa: F401
from kdprune.selection.methods import (  # noqa: F401
    Method, SelectSettings, method_from_params, parse_method, select_settings, valid_names,
)
