"""Distillation: KD losses (``LOSSES``, one module each in ``losses/``, called as
``LOSSES.of(kd)(student, y, teacher, kd)`` with a student's ``KDSetting`` ``kd``) and KD weight schedules of the kept
fraction (``SCHEDULES``, one module each in ``schedules/``; ``kd_arms(...)``, resolved by params validation). Every module
of this package is imported here (``losses`` and ``schedules`` discover theirs), so adding a loss or a
schedule is adding one file."""
from kdprune.distill.base import LOSSES, NO_KD, KDSetting, LossSpec, kd_record, register_loss  # noqa: F401
from kdprune.distill.schedule import SCHEDULES, KDArm, kd_arms, register_schedule  # noqa: F401
from kdprune.registry import discover

discover(__name__, __path__)
