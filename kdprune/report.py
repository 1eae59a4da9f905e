"""The report of a sweep, from its results table: the markdown report, its figures, and the DVC
metrics and plot data. Pure (tables in, text/bytes out; no file I/O); the evaluate stage
(tasks/evaluate.py) reads the students and writes what these return. Tables and verdicts come
from ``kdprune.analysis``.
"""
from __future__ import annotations

import io
from typing import Optional

import pandas as pd

from kdprune import analysis as A

FIGURES = ("accuracy_vs_fraction.png", "kd_weight_heatmap.png", "teacher_size.png")

# Published test accuracies of models of the size these studies train, per dataset, so a reader can tell
# whether a sweep's no-KD full-data baseline is healthy: (model, parameters, training, accuracy, source).
PUBLISHED = {
    "fashion_mnist": [
        ("2 conv + pooling (TensorFlow's tutorial CNN)", "3.3 M", "no augmentation", 0.916,
         "zalandoresearch/fashion-mnist benchmark table"),
        ("2 conv, under 100 K parameters", "< 100 K", "no augmentation", 0.925,
         "zalandoresearch/fashion-mnist benchmark table"),
    ],
    "mnist": [("LeNet-5", "60 K", "no augmentation", 0.9905, "LeCun et al. 1998 (0.95% error)")],
    "cifar10": [("ResNet-20", "0.27 M", "flip + 4 px translation, 164 epochs", 0.9125, "He et al. 2016, table 6")],
}


def dvc_metrics(df: pd.DataFrame, teachers: pd.DataFrame, main_teacher: str) -> dict:
    """The DVC metrics file, what `dvc exp show` / `dvc metrics diff` compare: per method and kept
    fraction the test accuracy (mean over seeds, main teacher) of no KD (``no_kd``) and of the best KD
    arm (``kd``), and that arm's weight (``kd_weight``); each teacher's test accuracy. Keys name the
    arm's kind, not its setting, so an experiment at KD weight 0.5 and one at 0.9 pair cell by cell
    (every arm's own accuracy is in reports/plots/accuracy.csv and the report)."""
    main = A.main_teacher_rows(A.with_arms(df), main_teacher)
    acc: dict = {}
    weights: dict = {}
    stats = A.cell_stats(main, ["method", "fraction", "arm"])
    for r in stats[stats["arm"] == "no KD"].itertuples():
        acc.setdefault(r.method, {}).setdefault(f"{r.fraction:g}", {})["no_kd"] = round(float(r.mean), 6)
    for r in A.best_kd(main).itertuples():
        acc.setdefault(r.method, {}).setdefault(f"{r.fraction:g}", {})["kd"] = round(float(r.mean), 6)
        rows = main[(main["method"] == r.method) & (main["fraction"] == r.fraction) & (main["arm"] == r.arm)]
        weights.setdefault(r.method, {})[f"{r.fraction:g}"] = round(float(rows["kd_weight"].mean()), 6)
    return {"students": int(len(df)),
            "teacher_test_acc": {r.arch: round(float(r.test_acc), 6) for r in teachers.itertuples()},
            "test_acc": acc, "kd_weight": weights}


def plot_data(df: pd.DataFrame, main_teacher: str) -> pd.DataFrame:
    """The DVC plots data: one row per (method, KD arm, kept fraction) with the mean, std and number of
    seeds of the test accuracy (main teacher); drawn by .dvc/plots/accuracy_by_method.json."""
    main = A.main_teacher_rows(A.with_arms(df), main_teacher)
    g = A.cell_stats(main, ["method", "arm", "fraction"]).rename(columns={"mean": "test_acc", "count": "seeds"})
    return g[["method", "arm", "fraction", "test_acc", "std", "seeds"]]


def reuse_line(df: pd.DataFrame) -> list[str]:
    """How many students this run copied from earlier runs instead of training them (their inputs were
    unchanged: the ``reused`` column); nothing when every student trained or it is not recorded."""
    if "reused" not in df or not df["reused"].fillna(False).astype(bool).any():
        return []
    n = int(df["reused"].fillna(False).astype(bool).sum())
    return [f"{n} of {len(df)} students were reused from earlier runs, not retrained: their inputs (manifest, teacher, "
            "settings, code) were unchanged, so their bytes are what training them again gives (results.csv: "
            "`reused`, `reused_from`)."]


def selection_line(df: pd.DataFrame) -> str:
    """Which methods selected with class-balanced budgets and which over the whole pool (select.balance)."""
    if "balanced" not in df or df["balanced"].isna().all():
        return "Selection: class balance not recorded."
    by = df.dropna(subset=["balanced"]).groupby("method")["balanced"].first()
    bal = sorted(m for m, b in by.items() if bool(b))
    glob = sorted(m for m, b in by.items() if not bool(b))
    parts = ([f"class-balanced budgets (per class, proportional to class sizes) for {', '.join(bal)}"] if bal else []) \
        + ([f"over the whole pool for {', '.join(glob)}"] if glob else [])
    return ("Selection: " + "; ".join(parts)
            + " (select.balance: auto runs each method as its published code, per class for DeepCore's methods and "
            "over the whole pool for Moderate-DS and CCS; true / false, or ':balanced' / ':global' after a method, "
            "override it).")


