"""Pure analysis of a sweep's results table: the tables and the claim verdicts the report states.

Input is the evaluate stage's per-student table (one row per student: method, fraction, kd,
kd_weight, kd_schedule, kd_setting, seed, teacher_arch, teacher_params, test_acc, ...). Nothing
here reads or writes files. Accuracies are fractions in [0, 1]; texts show percentages.

The paper's claims (Ben-Baruch et al., see FACTS.md) are tested as follows, on means over seeds:

1. KD lifts every (method, fraction) cell: the best KD arm's mean beats no KD's mean.
2. With KD, random is comparable or superior to the score-based methods at every fraction below
   1: random + KD is no more than ``tolerance`` below the best score-based method + KD, where
   the tolerance is ``TOL_POINTS`` or the seed standard deviation of that cell, whichever is larger.
3. The best KD weight falls as the kept fraction grows (large at small fractions, small near 1):
   the best constant weight (no KD counted as 0), averaged over methods, never rises with the
   fraction and is higher at the smallest fraction than at the largest. Needs two or more weights.
4. At low fractions a smaller teacher helps: the students of the smallest teacher beat those of
   the largest. Needs two or more teacher architectures.
5. KD on a random 50 % subset beats training on the full data without KD.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

TOL_POINTS = 0.5  # percentage points within which two accuracies count as comparable

HOLDS, PARTLY, FAILS, UNTESTED = "holds", "partly holds", "does not hold", "not tested"


@dataclass
class Claim:
    number: int
    claim: str
    verdict: str
    evidence: str


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _fixed_weight(schedule) -> bool:
    """Whether a KD student's arm is one weight at every fraction: its schedule's registration says so (a row
    without a schedule, from before schedules were recorded, is)."""
    if schedule is None or pd.isna(schedule) or schedule == "":
        return True
    from kdprune.distill import SCHEDULES  # the registry, only when a KD row is labelled

    return schedule in SCHEDULES and SCHEDULES.get(schedule).fixed


def arm(row) -> str:
    """The KD arm of a student row: 'no KD', 'KD a=0.5', or 'KD linear(0.9→0.1)' style labels."""
    if not row["kd"]:
        return "no KD"
    sched = row.get("kd_schedule")
    if _fixed_weight(sched):
        return f"KD a={row['kd_weight']:g}"
    setting = str(row.get("kd_setting") or sched).split("-T")[0]
    return f"KD {sched} ({setting})"


def with_arms(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["arm"] = [arm(r) for _, r in df.iterrows()] if len(df) else []
    return df


def main_teacher_rows(df: pd.DataFrame, main_teacher: str) -> pd.DataFrame:
    """No-KD students and the students of the main (scoring, self-distilling) teacher."""
    return df[(~df["kd"].astype(bool)) | (df["teacher_arch"] == main_teacher)]


def arms_in_order(df: pd.DataFrame) -> list[str]:
    arms = set(df["arm"])
    consts = sorted((a for a in arms if a.startswith("KD a=")), key=lambda a: float(a.split("=")[1]))
    others = sorted(a for a in arms if a.startswith("KD ") and not a.startswith("KD a="))
    return (["no KD"] if "no KD" in arms else []) + consts + others


def cell_stats(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, std (0 for a single seed) and count of test accuracy per group."""
    g = df.groupby(by)["test_acc"].agg(["mean", "std", "count"]).reset_index()
    g["std"] = g["std"].fillna(0.0)
    return g


