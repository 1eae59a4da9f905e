"""``constant``: the same KD weight at every kept fraction, one student variant per weight in
``student.kd_weights``."""
from __future__ import annotations

from kdprune.distill.schedule import register_schedule
from kdprune.options import Option


def _distinct(v: list) -> str | None:
    if not v:
        return "must not be empty"
    return "has duplicates" if len(set(v)) != len(v) else None


@register_schedule("constant", "kd_weights",
                   Option(list, [0.5], "KD weights, one KD arm each", item=float, low=0.0, high=1.0, validate=_distinct),
                   arms=lambda weights: [(w, f"kd{w:g}") for w in weights], fixed=True)
def constant(fraction: float, weight: float) -> float:
    return float(weight)
