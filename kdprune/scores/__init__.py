"""Pruning scores, one module each, registered by name (``register_score``) with everything the
pipeline needs to know about them. Every module of this package is imported here, so adding a
score is adding one file."""
import importlib
import pkgutil

from kdprune.scores.base import SCORES, ScoreContext, ScoreSpec, register_score  # noqa: F401

for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_m}")
