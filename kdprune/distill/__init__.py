"""Distillation losses, registered by name: ``LOSSES.get("kd")(student, y, teacher, weight, T)``;
KD weight schedules of the kept fraction: ``SCHEDULES`` / ``kd_settings(student_params)``."""
from kdprune.distill.base import LOSSES, register_loss  # noqa: F401
from kdprune.distill import kd  # noqa: F401,E402
from kdprune.distill.schedule import SCHEDULES, KDSetting, kd_settings, register_schedule  # noqa: F401,E402
