"""KD weight as a function of the kept fraction, registered by name.

``constant``: the same weight at every fraction (one student variant per weight in
``student.kd_weights``). ``linear``: ``a(f) = a0 + (a1 - a0) * f`` from ``student.kd_linear = [a0, a1]``
(the weight at fraction 0 and at fraction 1). ``table``: piecewise-linear through the points
``student.kd_table = [[fraction, weight], ...]``, held constant beyond the first and last point.
Ben-Baruch et al. find the best weight is large when little data is kept and small when most is,
which ``linear`` with a0 > a1 or a ``table`` can express.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kdprune.registry import Registry


@dataclass(frozen=True)
class ScheduleSpec:
    """A KD weight schedule: ``fn(fraction, arg)`` -> weight in [0, 1]; ``param``, the ``student``
    param its arguments come from; ``arms(value of param)`` -> [(arg, label)], one KD arm each."""

    name: str
    fn: Callable[[float, Any], float]
    param: str
    arms: Callable[[Any], list[tuple[Any, str]]]

    def __call__(self, fraction: float, arg: Any) -> float:
        return self.fn(fraction, arg)


SCHEDULES: Registry[ScheduleSpec] = Registry("KD weight schedule")


def register_schedule(name: str, param: str, arms: Callable[[Any], list[tuple[Any, str]]]):
    """Register ``fn(fraction, arg)`` as schedule ``name``, its arms read from ``student.<param>``."""
    def deco(fn: Callable[[float, Any], float]) -> Callable[[float, Any], float]:
        SCHEDULES.register(name)(ScheduleSpec(name, fn, param, arms))
        return fn

    return deco


@register_schedule("constant", "kd_weights", arms=lambda weights: [(w, f"kd{w:g}") for w in weights])
def constant(fraction: float, weight: float) -> float:
    return float(weight)


@register_schedule("linear", "kd_linear", arms=lambda p: [([p[0], p[1]], f"kdlin{p[0]:g}-{p[1]:g}")])
def linear(fraction: float, points: list[float]) -> float:
    a0, a1 = points
    return float(a0 + (a1 - a0) * fraction)


@register_schedule("table", "kd_table", arms=lambda pts: [([list(x) for x in pts], "kdtable")])
def table(fraction: float, points: list[list[float]]) -> float:
    pts = sorted((float(f), float(w)) for f, w in points)
    if fraction <= pts[0][0]:
        return pts[0][1]
    for (f0, w0), (f1, w1) in zip(pts, pts[1:]):
        if fraction <= f1:
            return w0 + (w1 - w0) * (fraction - f0) / (f1 - f0)
    return pts[-1][1]


@dataclass(frozen=True)
class KDArm:
    """One KD arm of a sweep: a label for names and reports, and its weight at a kept fraction (a
    student's own KD setting, with its weight at its fraction: ``kdprune.train.plan.KDSetting``)."""

    schedule: str
    arg: object  # the weight (constant), [a0, a1] (linear) or the points (table)
    label: str  # e.g. "kd0.5", "kdlin0.9-0.1", "kdtable"

    def weight(self, fraction: float) -> float:
        return SCHEDULES.get(self.schedule)(fraction, self.arg)


def kd_arms(student: dict) -> list[KDArm]:
    """The KD arms ``student`` params ask for (the no-KD baseline is separate and always runs): the
    schedule's registration says which param holds its arguments and how they make arms."""
    spec = SCHEDULES.get(student["kd_schedule"])  # unknown names fail with the valid ones
    return [KDArm(spec.name, arg, label) for arg, label in spec.arms(student[spec.param])]
