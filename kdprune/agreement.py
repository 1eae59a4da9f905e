"""Does a re-run agree with the recorded results? Cell by cell, bytes or seed noise (``kdprune verify``).

A cell is one number of ``reports/metrics.json``: a student's test accuracy for (method, kept fraction,
KD arm), mean over ``student.seeds``, or a teacher's. Two regimes:

- **bytes**: the re-run reproduced the recorded models bit for bit (the portable setting on an x86-64
  CPU with AVX2, README "Reproducibility"). Then nothing is noise: every cell must be equal.
- **noise**: the models differ (a GPU, another CPU family, ``native`` kernels, other threads). A cell
  agrees when its difference is within what seed-to-seed variation explains: with n seeds and per-seed
  standard deviation s (pooled over both runs), a difference of means has standard deviation
  s·sqrt(2/n); ``allowed`` is ``Z`` times that. With one seed there is no s: ``allowed`` falls back to
  the test set's sampling noise alone (binomial, sqrt(p(1-p)/n_test)), a lower bound on seed noise, and
  the verdict says it needs more seeds (``seeds_needed``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

Z = 3.0  # a cell outside Z standard deviations of the difference is not explained by noise
MIN_SEEDS = 3  # seeds a noise verdict needs to rest on a measured spread


@dataclass(frozen=True)
class Cell:
    name: str  # e.g. "test_acc/random/0.1/KD a=0.5"
    committed: Optional[float]
    rerun: Optional[float]
    difference: Optional[float]
    allowed: Optional[float]
    verdict: str  # identical | within noise | OUTSIDE NOISE | MISSING | within test-set noise (1 seed)
    ok: bool

    def as_dict(self) -> dict:
        return asdict(self)


def metric_cells(metrics: dict) -> dict[str, float]:
    """The numbers of a metrics.json (evaluate's ``dvc_metrics``), by cell name."""
    out = {f"teacher_test_acc/{arch}": float(v) for arch, v in (metrics.get("teacher_test_acc") or {}).items()}
    for method, fractions in (metrics.get("test_acc") or {}).items():
        for fraction, arms in fractions.items():
            for arm, v in arms.items():
                out[f"test_acc/{method}/{fraction}/{arm}"] = float(v)
    return out


def spreads(plot_rows: list[dict]) -> dict[str, tuple[float, int]]:
    """(per-seed std, seeds) of each student cell (``no_kd``, ``kd``), from the rows of
    reports/plots/accuracy.csv (one per KD arm; the ``kd`` cell takes the widest spread of its arms)."""
    out: dict[str, tuple[float, int]] = {}
    for r in plot_rows:
        std = float(r["std"]) if r.get("std") not in (None, "") else 0.0
        std = 0.0 if math.isnan(std) else std
        kind = "no_kd" if r["arm"] == "no KD" else "kd"
        name = f"test_acc/{r['method']}/{float(r['fraction']):g}/{kind}"
        s0, n0 = out.get(name, (0.0, 10 ** 9))
        out[name] = (max(s0, std), min(n0, int(float(r["seeds"]))))
    return out


def compare(committed: dict[str, float], rerun: dict[str, float], spread_c: dict[str, tuple[float, int]],
            spread_r: dict[str, tuple[float, int]], bytes_expected: bool, n_test: int) -> list[Cell]:
    """One :class:`Cell` per cell of either side, in name order."""
    rows = []
    for name in sorted(set(committed) | set(rerun)):
        c, r = committed.get(name), rerun.get(name)
        if c is None or r is None:
            rows.append(Cell(name, c, r, None, None, "MISSING", False))
            continue
        diff = r - c
        if diff == 0:
            rows.append(Cell(name, c, r, 0.0, 0.0, "identical", True))
            continue
        if bytes_expected:
            rows.append(Cell(name, c, r, diff, 0.0, "DIFFERS (bytes expected)", False))
            continue
        (sc, nc), (sr, nr) = spread_c.get(name, (0.0, 1)), spread_r.get(name, (0.0, 1))
        n = min(nc, nr)
        if n >= 2:
            s = math.sqrt((sc ** 2 + sr ** 2) / 2)
            allowed = Z * s * math.sqrt(2 / n)
            ok = abs(diff) <= allowed
            verdict = "within noise" if ok else "OUTSIDE NOISE"
            if ok and n < MIN_SEEDS:
                verdict += f" ({n} seeds)"
        else:  # one seed: the test set's sampling noise is all that can be said
            p = min(max((c + r) / 2, 0.0), 1.0)
            allowed = Z * math.sqrt(2 * p * (1 - p) / max(n_test, 1))
            ok = abs(diff) <= allowed
            verdict = "within test-set noise (1 seed)" if ok else "OUTSIDE NOISE (1 seed)"
        rows.append(Cell(name, c, r, diff, allowed, verdict, ok))
    return rows


def seeds_needed(rows: list[Cell], spread_c: dict[str, tuple[float, int]]) -> Optional[int]:
    """With fewer than MIN_SEEDS seeds behind the cells that differ: how many a noise verdict needs."""
    differing = [r for r in rows if r.difference not in (None, 0.0) and not r.verdict.startswith("DIFFERS")]
    if not differing:
        return None
    n = min((spread_c.get(r.name, (0.0, 1))[1] for r in differing), default=1)
    return MIN_SEEDS if n < MIN_SEEDS else None


def changed_claims(committed: dict, rerun: dict) -> list[str]:
    """Each of the paper's claims whose verdict differs between two reports/claims.json."""
    out = []
    for k in sorted(set(committed) | set(rerun), key=lambda x: int(x) if str(x).isdigit() else 0):
        a, b = (committed.get(k) or {}).get("verdict"), (rerun.get(k) or {}).get("verdict")
        if a != b:
            out.append(f"claim {k}: {a or 'absent'} -> {b or 'absent'}")
    return out


def markdown(rows: list[Cell], regime: str, claims: list[str], seeds: Optional[int]) -> str:
    def f(x):
        return "" if x is None else f"{100 * x:.2f}"

    bad = [r for r in rows if not r.ok]
    lines = [f"# Reproduction check ({regime})", "",
             f"{len(rows) - len(bad)} of {len(rows)} cells agree; "
             + (f"{len(bad)} outside: " + ", ".join(r.name for r in bad) if bad else "none outside") + ".", "",
             "| cell | committed % | re-run % | difference (points) | allowed (points) | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.name} | {f(r.committed)} | {f(r.rerun)} | {f(r.difference)} | {f(r.allowed)} | {r.verdict} |"
              for r in rows]
    lines += ["", "Claims whose verdict changed: " + ("; ".join(claims) if claims else "none") + "."]
    if seeds:
        lines += ["", f"The cells that differ rest on fewer than {seeds} seeds: their noise is not measured. Re-run both "
                      f"with at least {seeds} seeds (e.g. -S student.seeds=[0,1,2] -S scores.seeds=[0,1,2]) for a "
                      "verdict grounded in the spread over seeds."]
    return "\n".join(lines) + "\n"
