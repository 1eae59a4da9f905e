"""The KD loss registry. A loss is ``fn(student_logits, targets, teacher_logits | None, weight,
temperature, **options) -> per-example loss [B]``, registered with :func:`register_loss`, which
declares its own hyperparameters (``options``: name -> :class:`~kdprune.options.Option`, every keyword
option of the function, defaults agreeing) and whether it reads the teacher's logits (``teacher``).
``params.yaml`` names a loss's options under it, ``student.<loss>: {option: value}``; params validation
checks them against the registration, and they reach the loss inside the student's :class:`KDSetting`
(one typed value: loss, weight, temperature, options; ``None`` = no KD, which trains on the loss
registered as the ``baseline``), so a loss with its own hyperparameters is one file. The training step
(``kdprune.train.trainer.TrainStep``) calls the registered ``fn`` itself with the setting's parts (weight 0,
temperature 1 for the baseline)."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from kdprune.options import Option, resolve_options
from kdprune.registry import Registry

# (student_logits, targets, teacher_logits | None, weight, temperature, **options) -> per-example loss [B]
LossFn = Callable[..., torch.Tensor]
POSITIONAL = 5  # student_logits, targets, teacher_logits, weight, temperature


@dataclass(frozen=True)
class KDSetting:
    """How a student distils, as one typed value: the KD loss, its weight at the student's kept fraction, the
    temperature, the loss's own options (its registration's, params ``student.<loss>``, as sorted (name, value)
    pairs), the teacher's architecture, and the sweep arm it belongs to (the weight schedule and the arm's
    label). A student without KD has none (``None``): it trains on the baseline loss alone."""

    loss: str
    weight: float
    temperature: float
    teacher: str
    schedule: str
    label: str  # the arm, e.g. "kd0.5", "kdlin0.9-0.1"
    options: tuple = ()

    @property
    def setting(self) -> str:
        """The arm with its temperature, as in student names and reports: ``kd0.5-T4``."""
        return f"{self.label}-T{self.temperature:g}"


# what a student's record says of a KD setting (None: no KD); one place, so that the records of students
# with and without KD have the same fields
NO_KD = {"kd": False, "kd_weight": 0.0, "kd_schedule": "none", "kd_setting": "nokd", "temperature": None}


def kd_record(kd: Optional[KDSetting]) -> dict:
    """A student's KD fields in its record: ``NO_KD``, or the setting's weight, schedule, arm and temperature."""
    if kd is None:
        return dict(NO_KD)
    return {"kd": True, "kd_weight": kd.weight, "kd_schedule": kd.schedule, "kd_setting": kd.setting,
            "temperature": kd.temperature}


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: LossFn
    options: dict[str, Option] = field(default_factory=dict)  # under student.<name> in params
    teacher: bool = True  # reads the teacher's logits
    baseline: bool = False  # the loss a student without KD (KDSetting None) trains on

    def resolve(self, given: Optional[dict]) -> dict:
        """Its options from params' ``student.<name>`` (or None) with the defaults filled in; ValueError
        naming every unknown or bad option."""
        return resolve_options(f"student.{self.name}", self.options, given)


class LossRegistry(Registry[LossSpec]):
    def baseline(self) -> LossSpec:
        """The loss registered as the no-KD baseline."""
        found = [self.get(n) for n in self.names() if self.get(n).baseline]
        if len(found) != 1:
            raise LookupError(f"exactly one loss must be registered with baseline=True; found {len(found)}")
        return found[0]

    def of(self, kd: Optional[KDSetting]) -> LossSpec:
        """The loss a student with KD setting ``kd`` trains on: its KD loss, or the baseline without KD."""
        return self.baseline() if kd is None else self.get(kd.loss)


LOSSES: LossRegistry = LossRegistry("loss")


def register_loss(name: str, *, options: Optional[dict[str, Option]] = None, teacher: bool = True,
                  baseline: bool = False):
    """Register ``fn`` as loss ``name`` with its hyperparameters ``options`` (each a keyword argument of
    ``fn`` after the five positionals, declared defaults equal to the function's), whether it reads the
    teacher's logits, and whether it is the no-KD baseline (one loss is: what a student without KD trains on)."""
    options = dict(options or {})

    def deco(fn: LossFn) -> LossFn:
        takes = {p.name: p for p in list(inspect.signature(fn).parameters.values())[POSITIONAL:]}
        if set(takes) != set(options):
            raise ValueError(f"loss {name!r}: declared options {sorted(options)} differ from the function's keyword "
                             f"options {sorted(takes)}")
        for k, p in takes.items():
            if p.default is not inspect.Parameter.empty and p.default != options[k].default:
                raise ValueError(f"loss {name!r}: option {k} defaults to {options[k].default!r} in the registration "
                                 f"but {p.default!r} in the function")
        if baseline and any(LOSSES.get(n).baseline for n in LOSSES.names()):
            raise ValueError(f"loss {name!r}: {LOSSES.baseline().name!r} is already the no-KD baseline")
        LOSSES.register(name)(LossSpec(name, fn, options, teacher, baseline))
        return fn

    return deco