def _cell(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n > 1 else "")


def build_report(df: pd.DataFrame, teachers: pd.DataFrame, ctx: dict, claims: Optional[list] = None) -> str:
    """Markdown report from the per-student table ``df`` and the teachers table; pure (no I/O).

    ``ctx``: dataset, main_teacher, student_arch, student_params, teachers_max_fraction, n_pool.
    ``claims``: the verdicts (``analysis.claims``) when the caller has them already, else computed here.
    """
    df = A.with_arms(df)
    main_t = ctx["main_teacher"]
    main = A.main_teacher_rows(df, main_t)
    arms, stats = A.accuracy_table(main)
    seeds = sorted(df["seed"].unique().tolist())
    tm = teachers.set_index("arch")
    lines = [
        f"# kdprune report — {ctx['dataset']}",
        "",
        f"Training pool: {ctx['n_pool']:,} examples. Teachers, each trained on the full pool: "
        + ", ".join(f"{a} ({int(r.n_params):,} parameters, test {100 * r.test_acc:.2f}%)" for a, r in tm.iterrows())
        + f"; {main_t} scores the examples and is the self-distilling teacher.",
        f"Students: {ctx['student_arch']} ({ctx['student_params']:,} parameters), {df['epochs'].max()} epochs on "
        f"each subset ({df['budget'].iloc[0]} budget); seeds {seeds}. Test accuracy (%), mean ± std over seeds.",
        selection_line(df),
        *reuse_line(df),
        "",
        f"## Accuracy by method and kept fraction (teacher {main_t})",
        "",
        "| method | kept fraction | " + " | ".join(arms) + " |",
        "| --- | --- | " + " | ".join("---" for _ in arms) + " |",
    ]
    for (method, frac), g in stats.groupby(["method", "fraction"]):
        cells = {r.arm: _cell(r.mean, r.std, r.count) for r in g.itertuples()}
        lines.append(f"| {method} | {frac:g} | " + " | ".join(cells.get(a, "—") for a in arms) + " |")
    lines += ["", "Plot: `reports/accuracy_vs_fraction.png` (one panel per method, error bars: std over seeds)."]

    grid = A.weight_grid(main)
    lines += ["", "## KD weight by kept fraction", ""]
    if len(grid.index) >= 2:
        best = A.best_weights(grid)
        fr = sorted(grid.columns)
        lines += ["Mean test accuracy (%) over methods and seeds; weight 0 is no KD; **bold** is the best weight "
                  "at that fraction.", "",
                  "| KD weight | " + " | ".join(f"{f:g}" for f in fr) + " |",
                  "| --- | " + " | ".join("---" for _ in fr) + " |"]
        for w, row in grid.iterrows():
            lines.append(f"| {w:g} | " + " | ".join(
                (f"**{100 * row[f]:.2f}**" if best[f] == w else f"{100 * row[f]:.2f}") for f in fr) + " |")
        lines += ["", "Best arm per fraction, mean over methods (the bold above): "
                  + "; ".join(f"{f:g}: {'no KD' if best[f] == 0 else f'KD a={best[f]:g}'}" for f in fr)
                  + ". Heatmap: `reports/kd_weight_heatmap.png`."]
    else:
        lines.append("Only one constant KD setting in this sweep; add weights to student.kd_weights to compare.")
    others = [a for a in arms if a.startswith("KD ") and not a.startswith("KD a=")]
    if others:
        lines.append(f"Scheduled KD weights in this sweep: {', '.join(others)} (columns of the table above).")

    lines += ["", f"## Teacher size at low kept fractions (≤ {ctx['teachers_max_fraction']:g})", ""]
    ts = A.teacher_summary(df, teachers, ctx["teachers_max_fraction"])
    if ts["teacher_arch"].nunique() >= 2:
        nok = main[~main["kd"].astype(bool) & (main["fraction"] <= ctx["teachers_max_fraction"] + 1e-9)]
        nok_mean = nok.groupby("fraction")["test_acc"].mean()
        lines += ["KD student accuracy (%) by teacher, averaged over methods and KD weights within each seed, then "
                  "mean ± std over seeds:", "",
                  "| teacher | parameters | teacher test acc | kept fraction | student acc | no-KD student acc |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in ts.sort_values(["fraction", "n_params"]).itertuples():
            lines.append(f"| {r.teacher_arch} | {int(r.n_params):,} | {100 * r.teacher_test_acc:.2f} | {r.fraction:g} "
                         f"| {_cell(r.mean, r.std, r.count)} | {100 * nok_mean.get(r.fraction, float('nan')):.2f} |")
        lines += ["", "Plot: `reports/teacher_size.png`."]
    else:
        lines.append("One teacher architecture in this sweep; list others in student.teachers to ask this question.")

    lines += baseline_section(main, ctx)
    if ctx.get("recipes"):
        lines += ["", "## How each method selected", ""]
        lines += [f"- `{label}`: {text}" for label, text in ctx["recipes"].items()]
    lines += ["", "## Selection cost beside accuracy", "",
              "Seconds to score and select (proxy training included) and peak extra memory, as measured on the "
              "machine that ran the scores stage (— where this machine has no record of it); accuracy of the best "
              "KD arm (and no KD) at each kept fraction below 1, teacher " + main_t + ".", ""]
    fr = sorted(f for f in main["fraction"].unique() if f < 1.0)
    bk = A.best_kd(main).set_index(["method", "fraction"])
    lines += ["| method | selection (s) | peak MiB | " + " | ".join(f"acc {f:g} KD / no KD" for f in fr) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in fr) + " |"]
    cost = df.groupby("method")[["selection_s", "selection_peak_mb"]].max()
    for method, r in cost.iterrows():
        accs = []
        for f in fr:
            if (method, f) in bk.index:
                c = bk.loc[(method, f)]
                accs.append(f"{100 * c['mean']:.2f} / {100 * c['nokd']:.2f}")
            else:
                accs.append("—")
        cost = [("—" if pd.isna(v) else "< 0.01" if v < 0.01 else f"{v:.3g}") for v in (r.selection_s, r.selection_peak_mb)]
        lines.append(f"| {method} | {cost[0]} | {cost[1]} | " + " | ".join(accs) + " |")

    lines += ["", "## The paper's claims on this run", "",
              "Ben-Baruch et al., \"Distilling the Knowledge in Data Pruning\". Verdicts come from the numbers above "
              f"(means over seeds; \"comparable\" = within {A.TOL_POINTS} points or one seed-std). One dataset, "
              "architecture and schedule: a verdict here is evidence about this setting, not a replication.", ""]
    trust = A.trust(main, baseline_gap(main, ctx))
    if claims is None:
        claims = A.claims(df, main_t, teachers, ctx["student_params"], ctx["teachers_max_fraction"])
    for c in claims:
        if c.verdict == A.UNTESTED:
            lines.append(f"{c.number}. **{c.verdict.upper()}** — {c.claim} {c.evidence}.")
        else:
            lines.append(f"{c.number}. **{c.verdict.upper()}** ({trust.strength}) — {c.claim} {c.evidence}.")
    lines += ["", f"How much to trust these verdicts: {trust.why}" + (f" To settle them: {trust.settle}" if trust.settle else "")]
    lines += ["", f"{len(df)} students; per-student rows in `reports/results.csv`.", ""]
    return "\n".join(lines)


