"""What a researcher opens in MLflow to answer "does KD help?": the study's summary on its run, the
students told apart by KD arm, the teacher's registered version described.

After the evaluate stage (the entry point calls :func:`publish_study` when a pipeline, a sweep or the
evaluate stage ends; nothing here changes an output):

- the summary run (the pipeline's or sweep's parent run; for the evaluate stage alone, its own run)
  gets ``summary/accuracy_vs_fraction.png`` (the evaluate stage's figure: one panel per method,
  accuracy against kept fraction, one line per KD arm, error bars the std over seeds) and
  ``summary/accuracy_mean_std.csv`` (mean ± std over seeds per method, kept fraction and KD arm),
  and the tag ``kdprune.summary``, by which ``kdprune ui`` links straight to the figure;
- every student's run gets the tag ``kd_arm`` ("no KD", "KD a=0.5", ...), a run colour per arm
  (``mlflow.runColor``: the students chart's points are coloured by arm, as the figure's lines are),
  the metric ``test_acc_pct`` (test accuracy in %, 2 decimals: the runs table's column) and the tag
  ``acc_over_seeds`` (its cell's mean ± std over seeds in %, and how many seeds): the table says,
  on each student's row, what its cell averages to;
- the teacher's registered model version gets the test accuracy (description and tag ``test_acc``).

MLflow's runs table cannot show a standard deviation (its grouped rows aggregate with min, max or
average only: mlflow#3762), and averaging a group of runs averages their numeric params too (a
group of fractions 0.1 and 0.5 shows 0.3): hence the tag, the table and the figure instead of groups.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

SUMMARY_TAG = "kdprune.summary"
FIGURE = "summary/accuracy_vs_fraction.png"
TABLE = "summary/accuracy_mean_std.csv"
NO_KD_COLOR = "#000000"  # the figure's no-KD line is black (kdprune.report.plot_accuracy)
# the figure's colours (matplotlib's default cycle, tab10): arm i of arms_in_order is colour i
ARM_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf")


def arm_colors(arms: list[str]) -> dict[str, str]:
    """The colour of each KD arm, as the accuracy figure draws it: black for no KD, the i-th colour of
    matplotlib's cycle for the i-th arm."""
    return {a: NO_KD_COLOR if a == "no KD" else ARM_PALETTE[i % len(ARM_PALETTE)] for i, a in enumerate(arms)}


def summary_table(results):
    """Mean ± std (percent) of test accuracy over seeds per method, kept fraction, KD arm and teacher,
    from the evaluate stage's results table (one row per student)."""
    import pandas as pd

    from kdprune import analysis as A

    df = A.with_arms(results)
    arms = A.arms_in_order(df)
    keys = ["method", "fraction", "arm", "teacher_arch"]
    g = df.groupby(keys, dropna=False).agg(kd_weight=("kd_weight", "first"), mean=("test_acc", "mean"),
                                           std=("test_acc", "std"), seeds=("seed", "nunique")).reset_index()
    g["std"] = g["std"].fillna(0.0)
    g["arm_order"] = g["arm"].map({a: i for i, a in enumerate(arms)})
    g = g.sort_values(["method", "fraction", "arm_order", "teacher_arch"]).drop(columns="arm_order")
    return pd.DataFrame({
        "method": g["method"], "fraction": g["fraction"], "kd_arm": g["arm"], "kd_weight": g["kd_weight"],
        "teacher": g["teacher_arch"], "test_acc_mean_pct": (100 * g["mean"]).round(2),
        "test_acc_std_pct": (100 * g["std"]).round(2), "seeds": g["seeds"],
    }), arms


def acc_over_seeds(mean_pct: float, std_pct: float, seeds: int) -> str:
    return f"{mean_pct:.2f} ± {std_pct:.2f} ({seeds} seed{'s' if seeds != 1 else ''})"


def student_tags(results) -> dict[str, dict]:
    """Per student run id: its tags (kd_arm, run colour, acc_over_seeds) and its test_acc_pct."""
    from kdprune import analysis as A

    table, arms = summary_table(results)
    colors = arm_colors(arms)
    cells = {(r.method, r.fraction, r.kd_arm, r.teacher): r for r in table.itertuples()}
    out = {}
    for r in A.with_arms(results).itertuples():
        run_id = getattr(r, "mlflow_run_id", None)
        if not isinstance(run_id, str) or not run_id:
            continue
        c = cells[(r.method, r.fraction, r.arm, r.teacher_arch)]
        out[run_id] = {"tags": {"kd_arm": r.arm, "mlflow.runColor": colors[r.arm],
                                "acc_over_seeds": acc_over_seeds(c.test_acc_mean_pct, c.test_acc_std_pct, c.seeds)},
                       "test_acc_pct": round(100 * float(r.test_acc), 2)}
    return out


def _teacher_test_acc(reports: Path, arch: str) -> Optional[float]:
    try:
        return float(json.loads((reports / "metrics.json").read_text())["teacher_test_acc"][arch])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def publish_study(root: Path, summary_run_id: Optional[str] = None) -> Optional[str]:
    """Publish the study's summary in MLflow (see the module's docstring) on ``summary_run_id``, or on
    the latest evaluate run when None; returns the run it went to (None when there is nothing to
    publish: no results yet, or no MLflow run). Best effort, like all logging: what MLflow does not
    take is counted and said at the command's end."""
    import pandas as pd

    from telemetry.runlog import read_record
    from tracking.models import describe_teacher_version
    from tracking.tracker import Tracker

    root = Path(root)
    reports = root / "reports"
    if not (reports / "results.csv").exists():
        return None
    results = pd.read_csv(reports / "results.csv")
    if results.empty:
        return None
    tr = Tracker(root)
    run_id = summary_run_id or tr.latest_run("tags.`kdprune.stage` = 'evaluate'")
    if not run_id:
        return None
    table, _ = summary_table(results)
    staged = root / ".kdprune" / "mlflow" / run_id / "summary"  # read by MLflow's writer process, later
    staged.mkdir(parents=True, exist_ok=True)
    tmp = staged / f".{os.getpid()}.csv"
    table.to_csv(tmp, index=False)
    os.replace(tmp, staged / Path(TABLE).name)
    tr.log_artifact(run_id, staged / Path(TABLE).name, "summary")
    if (reports / "accuracy_vs_fraction.png").exists():
        tr.log_artifact(run_id, reports / "accuracy_vs_fraction.png", "summary")
    tr.set_tags(run_id, {SUMMARY_TAG: FIGURE})
    for student_run, s in student_tags(results).items():
        tr.set_tags(student_run, s["tags"])
        tr.log_metrics(student_run, {"test_acc_pct": s["test_acc_pct"]})
    teacher = read_record(root, "teacher").get("mlflow_run_id")
    meta_path = root / "data" / "prepared" / str(results["dataset"].iloc[0]) / "meta.json"
    try:
        arch = json.loads((root / "models" / "teacher" / "model.json").read_text())["arch"]
    except (OSError, ValueError, KeyError):
        arch = ""
    acc = _teacher_test_acc(reports, arch)
    if teacher and acc is not None and meta_path.exists():
        describe_teacher_version(root, tr, teacher, json.loads(meta_path.read_text()), acc)
    tr.flush()
    return run_id
