"""distill: one student per (manifest, KD setting, seed) -> models/students/<name>/ (weights + metrics)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import math
import shutil
import time

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from kdprune.models import build_model
from kdprune.selection import SAMPLERS, make_sampler
from kdprune.distill import kd_settings
from kdprune.train import evaluate, predict_logits, seeded, train
from artifacts.stages import load_manifest, load_prepared
from artifacts.checkpoints import checkpoint_root, fault_point, FileCheckpoint, fingerprint
from artifacts.files import atomic_write_json, load_json, md5_file, sha256_file
from artifacts.models import device_data, load_model, model_from_state, save_model, state_arrays
from artifacts.outputs import stable_history
from execution.observe import observer, timed_work
from execution.runner import node_tags, share, task_compute, task_device, where
from tasks.teacher import train_config
from tasks.teachers import teacher_dir


def student_variants(root: Path, params: dict) -> list[dict]:
    """Every student the params ask for: manifests x (no KD + each KD arm x each teacher) x seeds.

    KD arms come from the weight schedule (``kdprune.distill.kd_settings``): one per constant weight,
    or one whose weight follows the kept fraction. Extra teachers (``student.teachers``) are used
    for manifests kept at ``student.teachers_max_fraction`` or below. Students that would train on
    the same ids with the same settings (e.g. every method at fraction 1.0) share one ``key``: the
    distill stage trains one of them and records it under every name.
    """
    sp = params["student"]
    main = params["teacher"]["arch"]
    settings = kd_settings(sp)
    out = []
    for mf in sorted((Path(root) / "data" / "manifests").glob("*.json")):
        m = load_manifest(mf)
        frac = float(m["fraction"])
        teachers = [main] + [t for t in sp["teachers"] if frac <= sp["teachers_max_fraction"] + 1e-9]
        # a seeded manifest (random) is paired with the student of the same seed
        seeds = [m["seed"]] if m["seed"] is not None else sp["seeds"]
        same = {"ids": m["ids_sha256"], "sampler": m.get("sampler")}
        if m.get("weights") is not None:  # a weighted coreset trains differently from the same ids unweighted
            same["weights"] = fingerprint(m["weights"])
        for seed in seeds:
            arms = [(None, None, main)] + [(st, st.weight(frac), t) for st in settings for t in teachers]
            for st, w, t in arms:
                kd = "nokd" if st is None else f"{st.label}-T{sp['temperature']:g}"
                name = f"{mf.stem}__{kd}" + ("" if t == main else f"__t-{t}") + f"__s{seed}"
                out.append({"name": name, "manifest": mf.name, "kd_weight": w, "seed": seed,
                            "kd_schedule": None if st is None else st.schedule, "kd_setting": kd,
                            "teacher": t if st is not None else None,
                            "key": fingerprint(same, kd, t if st is not None else None, seed)})
    return out


def group_variants(variants: list[dict]) -> list[list[dict]]:
    """Variants grouped by ``key`` (identical training), in first-seen order; the first of each trains."""
    groups: dict[str, list[dict]] = {}
    for v in variants:
        groups.setdefault(v["key"], []).append(v)
    return list(groups.values())


def student_budget(sp: dict, n_total: int, manifest: dict, n_pool: int) -> tuple[int, int | None]:
    """(epochs, max_steps) of a student. ``epochs``: student.epochs over its subset (fewer steps on
    smaller subsets). ``steps``: the steps the full train split takes in student.epochs epochs,
    spread over as many epochs of the subset (or of the RS2 per-epoch draw) as that needs."""
    if sp["budget"] == "epochs":
        return sp["epochs"], None
    full_steps = sp["epochs"] * math.ceil(n_total / sp["batch_size"])
    s = manifest.get("sampler")
    per_epoch = SAMPLERS.get(s["name"]).epoch_size(n_pool, **s["options"]) if s else n_pool
    return math.ceil(full_steps / math.ceil(per_epoch / sp["batch_size"])), full_steps


def student_cost(params: dict, variant: dict, inputs: dict) -> float:
    """A student's expected training cost, for ordering submissions: its subset's size (steps under
    the ``epochs`` budget; the ``steps`` budget gives every student the same), times 1.5 when a live
    teacher runs on every batch."""
    sp = params["student"]
    n = inputs["sizes"][variant["manifest"]] if sp["budget"] == "epochs" else 1
    live = variant["kd_weight"] is not None and not cached_logits(sp)
    return n * (1.5 if live else 1.0)


def cached_logits(sp: dict) -> bool:
    """Students use each teacher's logits computed once: asked for, and the teacher's input never
    changes (augmentation off)."""
    return sp["cached_logits"] and sp["pad"] == 0 and not sp["flip"]


def student_checkpoint(root: Path, params: dict, variant: dict, dataset_sha: str, manifest_sha: str, log=None):
    """Where a student's per-epoch state lives, on the node that trains it (kept until the whole
    distill stage has finished): the project's .kdprune/checkpoints where that directory can be
    written, else the node's temp directory; a retried task on the same node resumes from it."""
    key = fingerprint(params["student"], params["runner"]["cpus_per_task"], params["reproducibility"]["cpu"], variant, dataset_sha, manifest_sha,
                      params["device"])
    return FileCheckpoint(checkpoint_root(root), "distill", variant["name"], key, log)


