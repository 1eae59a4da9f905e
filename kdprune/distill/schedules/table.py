"""``table``: piecewise-linear through the points ``student.kd_table = [[fraction, weight], ...]``, held
constant beyond the first and last point."""
from __future__ import annotations

from kdprune.distill.schedule import register_schedule
from kdprune.options import Option


def _table_error(v) -> str | None:
    if v is None:  # unset: an error only when the table schedule is chosen (_chosen)
        return None
    ok = isinstance(v, list) and v and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in p)
        and 0.0 < p[0] <= 1.0 and 0.0 <= p[1] <= 1.0 for p in v)
    if not ok:
        return "must be a non-empty list of [fraction in (0, 1], weight in [0, 1]] pairs"
    if len({p[0] for p in v}) != len(v):
        return "has the same fraction twice"
    return None


def _chosen(v, params: dict) -> str | None:
    return None if v else "student.kd_table: missing; kd_schedule 'table' needs [[fraction, weight], ...] pairs"


@register_schedule("table", "kd_table",
                   Option(object, None, "[[fraction, weight], ...], piecewise-linear between the points",
                          validate=_table_error),
                   arms=lambda pts: [([list(x) for x in pts], "kdtable")], check=_chosen)
def table(fraction: float, points: list[list[float]]) -> float:
    pts = sorted((float(f), float(w)) for f, w in points)
    if fraction <= pts[0][0]:
        return pts[0][1]
    for (f0, w0), (f1, w1) in zip(pts, pts[1:]):
        if fraction <= f1:
            return w0 + (w1 - w0) * (fraction - f0) / (f1 - f0)
    return pts[-1][1]
