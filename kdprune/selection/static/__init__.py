"""Static selectors (kept subset chosen once, before training), one module each, registered in
``SELECTORS`` by ``register_selector``; those that are selection methods of their own (CCS) also in
``STATIC_METHODS`` with their options (see ``base``). Every module of this package is imported here,
so adding a static selector is adding one file."""
from kdprune.registry import discover
from kdprune.selection.static.base import (  # noqa: F401
    SELECTORS, STATIC_METHODS, SelectorSpec, budget, class_quotas, kept_count, register_selector, select,
    selector_options, tie_ranks,
)

discover(__name__, __path__)
