"""``linear``: ``a(f) = a0 + (a1 - a0) * f`` from ``student.kd_linear = [a0, a1]`` (the weight at
fraction 0 and at fraction 1)."""
from __future__ import annotations

from kdprune.distill.schedule import register_schedule
from kdprune.options import Option


@register_schedule("linear", "kd_linear",
                   Option(list, [0.9, 0.1], "[weight at fraction 0, weight at fraction 1]", item=float, low=0.0,
                          high=1.0, validate=lambda v: None if len(v) == 2 else
                          "must be two KD weights in [0, 1]: [weight at fraction 0, weight at fraction 1]"),
                   arms=lambda p: [([p[0], p[1]], f"kdlin{p[0]:g}-{p[1]:g}")])
def linear(fraction: float, points: list[float]) -> float:
    a0, a1 = points
    return float(a0 + (a1 - a0) * fraction)