def student_inputs(root: Path, params: dict, variants: list[dict], device: torch.device) -> dict:
    """What every student task reads, loaded once by the stage: the prepared train and val splits,
    the manifests (ids, weights, sampler), each teacher's weights, and each teacher's logits on the
    training split when students use cached logits. Under Ray each goes into the object store once
    (:func:`execution.runner.share`), so a task on another node needs no shared filesystem."""
    sp = params["student"]
    meta, splits = load_prepared(root, params["data"]["dataset"])
    manifests = {v["manifest"]: load_manifest(root / "data" / "manifests" / v["manifest"], meta, splits["train"].ids)
                 for v in variants}
    teachers, logits = {}, {}
    for arch in dict.fromkeys(v["teacher"] for v in variants if v["teacher"]):
        tdir = teacher_dir(root, params, arch)
        model, info = load_model(tdir, device)
        teachers[arch] = share({"state": state_arrays(model), "info": info}, params)
        if cached_logits(sp):  # computed once here, for every student of this teacher
            logits[arch] = share(predict_logits(model, device_data(meta, splits["train"], device), batch_size=512)
                                 .cpu().numpy(), params)
    return {"meta": meta, "train": share(splits["train"], params), "val": share(splits["val"], params),
            "manifests": {k: share(m, params) for k, m in manifests.items()}, "teachers": teachers, "logits": logits,
            "sizes": {k: len(m["ids"]) for k, m in manifests.items()},
            "checkpoints": str(root)}


@task(name="train-student", cache_policy=NO_CACHE, persist_result=False, retries=1,
      task_run_name="student-{variant[name]}")
@timed_work
def train_student(params: dict, variant: dict, inputs: dict, device: str) -> dict:
    """Train one student wherever the runner placed this task; returns its weights, best-epoch
    metrics and history with the node it ran on. Writes nothing but its per-epoch checkpoint:
    the stage's process records the result (:func:`record_student`)."""
    log = get_run_logger()
    started = time.time()
    sp = params["student"]
    dev = task_device(params, device)
    meta = inputs["meta"]
    manifest = inputs["manifests"][variant["manifest"]]
    train_split = inputs["train"]
    subset = torch.from_numpy(train_split.positions(np.asarray(manifest["ids"], dtype=np.int64)))
    kd = variant["kd_weight"] is not None
    c, h, _ = meta["shape"]
    train_d, val_d = device_data(meta, train_split, dev), device_data(meta, inputs["val"], dev)
    teacher, t_logits = None, None
    if kd and variant["teacher"] in inputs["logits"]:
        t_logits = torch.tensor(inputs["logits"][variant["teacher"]])  # a copy: Ray's object store is read-only
    elif kd:
        t = inputs["teachers"][variant["teacher"]]
        teacher = model_from_state(t["info"]["arch"], t["info"]["in_channels"], t["info"]["num_classes"],
                                   t["info"]["image_size"], t["state"]).to(dev).eval()
    with seeded(variant["seed"]):
        model = build_model(sp["arch"], c, meta["num_classes"], h)
    epochs, max_steps = student_budget(sp, n_total=len(train_split), manifest=manifest,
                                       n_pool=int(subset.numel()))
    # order/augmentation seeds are the student seed: every subset of one seed sees the same
    # per-example augmentations as the full run of that seed would
    cfg = train_config(sp, epochs=epochs, order_seed=variant["seed"], aug_seed=variant["seed"],
                       loss=sp["loss"] if kd else "ce", kd_weight=variant["kd_weight"] or 0.0,
                       loss_options=sp.get(sp["loss"], {}) if kd else {},  # student.<loss>, resolved by validation
                       temperature=sp["temperature"], max_steps=max_steps)
    weights = manifest.get("weights")
    weights = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    sampler = None
    if manifest.get("sampler"):
        s = manifest["sampler"]
        sampler = make_sampler(s["name"], int(subset.numel()), epochs, seed=s["seed"] or 0, **s["options"])
    ckpt = student_checkpoint(Path(inputs["checkpoints"]), params, variant, meta["sha256"],
                              manifest["ids_sha256"], log)
    res = train(model, train_d, cfg, subset=subset, val=val_d, teacher=teacher, teacher_logits=t_logits,
                checkpoint=ckpt, sampler=sampler, sample_weights=weights,
                on_epoch=lambda epoch, m: (observer().note(f"{variant['name']} epoch {epoch}/{epochs}"),
                                           fault_point(inputs["checkpoints"], "distill", epoch)))
    model.load_state_dict(res.best_state)
    val = evaluate(model, val_d)
    return {"name": variant["name"], "state": state_arrays(model),
            "history": res.history, "val_acc": val["acc"], "val_loss": val["loss"], "steps": res.steps,
            "best_epoch": res.best_epoch, "samples_seen": res.samples_seen, "epochs": epochs,
            "teacher_logits": "cached" if t_logits is not None else "live" if kd else "none", "loss": cfg.loss,
            "weighted": weights is not None, "n_train": int(subset.numel()), "wall_s": res.seconds,
            "started": started, "ended": time.time(), "node": where(), "checkpoint": str(ckpt.path)}


