"""Distillation losses, registered by name: ``LOSSES.get("kd")(student, y, teacher, weight, T)``;
KD weight schedules of the kept fraction: ``SCHEDULES`` / ``kd_arms(student_params)``. Every
module of this package is imported here, so adding a loss is adding one file."""
from kdprune.distill.base import LOSSES, register_loss  # noqa: F401
from kdprune.distill.schedule import SCHEDULES, KDArm, kd_arms, register_schedule  # noqa: F401
from kdprune.registry import discover

discover(__name__, __path__)
