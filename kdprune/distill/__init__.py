"""Distillation losses, registered by name: ``LOSSES.get("kd")(student, y, teacher, weight, T)``."""
from kdprune.distill.base import LOSSES, register_loss  # noqa: F401
from kdprune.distill import kd  # noqa: F401,E402