def teacher_facts(root: Path, params: dict) -> dict[str, dict]:
    """Per teacher architecture, what a student's record says of it: model.json and the weights'
    sha256 (read once per stage, not once per student)."""
    out = {}
    for arch in [params["teacher"]["arch"], *params["student"]["teachers"]]:
        tdir = teacher_dir(root, params, arch)
        if (tdir / "model.json").exists():
            out[arch] = {"info": load_json(tdir / "model.json"),
                         "sha256": sha256_file(tdir / "model.safetensors")}
    return out


def record_student(root: Path, params: dict, variant: dict, aliases: tuple, res: dict, out_dir: Path,
                   parent_run_id: Optional[str], teachers: dict, position: str = "") -> dict:
    """In the stage's process: write a trained student's model and metrics under ``out_dir`` and its
    MLflow run (one per student, created here, so a retried or killed task never leaves a second
    one), plus the runs of its ``aliases`` (variants with identical training); ``teachers``: from
    :func:`teacher_facts`. Returns the task index entry."""
    log = get_run_logger()
    sp = params["student"]
    meta, splits = load_prepared(root, params["data"]["dataset"])
    mpath = root / "data" / "manifests" / variant["manifest"]
    manifest = load_manifest(mpath, meta)
    kd = variant["kd_weight"] is not None
    teacher = teachers[variant["teacher"] or params["teacher"]["arch"]]
    tinfo = teacher["info"]
    record = {
        "name": variant["name"], "manifest": variant["manifest"], "method": manifest["method"],
        "fraction": manifest["fraction"], "selection_seed": manifest["seed"], "seed": variant["seed"],
        "kd": kd, "loss": res["loss"], "kd_weight": variant["kd_weight"] if kd else 0.0,
        "kd_schedule": variant["kd_schedule"] or "none", "kd_setting": variant["kd_setting"],
        "temperature": sp["temperature"] if kd else None, "teacher_logits": res["teacher_logits"],
        "teacher_arch": tinfo["arch"], "teacher_params": tinfo.get("n_params"), "student_arch": sp["arch"],
        "dataset": meta["dataset"], "manifest_sha256": sha256_file(mpath),
        "teacher_sha256": teacher["sha256"] if kd else None,
        "n_train": res["n_train"], "epochs": res["epochs"], "budget": sp["budget"],
        "sampler": (manifest.get("sampler") or {}).get("name"), "balanced": manifest.get("balanced"),
        "weighted": res["weighted"], "steps": res["steps"], "best_epoch": res["best_epoch"],
        "val_acc": res["val_acc"], "val_loss": res["val_loss"], "samples_seen": res["samples_seen"],
        "seen_fraction": res["samples_seen"] / (sp["epochs"] * len(splits["train"])),
    }
    obs = observer()
    tr = obs.shared_tracker(root, parent_run_id)  # one per sweep run: the store is checked once
    tags = {**obs.stage_tags(root, "distill", meta), "kdprune.role": "student", "method": manifest["method"],
            "manifest_sha256": record["manifest_sha256"], "dvc.manifest_md5": md5_file(mpath),
            **({"kdprune.sweep_run_id": parent_run_id} if parent_run_id else {}),
            **obs.run_color(manifest["method"], params["select"]["methods"]), **node_tags(res["node"])}
    run_params = {**{k: v for k, v in record.items() if k not in RESULT_KEYS}, "student": sp}
    sdir = Path(out_dir) / variant["name"]
    c, h, _ = meta["shape"]
    model = model_from_state(sp["arch"], c, meta["num_classes"], h, res["state"])
    save_model(sdir, model, {"arch": sp["arch"], "in_channels": c, "num_classes": meta["num_classes"],
                             "image_size": h, "dataset": meta["dataset"], "dataset_sha256": meta["sha256"],
                             "compute": task_compute(params, res["node"])})
    # no timings or run ids: a DVC out is byte-reproducible (those go to MLflow and the run record)
    atomic_write_json(sdir / "metrics.json", {**record, "history": stable_history(res["history"])})
    # a top-level run, not a child of the sweep's run: MLflow's runs table and charts show children only
    # under an expanded parent, so nested students cannot be compared side by side (see STUDENTS_VIEW)
    with tr.run(variant["name"], None, tags=tags, params=run_params, wait=False,
                start_ms=int(res["started"] * 1000), end_ms=int(res["ended"] * 1000)) as run_id:
        obs.log_student_data(tr, run_id, mpath, manifest, tags, meta)
        tr.log_history(run_id, res["history"])
        tr.log_metrics(run_id, {"best_val_acc": record["val_acc"], "steps": res["steps"], "wall_s": res["wall_s"],
                                "n_train": record["n_train"], "samples_seen": res["samples_seen"]})
        tr.log_artifact(run_id, mpath, "manifest")
        tr.log_artifact(run_id, sdir / "model.safetensors", "model")
    # where and when it trained: the bench's per-task overhead (task body minus training, gaps between tasks)
    runs = {variant["name"]: {"mlflow_run_id": run_id, "wall_s": res["wall_s"], "task_start": res["started"],
                              "task_end": res["ended"], **res["node"]}}
    for alias in aliases:
        runs[alias["name"]] = {"mlflow_run_id": record_alias(root, tr, params["select"]["methods"], alias, record,
                                                             run_params, res["history"], sdir, Path(out_dir), tags,
                                                             meta),
                               "wall_s": 0.0}
    if tr.summary(wait=False):  # the distill stage's own run end waits for every student's logging
        log.warning(f"student {variant['name']}: {tr.summary(wait=False)}; the model and metrics are on disk in {sdir}")
    log.info(f"student {position} {variant['name']}: n={record['n_train']} steps={res['steps']} "
             f"val_acc {res['val_acc']:.4f} ({res['wall_s']:.1f}s on {res['node']['host']})")
    return {"name": variant["name"], "val_acc": res["val_acc"], "steps": res["steps"], "wall_s": res["wall_s"],
            "runs": runs, "checkpoint": res["checkpoint"], "work_s": res["work_s"]}


