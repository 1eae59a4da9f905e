"""evaluate: students -> reports/metrics.json + reports/plots/accuracy.csv (DVC metrics and plots), the
figures, and reports/results.csv (one row per student) + reports/report.md.

What DVC tracks is byte-reproducible: test accuracies, the figures drawn from them. The results
table and the report also carry what differs between runs (MLflow run ids, training and selection
seconds, peak memory: from the stages' run records, telemetry/runlog.py), so they are written beside
the DVC outs, not as them, and logged to MLflow.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from kdprune.settings import Params
from kdprune import analysis as A
from kdprune import reproducibility as R
from kdprune.report import FIGURES, build_report, dvc_metrics, plot_accuracy, plot_data, plot_teacher_size, plot_weight_heatmap
from kdprune.device import resolve_device
from kdprune.train import evaluate
from artifacts.stages import load_prepared
from artifacts.files import atomic_write_bytes, atomic_write_json, atomic_write_text, load_json
from execution.observe import observer, timed_work
from artifacts.models import device_data, load_model
from tasks.teachers import teacher_dir

COLUMNS = [
    "dataset", "method", "fraction", "kd", "kd_weight", "kd_schedule", "kd_setting", "temperature", "seed",
    "teacher_arch", "teacher_params", "teacher_logits", "student_arch",
    "test_acc", "val_acc", "n_train", "samples_seen", "seen_fraction", "steps", "epochs", "budget", "sampler", "balanced",
    "wall_s", "selection_s", "selection_peak_mb", "selection_seed", "same_training_as", "reused", "reused_from", "name",
    "manifest", "manifest_sha256", "teacher_sha256", "mlflow_run_id",
]


def selection_costs(root: Path, params: Params) -> dict[str, dict]:
    """Per selection method: seconds to score and select (proxy training included) and peak extra
    memory, from the scores stage's run record; NaN where this machine has no record of them."""

    recorded = observer().read_record(root, "scores").get("costs", {})
    selected = observer().read_record(root, "select").get("costs", {})  # joint selectors: their cost is the selection
    costs = {}
    for m in params.select.methods:
        label = m.label
        if m.joint is not None:
            runs = [c for c in selected.values() if c.get("method") == label]
            costs[label] = {"selection_s": max(c["total_s"] for c in runs) if runs else float("nan"),
                            "selection_peak_mb": max(c["peak_mem_mb"] for c in runs) if runs else float("nan")}
            continue
        if m.score is None:
            costs[label] = {"selection_s": 0.0, "selection_peak_mb": 0.0}
            continue
        infos = [c for c in recorded.values() if c.get("method") == m.score]
        costs[label] = {"selection_s": max(i["total_s"] for i in infos) if infos else float("nan"),
                        "selection_peak_mb": max(i["peak_mem_mb"] for i in infos) if infos else float("nan")}
    return costs


def score_recipes(root: Path, params: Params) -> dict[str, str]:
    """Per selection method: the score it read and the recipe that made it (from the score files)."""
    from kdprune.scores import SCORES

    out = {}
    for m in params.select.methods:
        label = m.label
        if m.joint is not None:
            out[label] = f"joint selector {m.joint} on the teacher's outputs (options under select.{m.joint})"
            continue
        if m.score is None:
            out[label] = f"per-epoch sampler {m.sampler}"
            continue
        f = Path(root) / "data" / "scores" / (f"{m.score}-{params.scores.seeds[0]}.json"
                                              if SCORES.get(m.score).seeded else f"{m.score}.json")
        info = json.loads(f.read_text()) if f.exists() else {}
        text = f"score {m.score}: {info.get('variant', 'unknown variant')}"
        pt = info.get("proxy_training")
        if pt:
            text += "; proxies: " + ", ".join(f"{k} {v}" for k, v in pt.items())
        if m.cut_score:
            text += f"; cut on {m.cut_score}"
        out[label] = text
    return out


