"""The typed, frozen sections of validated params: what :func:`kdprune.config.validate` gives the stages and
the core, each section resolved once (a method's options from its registration, the KD arms of the weight
schedule). Shared types in a module of their own: the trainer's configuration is built from a section
(``kdprune.train.types.train_config``) without importing the params schema."""
from __future__ import annotations

from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class TrainSettings:
    """The schedule, optimiser and augmentation keys a teacher and a student section share (``_train_fields``)."""

    arch: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: float
    pad: int
    flip: bool
    compile: bool
    channels_last: Optional[bool]

    def training(self) -> dict:
        """Its training keys as plain values (what a student's training key records of its settings)."""
        return {f.name: getattr(self, f.name) for f in fields(TrainSettings)}


@dataclass(frozen=True)
class TeacherSettings(TrainSettings):
    """Params' ``teacher`` section, typed: its training keys, seed, the dynamics it records and its workers."""

    seed: int
    dynamics: str
    workers: int


@dataclass(frozen=True)
class StudentSettings(TrainSettings):
    """Params' ``student`` section, typed and resolved once: its training keys, the sweep's axes (seeds, extra
    teachers), the budget, whether students use each teacher's logits computed once (``cached_logits``: asked
    for, and augmentation off), and the KD settings of its students (``kd``: per kept fraction the select stage
    makes, a tuple of :class:`kdprune.distill.KDSetting`, one per arm of the weight schedule and teacher allowed
    at that fraction, each with its weight there; the no-KD baseline is not among them: it always runs)."""

    seeds: tuple[int, ...]
    loss: str
    kd_schedule: str
    temperature: float
    cached_logits: bool
    teachers: tuple[str, ...]
    teachers_max_fraction: float
    budget: str
    # ((fraction, (KDSetting, ...)), ...) in fraction order; None: the KD registries were out of the validating
    # stage's scope
    kd_settings: Optional[tuple] = None

    @property
    def kd(self) -> tuple:
        """((kept fraction, its students' KD settings), ...), resolved by validation."""
        if self.kd_settings is None:
            raise RuntimeError("the KD settings were not resolved: these params were validated for a stage that does "
                               "not use the KD losses and schedules (kdprune.config.STAGE_NAMES)")
        return self.kd_settings


class Params(dict):
    """Validated params: the typed, frozen sections resolved once by :func:`validate` (``.teacher``,
    ``.student``), and, as the mapping itself, the plain values with defaults filled in (what MLflow logs,
    DVC tracks and a params file holds: ``as_dict()``)."""

    def __init__(self, plain: dict, typed: Mapping[str, Any]):
        super().__init__(plain)
        self._typed = MappingProxyType(dict(typed))

    def _get(self, name: str):
        try:
            return self._typed[name]
        except KeyError:
            raise AttributeError(f"params section {name!r} has no typed form") from None

    @property
    def teacher(self) -> TeacherSettings:
        return self._get("teacher")

    @property
    def student(self) -> StudentSettings:
        return self._get("student")

    def as_dict(self) -> dict:
        """The plain values, as a new dict (nested sections shared)."""
        return dict(self)

    def __reduce__(self):  # pickled (Ray's object store, a process pool) with its typed sections
        return (Params, (dict(self), dict(self._typed)))
