"""The KD loss registry. A loss is ``fn(student_logits, targets, teacher_logits | None, weight,
temperature, **options) -> per-example loss [B]``, registered with :func:`register_loss`, which
declares its own hyperparameters (``options``: name -> :class:`~kdprune.options.Option`, every keyword
option of the function, defaults agreeing) and whether it reads the teacher's logits (``teacher``).
``params.yaml`` names a loss's options under it, ``student.<loss>: {option: value}``; params validation
checks them against the registration and the trainer passes them to the loss
(``TrainConfig.loss_options``), so a loss with its own hyperparameters is one file."""
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
class LossSpec:
    name: str
    fn: LossFn
    options: dict[str, Option] = field(default_factory=dict)  # under student.<name> in params
    teacher: bool = True  # reads the teacher's logits (False: the no-KD baseline, ce)

    def resolve(self, given: Optional[dict]) -> dict:
        """Its options from params' ``student.<name>`` (or None) with the defaults filled in; ValueError
        naming every unknown or bad option."""
        return resolve_options(f"student.{self.name}", self.options, given)

    def __call__(self, student: torch.Tensor, y: torch.Tensor, teacher: Optional[torch.Tensor], weight: float,
                 temperature: float, **options) -> torch.Tensor:
        return self.fn(student, y, teacher, weight, temperature, **options)


LOSSES: Registry[LossSpec] = Registry("loss")


def register_loss(name: str, *, options: Optional[dict[str, Option]] = None, teacher: bool = True):
    """Register ``fn`` as loss ``name`` with its hyperparameters ``options`` (each a keyword argument of
    ``fn`` after the five positionals, declared defaults equal to the function's) and whether it reads the
    teacher's logits."""
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
        LOSSES.register(name)(LossSpec(name, fn, options, teacher))
        return fn

    return deco
