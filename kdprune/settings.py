"""The typed, frozen sections of validated params: what :func:`kdprune.config.validate` gives the stages and
the core, one value per section, each resolved once (a method's options from its registration, the select section's methods, each kept
fraction's KD settings with the schedule's weight there). Shared types in a module of their own: the trainer's
configuration is built from a section (``kdprune.train.types.train_config``) without importing the params
schema. Each class's fields are its section's keys in the schema (``kdprune.config.SCHEMA``; a test holds them
equal)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Iterator, Mapping, Optional


class Frozen(Mapping):
    """A read-only mapping that pickles (Ray's object store, a process pool), unlike ``MappingProxyType``."""

    __slots__ = ("_d",)

    def __init__(self, items: Mapping | None = None):
        object.__setattr__(self, "_d", dict(items or {}))

    def __getitem__(self, key):
        return self._d[key]

    def __iter__(self) -> Iterator:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"Frozen({self._d!r})"

    def __reduce__(self):
        return (Frozen, (self._d,))


@dataclass(frozen=True)
class ReproducibilitySettings:
    """Params' ``reproducibility`` section: the CPU setting (``portable`` | ``native``) and each stage
    process's thread count (kdprune/reproducibility.py)."""

    cpu: str
    threads: int


@dataclass(frozen=True)
class RunnerSettings:
    """Params' ``runner`` section: where the fan-out stages' tasks run (execution/runner.py)."""

    kind: str  # local | ray
    address: Optional[str]
    cpus_per_task: int
    gpus_per_task: Optional[float]


@dataclass(frozen=True)
class DataSettings:
    """Params' ``data`` section: the dataset, its split, and how it is read (in memory or streamed from files)."""

    dataset: str
    root: Optional[str]
    val_fraction: float
    split_seed: int
    max_train: Optional[int]
    loader: str  # memory | stream | auto
    memory_budget_gb: float
    image_size: int
    resize: int
    random_crop: bool
    crop_scale: tuple[float, float]
    workers: Optional[int]


@dataclass(frozen=True)
class ScoresSettings:
    """Params' ``scores`` section, typed: the scores computed, their seeds, the proxy and memorisation runs,
    and each computed score's options resolved once from its registration (``options``: score -> options;
    empty when the scores registry was out of the validating stage's scope)."""

    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    proxy_seeds: tuple[int, ...]
    proxy_epochs: int
    proxy_arch: Optional[str]
    grand_epoch: int
    encoder: Optional[str]
    memorization_models: int
    memorization_fraction: float
    memorization_epochs: int
    options: Mapping[str, Mapping] = field(default_factory=Frozen)

    def options_of(self, name: str) -> dict:
        """Score ``name``'s resolved options (a copy); KeyError for a score that scores.methods does not compute."""
        if name not in self.options:
            raise KeyError(f"score {name!r} is not among scores.methods {list(self.methods)}, or its options were "
                           "not resolved (the scores registry was out of the validating stage's scope)")
        return dict(self.options[name])


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


@dataclass(frozen=True)
class Params:
    """Validated params: one typed, frozen value per section (``device`` is a scalar), each resolved once by
    :func:`kdprune.config.validate`, which is the only maker of this class. ``as_dict()`` gives the plain
    values with defaults filled in (what MLflow logs, DVC tracks and a params file holds)."""

    device: str
    reproducibility: ReproducibilitySettings
    runner: RunnerSettings
    data: DataSettings
    teacher: TeacherSettings
    scores: ScoresSettings
    # kdprune.selection.SelectSettings, which lives with the selection registries (it parses their methods; not
    # imported here, so that a stage that does not select does not depend on them); None: out of the
    # validating stage's scope
    select: Optional[Any]
    student: StudentSettings
    plain: Mapping = field(default_factory=Frozen)

    def as_dict(self) -> dict:
        """The plain values, with defaults filled in, as a new nested dict."""
        return copy.deepcopy(dict(self.plain))

    def section(self, name: str) -> dict:
        """One section's plain values (a new dict): for records (MLflow params, cache keys), not for logic."""
        return copy.deepcopy(self.plain[name])
