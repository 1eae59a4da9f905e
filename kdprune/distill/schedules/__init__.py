"""KD weight schedules, one module each, registered in ``SCHEDULES`` (kdprune/distill/schedule.py) with
their argument. Every module of this package is imported here, so adding a schedule is adding one file."""
from kdprune.registry import discover

discover(__name__, __path__)
