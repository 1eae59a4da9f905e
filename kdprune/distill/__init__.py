"""Distillation: KD losses (``LOSSES``, one module each in ``losses/``; the training step calls
``LOSSES.of(kd).fn(student, y, teacher, kd.weight, kd.temperature, **dict(kd.options))`` with a student's
``KDSetting`` ``kd``) and KD weight schedules of the kept fraction (``SCHEDULES``, one module each in
``schedules/``; params validation calls the chosen one's ``fn(fraction, arg)`` and puts the weight in each
student's ``KDSetting``). Every module of this package is imported here (``losses`` and ``schedules`` discover
theirs), so adding a loss or a schedule is adding one file."""
from kdprune.distill.base import LOSSES, NO_KD, KDSetting, LossSpec, kd_record, register_loss  # noqa: F401
from kdprune.distill.schedule import SCHEDULES, register_schedule  # noqa: F401
from kdprune.registry import discover

discover(__name__, __path__)
