"""Pruning scores, one module each, registered by name (``register_score``) with everything the
pipeline needs to know about them. Every module of this package is imported here, so adding a
score is adding one file."""
from kdprune.registry import discover
from kdprune.scores.base import SCORES, ScoreContext, ScoreSpec, register_score  # noqa: F401

discover(__name__, __path__)
