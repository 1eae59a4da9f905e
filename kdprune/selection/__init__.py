"""Static selectors: turn a per-example score into a kept subset of sample ids."""
from kdprune.selection.static import SELECTORS, budget, register_selector, select  # noqa: F401