def baseline_gap(main: pd.DataFrame, ctx: dict) -> float | None:
    """Points by which the no-KD student on the full pool is above (+) or below (-) the best published
    figure for the dataset; None when there is no full-pool run or no figure."""
    full = main[(main["fraction"] >= 1.0 - 1e-9) & ~main["kd"].astype(bool)]
    refs = PUBLISHED.get(ctx["dataset"], [])
    if full.empty or not refs:
        return None
    return 100 * (float(full.groupby("seed")["test_acc"].mean().mean()) - max(ref[3] for ref in refs))


def baseline_section(main: pd.DataFrame, ctx: dict) -> list[str]:
    """The no-KD student on the full pool beside published figures for a model of similar size."""
    full = main[(main["fraction"] >= 1.0 - 1e-9) & ~main["kd"].astype(bool)]
    refs = PUBLISHED.get(ctx["dataset"], [])
    if full.empty:
        return []
    acc = full.groupby("seed")["test_acc"].mean()
    ours = (f"No-KD {ctx['student_arch']} ({ctx['student_params']:,} parameters) on the full pool of "
            f"{ctx['n_pool']:,}: {_cell(acc.mean(), acc.std(ddof=1) if len(acc) > 1 else 0.0, len(acc))}% test "
            f"({int(full['epochs'].max())} epochs).")
    lines = ["", "## Is the baseline healthy?", "", ours]
    if not refs:
        return lines + [f"No published figure for {ctx['dataset']} is recorded in kdprune.report.PUBLISHED."]
    lines += ["", "| published model | parameters | training | test acc | source |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {m} | {n} | {t} | {100 * a:.2f} | {src} |" for m, n, t, a, src in refs]
    gap = 100 * (acc.mean() - max(ref[3] for ref in refs))  # ref: (model, params, training, acc, source)
    lines += ["", f"Ours is {abs(gap):.2f} points {'above' if gap >= 0 else 'below'} the best published figure listed."]
    return lines


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(df: pd.DataFrame, main_teacher: str, teacher_acc: float) -> bytes:
    """One panel per method: accuracy vs kept fraction for no KD and each KD arm, mean ± std over seeds."""
    plt = _plt()
    df = A.main_teacher_rows(A.with_arms(df), main_teacher)
    methods = sorted(df["method"].unique())
    arms = A.arms_in_order(df)
    cols = min(3, len(methods))
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, method in zip(axes.flat, methods):
        dm = df[df["method"] == method]
        for i, a in enumerate(arms):
            s = dm[dm["arm"] == a].groupby("fraction")["test_acc"].agg(["mean", "std"]).reset_index()
            if s.empty:
                continue
            ax.errorbar(s["fraction"], 100 * s["mean"], yerr=100 * s["std"].fillna(0), marker="o", capsize=3,
                        color="black" if a == "no KD" else colors[i % len(colors)],
                        linestyle="--" if a == "no KD" else "-", label=a)
        ax.axhline(100 * teacher_acc, color="grey", linestyle=":", label="teacher (full data)")
        ax.set_title(method)
        ax.set_xlabel("kept fraction")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(methods):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("test accuracy (%)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{df['dataset'].iloc[0]}: student accuracy vs kept fraction (mean ± std over seeds)", fontsize=10)
    return _png(fig)


