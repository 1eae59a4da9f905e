"""KD weight as a function of the kept fraction: the schedule registry, and a sweep's KD arms.

A schedule is one module of ``kdprune/distill/schedules`` (``constant``, ``linear``, ``table``),
registered with :func:`register_schedule`, which declares its one argument: the ``student`` key it is
read from (``param``, e.g. ``student.kd_linear``) and its type, default and rule (``option``, an
:class:`~kdprune.options.Option`), how the argument makes KD arms (``arms``), and a cross-key rule
(``check``) params validation runs when ``student.kd_schedule`` names it.
Ben-Baruch et al. find the best weight is large when little data is kept and small when most is,
which ``linear`` with a0 > a1 or a ``table`` can express.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from kdprune.distill.base import KDSetting
from kdprune.options import Option
from kdprune.registry import Registry


@dataclass(frozen=True)
class ScheduleSpec:
    """A KD weight schedule: ``fn(fraction, arg)`` -> weight in [0, 1]; ``param``, the ``student``
    param its argument comes from, ``option`` its type, default and rule; ``arms(value of param)`` ->
    [(arg, label)], one KD arm each; ``check(value of param, params)`` -> error text or None."""

    name: str
    fn: Callable[[float, Any], float]
    param: str
    option: Option
    arms: Callable[[Any], list[tuple[Any, str]]]
    check: Optional[Callable[[Any, dict], Optional[str]]] = None
    fixed: bool = False  # each arm is one weight at every kept fraction (reports label the arm by it: "KD a=0.5")

    def __call__(self, fraction: float, arg: Any) -> float:
        return self.fn(fraction, arg)


SCHEDULES: Registry[ScheduleSpec] = Registry("KD weight schedule")


def register_schedule(name: str, param: str, option: Option, arms: Callable[[Any], list[tuple[Any, str]]],
                      check: Optional[Callable[[Any, dict], Optional[str]]] = None, fixed: bool = False):
    """Register ``fn(fraction, arg)`` as schedule ``name``, its argument ``student.<param>`` (``option``: its
    type, default and rule), its arms made by ``arms``; ``check``: a cross-key rule run when it is chosen;
    ``fixed``: each arm is one weight at every kept fraction."""
    def deco(fn: Callable[[float, Any], float]) -> Callable[[float, Any], float]:
        taken = [n for n in SCHEDULES.names() if SCHEDULES.get(n).param == param]
        if taken:
            raise ValueError(f"schedule {name!r}: student.{param} is already schedule {taken[0]!r}'s argument")
        SCHEDULES.register(name)(ScheduleSpec(name, fn, param, option, arms, check, fixed))
        return fn

    return deco


@dataclass(frozen=True)
class KDArm:
    """One KD arm of a sweep, resolved from params by validation: its weight schedule and the schedule's
    argument, a label for names and reports, and what every student of the arm distils with (the loss, its
    options, the temperature). :meth:`at` gives a student's own :class:`KDSetting`, its weight at its fraction."""

    schedule: str
    arg: object  # the weight (constant), [a0, a1] (linear) or the points (table)
    label: str  # e.g. "kd0.5", "kdlin0.9-0.1", "kdtable"
    loss: str
    temperature: float
    options: tuple = ()  # the loss's own options, as sorted (name, value) pairs

    def weight(self, fraction: float) -> float:
        return SCHEDULES.get(self.schedule)(fraction, self.arg)

    def at(self, fraction: float, teacher: str) -> KDSetting:
        """The KD setting of a student of this arm kept at ``fraction`` and distilled from ``teacher``."""
        return KDSetting(self.loss, self.weight(fraction), self.temperature, teacher, self.schedule, self.label,
                         self.options)


def kd_arms(schedule: str, arg: Any, loss: str, temperature: float, options: tuple = ()) -> tuple[KDArm, ...]:
    """The KD arms of weight schedule ``schedule`` with its argument ``arg`` (the no-KD baseline is separate and
    always runs): the schedule's registration says how its argument makes arms."""
    spec = SCHEDULES.get(schedule)  # unknown names fail with the valid ones
    return tuple(KDArm(spec.name, a, label, loss, temperature, options) for a, label in spec.arms(arg))
