"""teacher: full train split -> models/teacher/ (weights, history, per-epoch per-sample dynamics)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from kdprune.settings import Params
from kdprune.device import resolve_device
from kdprune.models import build_model
from kdprune.reproducibility import provenance
from kdprune.train import evaluate, seeded, train, train_config
from kdprune.train.metrics import dynamics_format
from artifacts.stages import dynamics_work_dir, load_prepared, write_dynamics
from artifacts.checkpoints import checkpoint_root, fault_point, FileCheckpoint, fingerprint
from artifacts.files import atomic_directory, atomic_write_json
from artifacts.models import device_data, save_model
from artifacts.outputs import stable_history
from execution.observe import observer, timed_work


def fit_teacher(root: Path, params: Params, arch: str, stage: str, tr, run_id: Optional[str], log,
                record_dynamics: bool, data: Optional[tuple] = None, device=None):
    """Train a teacher of ``arch`` on the full train split with the teacher params (seed, schedule,
    augmentation); per-epoch metrics go to ``run_id`` (none without ``tr``: a task on the runner
    returns its history instead). ``data``: (meta, splits) when the caller has them, else read from
    the project. Returns (model, TrainResult, val metrics, meta, splits, checkpoint)."""
    tp = params.teacher
    device = torch.device(device) if device else resolve_device(params.device)
    meta, splits = data or load_prepared(root, params.data.dataset)
    train_d, val_d = device_data(meta, splits["train"], device, params), device_data(meta, splits["val"], device, params)
    c, h, _ = meta["shape"]
    with seeded(tp.seed):
        model = build_model(arch, c, meta["num_classes"], h)
    if record_dynamics:  # the logits, or per-example statistics where those are too big (teacher.dynamics)
        record_dynamics = dynamics_format(tp.dynamics, tp.epochs, len(train_d), meta["num_classes"])
    cfg = train_config(tp, order_seed=tp.seed, aug_seed=tp.seed, record_dynamics=record_dynamics)

    def on_epoch(epoch: int, m: dict) -> None:
        bar.update(epoch - bar.n)  # a resumed run starts past epoch 1
        bar.set_postfix_str(f"val_acc {m['val_acc']:.4f}")
        log.info(f"{stage} {arch} epoch {epoch}/{tp.epochs}: loss {m['train_loss']:.4f} "
                 f"train_acc {m['train_acc']:.4f} val_acc {m['val_acc']:.4f} ({m['seconds']:.1f}s)")
        if tr is not None:
            tr.log_metrics(run_id, m, step=epoch)
        fault_point(root, stage, epoch)

    ckpt = FileCheckpoint(checkpoint_root(root), stage, arch if stage != "teacher" else "teacher",
                          fingerprint(params.section("teacher"), arch, meta["sha256"], str(device), torch.get_num_threads(),
                                      params.reproducibility.cpu), log)
    log.info(f"training {stage} {arch} on {len(train_d)} examples for {tp.epochs} epochs on {device}")
    with observer().progress(f"{stage} {arch}", tp.epochs, "epoch") as bar:
        res = train(model, train_d, cfg, val=val_d, on_epoch=on_epoch, checkpoint=ckpt,
                    dynamics_dir=dynamics_work_dir(ckpt.path) if record_dynamics else None)
    if ckpt.resumed_from and tr is not None:  # epochs before the crash were logged to the failed attempt's run
        tr.log_history(run_id, res.history[: ckpt.resumed_from])
    model.load_state_dict(res.best_state)
    val = evaluate(model, val_d)
    return model, res, val, meta, splits, ckpt


def model_info(arch: str, model, meta: dict, compute: dict) -> dict:
    """model.json: architecture, input shape, dataset, and ``compute`` (what explains the weights' bytes:
    kdprune.reproducibility.provenance)."""
    c, h, _ = meta["shape"]
    return {"arch": arch, "in_channels": c, "num_classes": meta["num_classes"], "image_size": h,
            "dataset": meta["dataset"], "dataset_sha256": meta["sha256"],
            "n_params": int(sum(p.numel() for p in model.parameters())), "compute": compute}


def fit_single(root: Path, params: Params, tr, run_id: Optional[str], log):
    """The teacher in this process (``teacher.workers`` 1). Returns (model, TrainResult, val metrics,
    meta, splits, checkpoint, compute)."""
    rp = params.reproducibility
    model, res, val, meta, splits, ckpt = fit_teacher(root, params, params.teacher.arch, "teacher", tr, run_id,
                                                       log, record_dynamics=True)
    return model, res, val, meta, splits, ckpt, provenance(rp.cpu, rp.threads)


@task(name="train-teacher", cache_policy=NO_CACHE, persist_result=False, retries=1)
@timed_work
def train_teacher(root: str, params: Params, parent_run_id: Optional[str] = None) -> dict:
    return teacher_stage(root, params, parent_run_id, fit_single)


def teacher_stage(root: str, params: Params, parent_run_id: Optional[str], fit) -> dict:
    """The stage's work around ``fit`` (:func:`fit_single`, or the data-parallel one of
    tasks/teacher_ddp.py): its MLflow run, the outputs written atomically, the checkpoint cleared."""
    log = get_run_logger()
    root = Path(root)
    tp = params.teacher
    obs = observer()
    tr = obs.tracker(root)
    meta, _ = load_prepared(root, params.data.dataset)
    # the run ends without waiting for its logging (the registered model takes the writer a second or
    # two): the next stage starts meanwhile; a process's later flush, or its end, waits for it
    with tr.run("teacher", parent_run_id, tags=obs.stage_tags(root, "teacher", meta),
                params={"teacher": params.section("teacher"), "device": params.device}, wait=False) as run_id:
        model, res, val, meta, splits, ckpt, compute = fit(root, params, tr, run_id, log)
        out = root / "models" / "teacher"
        with atomic_directory(out) as tmp:
            save_model(tmp, model, model_info(tp.arch, model, meta, compute))
            write_dynamics(tmp / "dynamics", splits["train"].ids, res.dynamics)
            summary = {"best_epoch": res.best_epoch, "val_acc": val["acc"], "val_loss": val["loss"],
                       "steps": res.steps, "n_train": len(splits["train"]), "history": stable_history(res.history)}
            atomic_write_json(tmp / "metrics.json", summary)  # no timings: a DVC out is byte-reproducible
        tr.log_metrics(run_id, {"best_val_acc": val["acc"], "best_epoch": res.best_epoch, "wall_s": res.seconds,
                                "steps": res.steps})
        tr.log_artifact(run_id, out / "model.safetensors", "model")
        tr.log_artifact(run_id, out / "model.json", "model")
        obs.register_teacher(root, tr, run_id, out, meta)
    obs.write_record(root, "teacher", {"mlflow_run_id": run_id, "wall_s": res.seconds})
    ckpt.clear()
    shutil.rmtree(dynamics_work_dir(ckpt.path), ignore_errors=True)  # the dynamics written as it trained
    if tr.summary(wait=False):
        log.warning(f"teacher: {tr.summary(wait=False)}; the model and metrics are on disk in {out}")
    log.info(f"teacher done: best epoch {res.best_epoch}, val_acc {val['acc']:.4f}, {res.seconds:.1f}s -> {out}")
    return {"path": str(out), "val_acc": val["acc"], "best_epoch": res.best_epoch}
