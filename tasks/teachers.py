"""teachers: the extra teacher architectures of ``student.teachers`` -> models/teachers/<arch>/.

Each is trained exactly like the teacher (full train split, the teacher params' schedule, seed
and augmentation) so that the only thing that differs between the students' teachers is the
architecture: the teacher-size question. No per-sample dynamics are recorded (scores use the
main teacher only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.common import timed_work, atomic_write_json, load_prepared, stage_tags
from tasks.model_io import save_model
from tasks.teacher import fit_teacher, model_info
from tasks.runlog import stable_history
from tasks.tracking import Tracker


def teacher_dir(root: Path, params: dict, arch: str) -> Path:
    """Where the teacher of ``arch`` lives: the main teacher, or one of student.teachers."""
    if arch == params["teacher"]["arch"]:
        return Path(root) / "models" / "teacher"
    if arch not in params["student"]["teachers"]:
        raise ValueError(f"no teacher of architecture {arch!r}: it is neither teacher.arch nor in student.teachers")
    return Path(root) / "models" / "teachers" / arch


@task(name="train-extra-teacher", cache_policy=NO_CACHE, persist_result=False, retries=1,
      task_run_name="teacher-{arch}")
@timed_work
def train_extra_teacher(root: str, params: dict, arch: str, out_dir: str, parent_run_id: Optional[str] = None) -> dict:
    log = get_run_logger()
    root = Path(root)
    meta, _ = load_prepared(root, params["data"]["dataset"])
    tr = Tracker(root)
    with tr.run(f"teacher {arch}", parent_run_id, tags={**stage_tags(root, "teachers", meta),
                                                         "kdprune.role": "teacher", "teacher_arch": arch},
                params={"teacher": {**params["teacher"], "arch": arch}}) as run_id:
        model, res, val, meta, splits, ckpt = fit_teacher(root, params, arch, "teachers", tr, run_id, log,
                                                           record_dynamics=False)
        out = Path(out_dir) / arch
        info = model_info(arch, model, meta)
        save_model(out, model, info)
        atomic_write_json(out / "metrics.json", {
            "arch": arch, "best_epoch": res.best_epoch, "val_acc": val["acc"], "val_loss": val["loss"],
            "steps": res.steps, "n_train": len(splits["train"]),
            "n_params": info["n_params"], "history": stable_history(res.history)})
        tr.log_metrics(run_id, {"best_val_acc": val["acc"], "best_epoch": res.best_epoch, "wall_s": res.seconds,
                                "n_params": info["n_params"]})
        tr.log_artifact(run_id, out / "model.safetensors", "model")
    log.info(f"extra teacher {arch} ({info['n_params']} parameters): val_acc {val['acc']:.4f} ({res.seconds:.1f}s)")
    return {"arch": arch, "val_acc": val["acc"], "n_params": info["n_params"], "wall_s": res.seconds,
            "mlflow_run_id": run_id, "checkpoint": str(ckpt.path)}