# a student's results, logged as metrics rather than params
RESULT_KEYS = ("name", "steps", "best_epoch", "val_acc", "val_loss", "samples_seen", "seen_fraction")


def record_alias(root: Path, tr, methods: list[str], alias: dict, record: dict, run_params: dict, history: list,
                 sdir: Path, out_dir: Path, tags: dict, meta: dict) -> str:
    """Record a student that trains exactly like ``record``'s under its own name, manifest and method;
    returns its MLflow run id."""
    mpath = root / "data" / "manifests" / alias["manifest"]
    m = load_manifest(mpath, meta)
    rec = {**record, "name": alias["name"], "manifest": alias["manifest"], "method": m["method"],
           "selection_seed": m["seed"], "same_training_as": record["name"], "manifest_sha256": sha256_file(mpath)}
    adir = out_dir / alias["name"]
    adir.mkdir(parents=True, exist_ok=True)
    for f in ("model.safetensors", "model.json"):
        shutil.copyfile(sdir / f, adir / f)
    atags = {**tags, "method": m["method"], "manifest_sha256": rec["manifest_sha256"], "dvc.manifest_md5": md5_file(mpath),
             "kdprune.same_training_as": record["name"], **observer().run_color(m["method"], methods)}
    same = {k: rec[k] for k in ("manifest", "method", "selection_seed", "same_training_as")}
    with tr.run(alias["name"], None, tags=atags, params={**run_params, **same}, wait=False) as run_id:
        observer().log_student_data(tr, run_id, mpath, m, atags, meta)
        atomic_write_json(adir / "metrics.json", {**rec, "history": stable_history(history)})
        tr.log_history(run_id, history)
        tr.log_metrics(run_id, {"best_val_acc": rec["val_acc"], "steps": rec["steps"], "wall_s": 0.0,
                                "n_train": rec["n_train"], "samples_seen": rec["samples_seen"]})
    return run_id