def accuracy_table(df: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """(arms, rows): per (method, fraction) the mean/std/n of each arm; ``df`` already has ``arm``."""
    arms = arms_in_order(df)
    return arms, cell_stats(df, ["method", "fraction", "arm"])


def best_kd(df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, fraction): the best KD arm by mean accuracy, its mean, and no KD's mean."""
    s = cell_stats(df, ["method", "fraction", "arm"])
    kd = s[s["arm"] != "no KD"]
    if kd.empty:
        return pd.DataFrame(columns=["method", "fraction", "arm", "mean", "std", "nokd"])
    best = kd.loc[kd.groupby(["method", "fraction"])["mean"].idxmax()]
    nokd = s[s["arm"] == "no KD"].set_index(["method", "fraction"])["mean"].rename("nokd")
    return best.join(nokd, on=["method", "fraction"]).reset_index(drop=True)


def weight_grid(df: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy over methods and seeds, per (constant KD weight, fraction); no KD is weight 0."""
    d = df[(~df["kd"].astype(bool)) | df["arm"].str.startswith("KD a=")].copy()
    d["weight"] = np.where(d["kd"].astype(bool), d["kd_weight"], 0.0)
    # average per method first so each method counts once whatever its number of seeds
    per_method = d.groupby(["weight", "fraction", "method"])["test_acc"].mean().reset_index()
    return per_method.groupby(["weight", "fraction"])["test_acc"].mean().unstack("fraction").sort_index()


def best_weights(grid: pd.DataFrame) -> pd.Series:
    """Per fraction: the weight with the highest mean accuracy (ties: the smaller weight)."""
    return grid.idxmax(axis=0)


def teacher_rows(df: pd.DataFrame, max_fraction: float) -> pd.DataFrame:
    """KD students at fractions where every teacher architecture was used."""
    return df[df["kd"].astype(bool) & (df["fraction"] <= max_fraction + 1e-9)]


def teacher_summary(df: pd.DataFrame, teachers: pd.DataFrame, max_fraction: float,
                    by_fraction: bool = True) -> pd.DataFrame:
    """Per teacher (and fraction) at low fractions: student accuracy averaged over methods and KD arms
    within each seed, then mean ± std over seeds."""
    d = teacher_rows(df, max_fraction)
    keys = ["teacher_arch", "fraction"] if by_fraction else ["teacher_arch"]
    per_seed = d.groupby([*keys, "seed"])["test_acc"].mean().reset_index()
    s = cell_stats(per_seed, keys)
    return s.merge(teachers[["arch", "n_params", "test_acc"]].rename(
        columns={"arch": "teacher_arch", "test_acc": "teacher_test_acc"}), on="teacher_arch", how="left")


@dataclass
class Trust:
    strength: str  # "weak" | "moderate" | "supported by N seeds"
    why: str
    settle: str


MIN_SEEDS = 3  # fewer seeds measure no usable spread: a verdict can flip with the next seed
BASELINE_SLACK = 3.0  # points below published figures beyond which the students are undertrained


def trust(main: pd.DataFrame, baseline_gap: float | None) -> Trust:
    """How far the verdicts on this run can be trusted: the seeds behind each cell, the spread they
    show, and whether the full-data baseline is healthy (``baseline_gap``: points above/below the best
    published figure, None when not measured); with what would settle them."""
    n = int(main.groupby(["method", "fraction", "arm"])["seed"].nunique().min()) if len(main) else 0
    spread = float(cell_stats(main, ["method", "fraction", "arm"])["std"].mean()) if len(main) else 0.0
    why, settle, weak = [], [], False
    if n < 2:
        weak = True
        why.append("one seed per cell, so no spread between seeds is measured and a verdict can flip with the next "
                   "seed (the ± is absent, not zero)")
    elif n < MIN_SEEDS:
        weak = True
        why.append(f"{n} seeds per cell: a spread of {100 * spread:.2f} points on average, from too few seeds to trust")
    else:
        why.append(f"{n} seeds per cell, a spread of {100 * spread:.2f} points on average between seeds")
    if n < MIN_SEEDS:
        settle.append(f"at least {MIN_SEEDS} seeds (-S student.seeds=[0,1,2] -S scores.seeds=[0,1,2])")
    if baseline_gap is None:
        why.append("the full-data baseline is not checked against published figures (no kept fraction 1.0)")
        settle.append("kept fraction 1.0 in select.fractions, to check the baseline")
    elif baseline_gap < -BASELINE_SLACK:
        weak = True
        why.append(f"the full-data baseline is {-baseline_gap:.1f} points below published figures, so the students are "
                   "undertrained and the verdicts describe that regime")
        settle.append("a longer schedule (student.epochs) until the baseline is within "
                      f"{BASELINE_SLACK:g} points of published figures")
    else:
        why.append(f"the full-data baseline is within {BASELINE_SLACK:g} points of published figures "
                   f"({baseline_gap:+.1f})")
    strength = "weak" if weak else f"supported by {n} seeds"
    return Trust(strength, "; ".join(why) + ".", "; ".join(settle) + "." if settle else "")


def claims(df: pd.DataFrame, main_teacher: str, teachers: pd.DataFrame, student_params: int | None,
           teachers_max_fraction: float) -> list[Claim]:
    """Verdicts on the paper's five claims from this run's numbers; ``df`` has ``arm``."""
    out: list[Claim] = []
    main = main_teacher_rows(df, main_teacher)
    b = best_kd(main)

    # 1. KD lifts every cell
    c1 = "KD improves student accuracy for every method and kept fraction."
    cells = b.dropna(subset=["nokd"])
    if cells.empty or main["kd"].astype(bool).all():
        out.append(Claim(1, c1, UNTESTED, "the sweep needs both KD and no-KD students"))
    else:
        wins = cells[cells["mean"] > cells["nokd"]]
        losses = cells[cells["mean"] <= cells["nokd"]]
        gain = 100 * (cells["mean"] - cells["nokd"])
        ev = (f"best KD arm beats no KD in {len(wins)} of {len(cells)} (method, fraction) cells; gain "
              f"{gain.mean():+.2f} points on average (from {gain.min():+.2f} to {gain.max():+.2f})")
        if len(losses):
            ev += "; no gain at " + ", ".join(f"{r.method} {r.fraction:g}" for r in losses.itertuples())
        verdict = HOLDS if len(losses) == 0 else (PARTLY if len(wins) >= len(cells) / 2 else FAILS)
        out.append(Claim(1, c1, verdict, ev))

    # 2. random + KD vs score-based + KD
    c2 = "With KD, random pruning is comparable or superior to score-based pruning at every kept fraction."
    methods = set(b["method"])
    # random drawn over the whole pool ('random:global', 'random:balanced') is random, not a score
    scored = sorted(m for m in methods if m.split(":")[0] != "random")
    if "random" not in methods or not scored:
        out.append(Claim(2, c2, UNTESTED, "the sweep needs random and at least one score-based method with KD"))
    else:
        parts, ok = [], []
        for frac in sorted(f for f in b["fraction"].unique() if f < 1.0):
            at = b[b["fraction"] == frac].set_index("method")
            if "random" not in at.index or not set(scored) & set(at.index):
                continue
            rnd = at.loc["random"]
            best_m = at.loc[[m for m in scored if m in at.index], "mean"].idxmax()
            gap = 100 * (rnd["mean"] - at.loc[best_m, "mean"])
            tol = max(TOL_POINTS, 100 * float(rnd["std"]))
            ok.append(gap >= -tol)
            parts.append(f"{frac:g}: random {pct(rnd['mean'])} vs {best_m} {pct(at.loc[best_m, 'mean'])} "
                         f"({gap:+.2f}, tolerance {tol:.2f})")
        if not parts:
            out.append(Claim(2, c2, UNTESTED, "no fraction below 1 has both random and a score-based method"))
        else:
            verdict = HOLDS if all(ok) else (PARTLY if any(ok) else FAILS)
            out.append(Claim(2, c2, verdict, "best KD arm per method, random vs the best score-based method at "
                                             "each fraction: " + "; ".join(parts)))

    # 3. best KD weight vs kept fraction
    c3 = "The best KD weight depends on the kept fraction: large when little data is kept, small when most is."
    grid = weight_grid(main)
    if len(grid.index) < 3:  # no KD + at least two constant weights
        out.append(Claim(3, c3, UNTESTED, "the sweep needs at least two constant KD weights besides no KD"))
    elif len(grid.columns) < 2:
        out.append(Claim(3, c3, UNTESTED, "the sweep needs at least two kept fractions"))
    else:
        best = best_weights(grid)
        seq = [float(best[f]) for f in sorted(grid.columns)]
        non_increasing = all(a >= b_ for a, b_ in zip(seq, seq[1:]))
        ev = ("best weight (no KD = 0), mean over methods and seeds, by kept fraction: "
              + ", ".join(f"{f:g} → {best[f]:g}" for f in sorted(grid.columns)))
        spread = 100 * (grid.max(axis=0) - grid.min(axis=0))
        ev += "; spread between best and worst weight " + ", ".join(
            f"{f:g}: {spread[f]:.2f}" for f in sorted(grid.columns)) + " points"
        if seq[0] > seq[-1] and non_increasing:
            verdict = HOLDS
        elif seq[0] > seq[-1]:
            verdict = PARTLY
        else:
            verdict = FAILS
        out.append(Claim(3, c3, verdict, ev))

    # 4. teacher size at low fractions
    c4 = ("At low kept fractions a larger teacher can hurt and a teacher smaller than the student can help.")
    archs = sorted(set(teacher_rows(df, teachers_max_fraction)["teacher_arch"]))
    if len(archs) < 2:
        out.append(Claim(4, c4, UNTESTED, "the sweep has one teacher architecture; list more in student.teachers"))
    else:
        per = teacher_summary(df, teachers, teachers_max_fraction, by_fraction=False).sort_values("n_params")
        small, large = per.iloc[0], per.iloc[-1]
        tol = max(TOL_POINTS, 100 * float(max(small["std"], large["std"])))
        ev = (f"at kept fractions ≤ {teachers_max_fraction:g}, KD student accuracy by teacher (parameters), mean ± "
              "std over seeds: " + ", ".join(f"{r.teacher_arch} ({int(r.n_params):,}) {pct(r.mean)} ± {pct(r.std)}"
                                            for r in per.itertuples()))
        if student_params:
            ev += f"; the student has {student_params:,} parameters"
        best_arch = per.loc[per["mean"].idxmax(), "teacher_arch"]
        gap = 100 * (small["mean"] - large["mean"])
        smaller = student_params is not None and small.n_params < student_params
        if gap > tol and best_arch == small.teacher_arch and smaller:
            verdict = HOLDS
        elif gap > tol:
            verdict = PARTLY
        else:
            verdict = FAILS
        ev += (f"; smallest minus largest teacher {gap:+.2f} points (tolerance {tol:.2f}); best: {best_arch}")
        out.append(Claim(4, c4, verdict, ev))

    # 5. random 50 % + KD vs full data without KD
    c5 = "KD on a random 50% subset beats training on the full data without KD (their ImageNet result)."
    r50 = b[(b["method"] == "random") & np.isclose(b["fraction"], 0.5)]
    full = main[(~main["kd"].astype(bool)) & np.isclose(main["fraction"], 1.0)]
    if r50.empty or full.empty:
        out.append(Claim(5, c5, UNTESTED, "the sweep needs random at fraction 0.5 with KD and fraction 1.0"))
    else:
        a, f = float(r50["mean"].iloc[0]), float(full["test_acc"].mean())
        out.append(Claim(5, c5, HOLDS if a > f else FAILS,
                         f"random 50% + best KD arm {pct(a)} vs full data without KD {pct(f)} ({100 * (a - f):+.2f})"))
    return out
