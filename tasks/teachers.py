"""teachers: the extra teacher architectures of ``student.teachers`` -> models/teachers/<arch>/.

Each is trained exactly like the teacher (full train split, the teacher params' schedule, seed
and augmentation) so that the only thing that differs between the students' teachers is the
architecture: the teacher-size question. No per-sample dynamics are recorded (scores use the
main teacher only).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from kdprune.settings import Params
from artifacts.stages import load_prepared
from artifacts.files import atomic_write_json
from artifacts.models import model_from_state, save_model, state_arrays
from artifacts.outputs import stable_history
from execution.observe import observer, timed_work
from execution.runner import node_tags, task_compute, task_device, where
from tasks.teacher import fit_teacher, model_info


def teacher_dir(root: Path, params: Params, arch: str) -> Path:
    """Where the teacher of ``arch`` lives: the main teacher, or one of student.teachers."""
    if arch == params.teacher.arch:
        return Path(root) / "models" / "teacher"
    if arch not in params.student.teachers:
        raise ValueError(f"no teacher of architecture {arch!r}: it is neither teacher.arch nor in student.teachers")
    return Path(root) / "models" / "teachers" / arch


@task(name="train-extra-teacher", cache_policy=NO_CACHE, persist_result=False, retries=1,
      task_run_name="teacher-{arch}")
@timed_work
def train_extra_teacher(params: Params, arch: str, inputs: dict, device: str) -> dict:
    """Train the extra teacher ``arch`` wherever the runner placed this task; returns its weights,
    history and the node it ran on (the stage's process records them: :func:`record_extra_teacher`)."""
    log = get_run_logger()
    started = time.time()
    meta = inputs["meta"]
    model, res, val, meta, splits, ckpt = fit_teacher(
        Path(inputs["checkpoints"]), params, arch, "teachers", None, None, log, record_dynamics=False,
        data=(meta, {"train": inputs["train"], "val": inputs["val"]}), device=task_device(params, device))
    return {"arch": arch, "state": state_arrays(model),
            "history": res.history, "best_epoch": res.best_epoch, "val_acc": val["acc"], "val_loss": val["loss"],
            "steps": res.steps, "n_train": len(splits["train"]), "wall_s": res.seconds, "started": started,
            "ended": time.time(), "node": where(), "checkpoint": str(ckpt.path)}


def record_extra_teacher(root: Path, params: Params, res: dict, out_dir: Path, parent_run_id: Optional[str]) -> dict:
    """In the stage's process: the extra teacher's model, metrics and MLflow run (created here, so a
    retried task never leaves a second one)."""
    log = get_run_logger()
    arch = res["arch"]
    meta, _ = load_prepared(root, params.data.dataset)
    c, h, _ = meta["shape"]
    model = model_from_state(arch, c, meta["num_classes"], h, res["state"])
    out = Path(out_dir) / arch
    info = model_info(arch, model, meta, task_compute(params, res["node"]))
    save_model(out, model, info)
    atomic_write_json(out / "metrics.json", {
        "arch": arch, "best_epoch": res["best_epoch"], "val_acc": res["val_acc"], "val_loss": res["val_loss"],
        "steps": res["steps"], "n_train": res["n_train"], "n_params": info["n_params"],
        "history": stable_history(res["history"])})
    obs = observer()
    tr = obs.shared_tracker(root, parent_run_id)
    with tr.run(f"teacher {arch}", parent_run_id, tags={**obs.stage_tags(root, "teachers", meta), "kdprune.role": "teacher",
                                                         "teacher_arch": arch, **node_tags(res["node"])},
                params={"teacher": {**params.section("teacher"), "arch": arch}, "runner": params.section("runner")},
                start_ms=int(res["started"] * 1000), end_ms=int(res["ended"] * 1000)) as run_id:
        tr.log_history(run_id, res["history"])
        tr.log_metrics(run_id, {"best_val_acc": res["val_acc"], "best_epoch": res["best_epoch"],
                                "wall_s": res["wall_s"], "n_params": info["n_params"]})
        tr.log_artifact(run_id, out / "model.safetensors", "model")
    log.info(f"extra teacher {arch} ({info['n_params']} parameters): val_acc {res['val_acc']:.4f} "
             f"({res['wall_s']:.1f}s on {res['node']['host']})")
    return {"arch": arch, "val_acc": res["val_acc"], "n_params": info["n_params"], "wall_s": res["wall_s"],
            "mlflow_run_id": run_id, "checkpoint": res["checkpoint"], "work_s": res["work_s"], **res["node"]}
