"""KD losses, one module each, registered in ``LOSSES`` (kdprune/distill/base.py) with their options.
Every module of this package is imported here, so adding a loss is adding one file."""
from kdprune.registry import discover

discover(__name__, __path__)
