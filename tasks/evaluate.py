"""evaluate: students -> reports/results.csv (one row per student), reports/report.md, plot PNG."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Optional

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from kdprune.device import resolve_device
from kdprune.train import evaluate
from tasks.common import atomic_write_bytes, atomic_write_text, device_data, load_model, load_prepared, stage_tags
from tasks.tracking import Tracker

COLUMNS = [
    "dataset", "method", "fraction", "kd", "kd_weight", "temperature", "seed", "teacher_arch", "student_arch",
    "test_acc", "val_acc", "n_train", "samples_seen", "seen_fraction", "steps", "epochs", "budget", "sampler",
    "wall_s", "selection_s", "selection_peak_mb", "selection_seed", "name", "mlflow_run_id",
]


def _fmt(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n > 1 else "")


def selection_costs(root: Path, params: dict) -> dict[str, dict]:
    """Per selection method: seconds to score and select (proxy training included) and peak extra memory."""
    from kdprune.selection import parse_method

    sdir = Path(root) / "data" / "scores"
    costs = {}
    for label in params["select"]["methods"]:
        m = parse_method(label, params["select"]["ccs_score"])
        if m.score is None:
            costs[label] = {"selection_s": 0.0, "selection_peak_mb": 0.0}
            continue
        infos = [i for i in (json.loads(f.read_text()) for f in sorted(sdir.glob(f"{m.score}*.json")))
                 if i.get("method") == m.score]
        costs[label] = {"selection_s": max(i["total_s"] for i in infos) if infos else float("nan"),
                        "selection_peak_mb": max(i["peak_mem_mb"] for i in infos) if infos else float("nan")}
    return costs


def build_report(df: pd.DataFrame, teacher: dict) -> str:
    """Markdown report: test accuracy (%) per method and kept fraction, no KD vs each KD weight."""
    df = df.copy()
    df["setting"] = df.apply(lambda r: f"KD a={r.kd_weight:g} T={r.temperature:g}" if r.kd else "no KD", axis=1)
    g = df.groupby(["method", "fraction", "setting"])["test_acc"].agg(["mean", "std", "count"]).reset_index()
    g["cell"] = [_fmt(m, 0.0 if pd.isna(s) else s, n) for m, s, n in zip(g["mean"], g["std"], g["count"])]
    table = g.pivot(index=["method", "fraction"], columns="setting", values="cell").reset_index()
    settings = ["no KD"] + sorted(c for c in table.columns if str(c).startswith("KD"))
    table = table[["method", "fraction", *settings]]
    lines = [
        f"# kdprune report — {df['dataset'].iloc[0]}",
        "",
        f"Teacher: {teacher['arch']} trained on the full train split ({teacher['n_train']} examples): "
        f"test accuracy {100 * teacher['test_acc']:.2f}%, validation {100 * teacher['val_acc']:.2f}%.",
        f"Students: {df['student_arch'].iloc[0]}, {df['epochs'].iloc[0]} epochs on each subset; "
        f"seeds {sorted(df['seed'].unique().tolist())}. Test accuracy (%), mean ± std over seeds.",
        "",
        "| method | kept fraction | " + " | ".join(settings) + " |",
        "| --- | --- | " + " | ".join("---" for _ in settings) + " |",
    ]
    for _, r in table.sort_values(["method", "fraction"]).iterrows():
        lines.append(f"| {r['method']} | {r['fraction']:g} | " + " | ".join(str(r[s]) for s in settings) + " |")
    cost = df.groupby("method")[["selection_s", "selection_peak_mb", "seen_fraction"]].max()
    lines += ["", "Selection cost (scoring and selection, including proxy training; peak extra memory) beside the "
              "best test accuracy any student of the method reached:", "",
              "| method | selection seconds | peak memory (MiB) | best test acc (%) |", "| --- | --- | --- | --- |"]
    best = df.groupby("method")["test_acc"].max()
    for method, r in cost.iterrows():
        lines.append(f"| {method} | {r.selection_s:.3g} | {r.selection_peak_mb:.3g} | {100 * best[method]:.2f} |")
    kd = df[df.kd].groupby(["method", "fraction"])["test_acc"].max()
    nokd = df[~df.kd].groupby(["method", "fraction"])["test_acc"].mean()
    both = pd.concat([kd.rename("kd"), nokd.rename("nokd")], axis=1).dropna()
    if len(both):
        wins = int((both["kd"] > both["nokd"]).sum())
        lines += ["", f"KD (best weight) beats no KD in {wins} of {len(both)} (method, fraction) cells."]
    lines += ["", f"{len(df)} students; per-student rows in `reports/results.csv`; "
              "plot in `reports/accuracy_vs_fraction.png`.", ""]
    return "\n".join(lines)


def plot_png(df: pd.DataFrame, teacher_acc: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, dm) in enumerate(sorted(df.groupby("method"), key=lambda t: t[0])):
        for kd, dk in dm.groupby("kd"):
            for w, dw in (dk.groupby("kd_weight") if kd else [(None, dk)]):
                s = dw.groupby("fraction")["test_acc"].agg(["mean", "std"]).reset_index()
                ax.errorbar(s["fraction"], 100 * s["mean"], yerr=100 * s["std"].fillna(0), marker="o", capsize=3,
                            color=colors[i % len(colors)], linestyle="-" if kd else "--",
                            label=f"{method} " + (f"KD a={w:g}" if kd else "no KD"))
    ax.axhline(100 * teacher_acc, color="grey", linestyle=":", label="teacher (full data)")
    ax.set_xlabel("kept fraction")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{df['dataset'].iloc[0]}: student accuracy vs kept fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


@task(name="evaluate-students", cache_policy=NO_CACHE, persist_result=False)
def evaluate_students(root: str, params: dict, parent_run_id: Optional[str] = None) -> dict:
    log = get_run_logger()
    root = Path(root)
    device = resolve_device(params["device"])
    meta, splits = load_prepared(root, params["data"]["dataset"])
    test_d = device_data(meta, splits["test"], device)
    sroot = root / "models" / "students"
    student_dirs = sorted(p for p in sroot.iterdir() if (p / "metrics.json").exists()) if sroot.exists() else []
    if not student_dirs:
        raise FileNotFoundError(f"no students under {sroot}; run `dvc repro distill` first")
    tr = Tracker(root)
    rows, compute_s = [], 0.0
    costs = selection_costs(root, params)
    for d in student_dirs:
        rec = json.loads((d / "metrics.json").read_text())
        model, _ = load_model(d, device)
        t0 = time.perf_counter()
        rec["test_acc"] = evaluate(model, test_d)["acc"]
        compute_s += time.perf_counter() - t0
        rec.update(costs.get(rec["method"], {}))
        rows.append({c: rec.get(c) for c in COLUMNS})
        if rec.get("mlflow_run_id"):
            try:
                tr.log_metrics(rec["mlflow_run_id"], {"test_acc": rec["test_acc"]})
            except Exception as e:  # a student run from another store; the CSV still has it
                log.warning(f"could not log test_acc to MLflow run {rec['mlflow_run_id']}: {e}")
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values(["method", "fraction", "kd", "kd_weight", "seed"])
    teacher, tinfo = load_model(root / "models" / "teacher", device)
    tmetrics = json.loads((root / "models" / "teacher" / "metrics.json").read_text())
    tsum = {"arch": tinfo["arch"], "test_acc": evaluate(teacher, test_d)["acc"], "val_acc": tmetrics["val_acc"],
            "n_train": tmetrics["n_train"]}
    report = build_report(df, tsum)
    out = root / "reports"
    atomic_write_text(out / "results.csv", df.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / "report.md", report)
    atomic_write_bytes(out / "accuracy_vs_fraction.png", plot_png(df, tsum["test_acc"]))
    with tr.run("evaluate", parent_run_id, tags=stage_tags(root, "evaluate", meta)) as run_id:
        tr.log_metrics(run_id, {"teacher_test_acc": tsum["test_acc"], "students": len(df)})
        for f in ("results.csv", "report.md", "accuracy_vs_fraction.png"):
            tr.log_artifact(run_id, out / f, "report")
    log.info(f"evaluated {len(df)} students; teacher test_acc {tsum['test_acc']:.4f}")
    return {"report": str(out / "report.md"), "results": str(out / "results.csv"), "students": len(df),
            "teacher_test_acc": tsum["test_acc"], "compute_s": compute_s}