@task(name="evaluate-students", cache_policy=NO_CACHE, persist_result=False)
@timed_work
def evaluate_students(root: str, params: Params, parent_run_id: Optional[str] = None) -> dict:
    log = get_run_logger()
    root = Path(root)
    device = resolve_device(params.device)
    meta, splits = load_prepared(root, params.data.dataset)
    test_d = device_data(meta, splits["test"], device, params)
    sroot = root / "models" / "students"
    student_dirs = sorted(p for p in sroot.iterdir() if (p / "metrics.json").exists()) if sroot.exists() else []
    if not student_dirs:
        raise FileNotFoundError(f"no students under {sroot}; run `dvc repro distill` first")
    obs = observer()
    tr = obs.tracker(root)
    rows = []
    costs = selection_costs(root, params)
    runs = obs.read_record(root, "distill")  # MLflow run ids and seconds: not in the DVC outs
    accs: dict[str, float] = {}
    student_params = None
    records = [(d, load_json(d / "metrics.json")) for d in student_dirs]
    log.info(f"testing {len(records)} students and {1 + len(params.student.teachers)} teacher(s) on "
             f"{meta['sizes']['test']:,} test images ({device})")
    # trained students first, then those recorded from the same training under another method's name
    with obs.progress("evaluate", len(records), "student") as bar:
        for d, rec in sorted(records, key=lambda dr: "same_training_as" in dr[1]):
            if rec.get("same_training_as") in accs:
                rec["test_acc"] = accs[rec["same_training_as"]]
            else:
                model, _ = load_model(d, device)
                student_params = int(sum(p.numel() for p in model.parameters()))
                rec["test_acc"] = evaluate(model, test_d)["acc"]
            bar.update(1)
            accs[rec["name"]] = rec["test_acc"]
            rec.update(costs.get(rec["method"], {}))
            rec.update(runs.get(rec["name"], {}))
            rec["manifest"] = f"data/manifests/{rec['manifest']}"
            rows.append({c: rec.get(c) for c in COLUMNS})
            if rec.get("mlflow_run_id"):
                try:
                    tr.log_metrics(rec["mlflow_run_id"], {"test_acc": rec["test_acc"]})
                except Exception as e:  # a student run from another store; the CSV still has it
                    log.warning(f"could not log test_acc to MLflow run {rec['mlflow_run_id']}: {e}")
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values(["method", "fraction", "kd", "kd_weight", "seed"])
    teachers = evaluate_teachers(root, params, device, test_d)
    main_t = params.teacher.arch
    ctx = {"dataset": meta["dataset"], "main_teacher": main_t, "student_arch": params.student.arch,
           "student_params": student_params, "teachers_max_fraction": params.student.teachers_max_fraction,
           "n_pool": meta["sizes"]["train"], "recipes": score_recipes(root, params)}
    teacher_acc = float(teachers.set_index("arch").loc[main_t, "test_acc"])
    # the verdicts on the paper's claims: in the report, and in claims.json (what `kdprune verify` compares)
    claims = A.claims(A.with_arms(df), main_t, teachers, student_params, ctx["teachers_max_fraction"])
    report = build_report(df, teachers, ctx, claims)
    out = root / "reports"
    figures = dict(zip(FIGURES, (
        plot_accuracy(df, main_t, teacher_acc),
        plot_weight_heatmap(df, main_t),
        plot_teacher_size(df, teachers, ctx["teachers_max_fraction"], student_params),
    )))
    # DVC outs (byte-reproducible): metrics, plot data, figures
    atomic_write_json(out / "metrics.json", dvc_metrics(df, teachers, main_t))
    atomic_write_json(out / "claims.json", {str(c.number): {"claim": c.claim, "verdict": c.verdict} for c in claims})
    atomic_write_text(out / "plots" / "accuracy.csv", plot_data(df, main_t).to_csv(index=False, float_format="%.6g"))
    # beside them (git-tracked, not a DVC out): what computed these bytes -- the setting and this CPU's
    # arithmetic fingerprint; a colleague whose fingerprint is the same must get the same dvc.lock
    atomic_write_json(out / "compute.json", {**R.checked(), "arithmetic": R.arithmetic()})
    for name, png in figures.items():
        atomic_write_bytes(out / name, png)
    # beside them: the per-student table and the report, with run ids and costs
    atomic_write_text(out / "results.csv", df.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / "report.md", report)
    with tr.run("evaluate", parent_run_id, tags=obs.stage_tags(root, "evaluate", meta)) as run_id:
        tr.log_metrics(run_id, {"teacher_test_acc": teacher_acc, "students": len(df)})
        for f in ("results.csv", "report.md", "metrics.json", "claims.json", "plots/accuracy.csv", *figures):
            tr.log_artifact(run_id, out / f, "report")
    log.info(f"evaluated {len(df)} students; teacher test_acc {teacher_acc:.4f}")
    return {"report": str(out / "report.md"), "results": str(out / "results.csv"), "students": len(df),
            "teacher_test_acc": teacher_acc}


def evaluate_teachers(root: Path, params: Params, device, test_d) -> pd.DataFrame:
    """Test accuracy and size of the main teacher and every extra teacher."""
    rows = []
    for arch in [params.teacher.arch, *params.student.teachers]:
        tdir = teacher_dir(root, params, arch)
        model, _ = load_model(tdir, device)
        m = load_json(tdir / "metrics.json")
        rows.append({"arch": arch, "n_params": int(sum(p.numel() for p in model.parameters())),
                     "test_acc": evaluate(model, test_d)["acc"], "val_acc": m["val_acc"], "n_train": m["n_train"],
                     "role": "main" if arch == params.teacher.arch else "extra"})
    return pd.DataFrame(rows)