def plot_weight_heatmap(df: pd.DataFrame, main_teacher: str) -> bytes:
    """Mean accuracy per (KD weight, kept fraction) over methods and seeds; the best weight per fraction boxed."""
    plt = _plt()
    grid = A.weight_grid(A.main_teacher_rows(A.with_arms(df), main_teacher))
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * max(1, len(grid.columns)), 1.2 + 0.6 * max(1, len(grid.index))))
    if grid.empty:
        ax.text(0.5, 0.5, "no constant KD weights in this sweep", ha="center", va="center")
        ax.axis("off")
        return _png(fig)
    im = ax.imshow(100 * grid.values, aspect="auto", cmap="viridis", origin="lower")
    ax.set_xticks(range(len(grid.columns)), [f"{f:g}" for f in grid.columns])
    ax.set_yticks(range(len(grid.index)), [("0 (no KD)" if w == 0 else f"{w:g}") for w in grid.index])
    best = A.best_weights(grid)
    for j, f in enumerate(grid.columns):
        for i, w in enumerate(grid.index):
            ax.text(j, i, f"{100 * grid.loc[w, f]:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if w != best[f] else "black",
                    bbox=dict(boxstyle="square", fc="yellow", ec="black") if w == best[f] else None)
    ax.set_xlabel("kept fraction")
    ax.set_ylabel("KD weight")
    ax.set_title("mean test acc (%); boxed: best weight per fraction", fontsize=9)
    fig.colorbar(im, ax=ax)
    return _png(fig)


def plot_teacher_size(df: pd.DataFrame, teachers: pd.DataFrame, max_fraction: float, student_params: int) -> bytes:
    """Student accuracy vs teacher parameters at low fractions, one line per (fraction, KD arm)."""
    plt = _plt()
    df = A.with_arms(df)
    d = A.teacher_rows(df, max_fraction).merge(teachers[["arch", "n_params"]].rename(columns={"arch": "teacher_arch"}),
                                               on="teacher_arch", how="left")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.set_xscale("log")
    for r in teachers.itertuples():
        ax.annotate(r.arch, (r.n_params, 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize=7, color="dimgrey")
    for (frac, a), g in d.groupby(["fraction", "arm"]):
        # averaged over methods within each seed, then mean ± std over seeds
        s = g.groupby(["n_params", "seed"])["test_acc"].mean().groupby("n_params").agg(["mean", "std"]).reset_index()
        ax.errorbar(s["n_params"], 100 * s["mean"], yerr=100 * s["std"].fillna(0), marker="o", capsize=3,
                    label=f"kept {frac:g}, {a}")
    nok = df[~df["kd"].astype(bool) & (df["fraction"] <= max_fraction + 1e-9)]
    for frac, g in nok.groupby("fraction"):
        ax.axhline(100 * g["test_acc"].mean(), linestyle="--", color="grey", linewidth=1)
        ax.annotate(f"no KD, kept {frac:g}", (0.01, 100 * g["test_acc"].mean()), xycoords=("axes fraction", "data"),
                    fontsize=7, va="bottom", color="grey")
    if student_params:
        ax.axvline(student_params, color="red", linestyle=":", linewidth=1, label="student size")
    ax.set_xlabel("teacher parameters")
    ax.set_ylabel("student test accuracy (%)")
    ax.set_title(f"teacher size vs student accuracy at kept fractions ≤ {max_fraction:g}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)
