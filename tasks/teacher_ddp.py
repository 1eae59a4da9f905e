"""teacher with ``teacher.workers`` > 1: the teacher stage's task, its training cut across data-parallel
workers (PyTorch DDP under Ray Train: execution/ddp.py, kdprune/train/distributed.py); the outputs,
the MLflow run and the checkpoint's life are tasks/teacher.py's. A module of its own so the stages that
import tasks/teacher.py for its helpers (teachers, scores, distill) do not depend on the Ray Train code."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import task
from prefect.cache_policies import NO_CACHE

from kdprune.settings import Params
from execution import ddp
from execution.observe import observer, timed_work
from artifacts.stages import load_prepared
from kdprune.models import build_model
from kdprune.reproducibility import provenance
from kdprune.train import TrainResult, seeded, train_config
from kdprune.train.metrics import dynamics_format
from tasks.teacher import teacher_stage


@task(name="train-teacher", cache_policy=NO_CACHE, persist_result=False, retries=1)
@timed_work
def train_teacher_ddp(root: str, params: Params, parent_run_id: Optional[str] = None) -> dict:
    return teacher_stage(root, params, parent_run_id, fit_teacher_ddp)


def fit_teacher_ddp(root: Path, params: Params, tr, run_id: Optional[str], log):
    """The teacher on ``teacher.workers`` data-parallel workers (execution/ddp.py): the same training
    as :func:`fit_teacher`'s cut across the workers, the same outputs. Returns (model, TrainResult,
    val metrics, meta, splits, checkpoint, compute)."""
    tp = params.teacher
    arch = tp.arch
    meta, splits = load_prepared(root, params.data.dataset)
    # the logits, or per-example statistics where those are too big (teacher.dynamics), as fit_teacher
    record = dynamics_format(tp.dynamics, tp.epochs, len(splits["train"]), meta["num_classes"])
    cfg = train_config(tp, order_seed=tp.seed, aug_seed=tp.seed, record_dynamics=record)
    logged: set[int] = set()

    def on_epoch(epoch: int, m: dict) -> None:
        bar.update(epoch - bar.n)
        bar.set_postfix_str(f"val_acc {m['val_acc']:.4f}")
        log.info(f"teacher {arch} epoch {epoch}/{tp.epochs}: loss {m['train_loss']:.4f} "
                 f"train_acc {m['train_acc']:.4f} val_acc {m['val_acc']:.4f} ({m['seconds']:.1f}s)")
        if tr is not None:
            tr.log_metrics(run_id, m, step=epoch)
        logged.add(epoch)

    log.info(f"training teacher {arch} on {len(splits['train'])} examples for {tp.epochs} epochs "
             f"on {tp.workers} workers")
    with observer().progress(f"teacher {arch}", tp.epochs, "epoch") as bar:
        out = ddp.fit(root, params, arch, cfg, meta, splits, on_epoch, log)
    if tr is not None:  # epochs before a crash were logged to the failed attempt's run
        for epoch, m in enumerate(out["history"], 1):
            if epoch not in logged:
                tr.log_metrics(run_id, m, step=epoch)
    c, h, _ = meta["shape"]
    with seeded(tp.seed):
        model = build_model(arch, c, meta["num_classes"], h)
    model.load_state_dict(out["best_state"])
    res = TrainResult(best_state=out["best_state"], best_epoch=out["best_epoch"], best_score=out["best_score"],
                      selected_on=out["selected_on"], history=out["history"], dynamics=out["dynamics"],
                      steps=out["steps"], samples_seen=out["samples_seen"], seconds=out["seconds"])
    ckpt = ddp.checkpoint(root, params, arch, meta, out["device"], log)  # rank 0's, on this node when it ran here
    ckpt.resumed_from = out["resumed_from"]
    rp = params.reproducibility
    compute = {**provenance(rp.cpu, out["compute"]["threads"]), "cpu_capability": out["compute"]["cpu_capability"],
               "workers": tp.workers}
    return model, res, out["val"], meta, splits, ckpt, compute
