"""KD weight as a function of the kept fraction: the schedule registry.

A schedule is one module of ``kdprune/distill/schedules`` (``constant``, ``linear``, ``table``),
registered with :func:`register_schedule`, which declares its one argument: the ``student`` key it is
read from (``param``, e.g. ``student.kd_linear``) and its type, default and rule (``option``, an
:class:`~kdprune.options.Option`), how the argument makes KD arms (``arms``), and a cross-key rule
(``check``) params validation runs when ``student.kd_schedule`` names it. Params validation
(``kdprune.config``) calls the chosen schedule's ``fn(fraction, arg)`` once per arm and kept fraction and puts
the weight in each student's :class:`~kdprune.distill.KDSetting`; nothing after validation calls a schedule.
Ben-Baruch et al. find the best weight is large when little data is kept and small when most is,
which ``linear`` with a0 > a1 or a ``table`` can express.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

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
