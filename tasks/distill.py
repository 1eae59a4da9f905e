"""distill: one student per (manifest, KD setting, seed) -> models/students/<name>/ (weights, metrics and
the training key).

The stage reads its inputs once (prepared data, every manifest, the teachers' facts), plans the students
with the core (:mod:`kdprune.train.plan`), and trains only those whose training key no earlier student
has: a student whose inputs did not change (manifest, teacher, its settings, the stage's code) is copied
from the workspace's models/students or from the DVC cache (:mod:`artifacts.reuse`), byte for byte what
training it would give, whatever else in the stage changed.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from kdprune.models import build_model
from kdprune.reproducibility import provenance
from kdprune.selection import make_sampler
from kdprune.train import evaluate, predict_logits, seeded, train, train_config
from kdprune.distill import kd_record
from kdprune.train.plan import Student, student_budget, training_inputs, training_key
from artifacts.stages import load_manifest
from artifacts.checkpoints import checkpoint_root, fault_point, FileCheckpoint
from artifacts.files import atomic_write_json, load_json, md5_file, sha256_file
from artifacts.models import device_data, load_model, model_from_state, save_model, state_arrays
from artifacts.outputs import stable_history
from artifacts.reuse import KEY_FILE, Earlier, write_key
from execution.observe import observer, timed_work
from execution.runner import node_tags, share, task_compute, task_device, where
from tasks.teachers import teacher_dir

MODEL_FILES = ("model.safetensors", "model.json")
# what a student's training gives besides its weights: kept in its key file, so a reused student's
# records are rebuilt exactly as its training would have written them
RESULT_FIELDS = ("loss", "teacher_logits", "n_train", "epochs", "weighted", "steps", "best_epoch", "val_acc", "val_loss",
                 "samples_seen", "history")


@dataclass(frozen=True)
class ManifestFile:
    """A manifest as the stage read it, once: parsed and verified, with its file's hashes."""

    path: Path
    manifest: dict
    sha256: str
    md5: str


@dataclass(frozen=True)
class Stage:
    """What every student's record reads, read once by the stage: the params, the prepared data's meta and
    train split size, the manifests (file name -> :class:`ManifestFile`), the teachers' facts
    (:func:`teacher_facts`), and per student its training inputs and key."""

    root: Path
    params: dict
    meta: dict
    n_train: int
    manifests: dict[str, ManifestFile]
    teachers: dict[str, dict]
    inputs: dict[str, dict]
    keys: dict[str, str]


def read_manifests(root: Path, meta: dict, train_ids: np.ndarray) -> dict[str, ManifestFile]:
    """Every manifest under data/manifests, read and verified once (ids, fields, dataset hash, ids in the
    train split), by file name."""
    out = {}
    for mf in sorted((Path(root) / "data" / "manifests").glob("*.json")):
        out[mf.name] = ManifestFile(mf, load_manifest(mf, meta, train_ids), sha256_file(mf), md5_file(mf))
    return out


def teacher_facts(root: Path, params: dict) -> dict[str, dict]:
    """Per teacher architecture, what a student's record says of it: model.json and the weights'
    sha256 (read once per stage, not once per student)."""
    out = {}
    for arch in [params.teacher.arch, *params.student.teachers]:
        tdir = teacher_dir(root, params, arch)
        if (tdir / "model.json").exists():
            out[arch] = {"info": load_json(tdir / "model.json"),
                         "sha256": sha256_file(tdir / "model.safetensors")}
    return out


def compute_facts(params: dict, device: torch.device) -> dict:
    """The compute a student's bytes depend on: the CPU setting, the tasks' thread count and the torch
    release (as model.json records them), and the device kind (with the GPU's name on CUDA)."""
    facts = {**provenance(params.reproducibility.cpu, params.runner.cpus_per_task), "device": device.type}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def plan_keys(students: list[Student], manifests: dict[str, ManifestFile], params: dict, meta: dict, n_train: int,
              teachers: dict[str, dict], code: str, compute: dict) -> tuple[dict[str, dict], dict[str, str]]:
    """Per student name, its training inputs (:func:`kdprune.train.plan.training_inputs`) and their key."""
    inputs = {s.name: training_inputs(s, manifests[s.manifest].manifest, params.student, n_total=n_train,
                                      dataset_sha256=meta["sha256"], code_sha256=code, compute=compute,
                                      teacher_sha256=None if s.kd is None else teachers[s.kd.teacher]["sha256"])
              for s in students}
    return inputs, {name: training_key(i) for name, i in inputs.items()}


def student_checkpoint(root: Path, student: Student, key: str, log=None) -> FileCheckpoint:
    """Where a student's per-epoch state lives, on the node that trains it (kept until the whole
    distill stage has finished): the project's .kdprune/checkpoints where that directory can be
    written, else the node's temp directory; a retried task on the same node resumes from it. Its key
    is the student's training key: a state saved under other inputs is never resumed."""
    return FileCheckpoint(checkpoint_root(root), "distill", student.name, key[:16], log)


def student_inputs(root: Path, params: dict, students: list[Student], manifests: dict[str, ManifestFile], meta: dict,
                   splits: dict, device: torch.device) -> dict:
    """What every student task reads, loaded once by the stage: the prepared train and val splits,
    the manifests (ids, weights, sampler), each teacher's weights, and each teacher's logits on the
    training split when students use cached logits. Under Ray each goes into the object store once
    (:func:`execution.runner.share`), so a task on another node needs no shared filesystem."""
    teachers, logits = {}, {}
    for arch in dict.fromkeys(s.kd.teacher for s in students if s.kd is not None):
        model, info = load_model(teacher_dir(root, params, arch), device)
        teachers[arch] = share({"state": state_arrays(model), "info": info}, params)
        if params.student.cached_logits:  # computed once here, for every student of this teacher
            logits[arch] = share(predict_logits(model, device_data(meta, splits["train"], device, params), batch_size=512)
                                 .cpu().numpy(), params)
    return {"meta": meta, "train": share(splits["train"], params), "val": share(splits["val"], params),
            "manifests": {k: share(manifests[k].manifest, params) for k in dict.fromkeys(s.manifest for s in students)},
            "teachers": teachers, "logits": logits, "checkpoints": str(root)}


@task(name="train-student", cache_policy=NO_CACHE, persist_result=False, retries=1,
      task_run_name="student-{student.name}")
@timed_work
def train_student(params: dict, student: Student, key: str, inputs: dict, device: str) -> dict:
    """Train one student wherever the runner placed this task; returns its weights, best-epoch
    metrics and history with the node it ran on. Writes nothing but its per-epoch checkpoint:
    the stage's process records the result (:func:`record_student`)."""
    log = get_run_logger()
    started = time.time()
    st = params.student
    kd = student.kd
    dev = task_device(params, device)
    meta = inputs["meta"]
    manifest = inputs["manifests"][student.manifest]
    train_split = inputs["train"]
    subset = torch.from_numpy(train_split.positions(np.asarray(manifest["ids"], dtype=np.int64)))
    c, h, _ = meta["shape"]
    train_d, val_d = device_data(meta, train_split, dev, params), device_data(meta, inputs["val"], dev, params)
    teacher, t_logits = None, None
    if kd is not None and kd.teacher in inputs["logits"]:
        t_logits = torch.tensor(inputs["logits"][kd.teacher])  # a copy: Ray's object store is read-only
    elif kd is not None:
        t = inputs["teachers"][kd.teacher]
        teacher = model_from_state(t["info"]["arch"], t["info"]["in_channels"], t["info"]["num_classes"],
                                   t["info"]["image_size"], t["state"]).to(dev).eval()
    with seeded(student.seed):
        model = build_model(st.arch, c, meta["num_classes"], h)
    epochs, max_steps = student_budget(st, n_total=len(train_split), manifest=manifest, n_pool=int(subset.numel()))
    # order/augmentation seeds are the student seed: every subset of one seed sees the same
    # per-example augmentations as the full run of that seed would
    cfg = train_config(st, epochs=epochs, order_seed=student.seed, aug_seed=student.seed, max_steps=max_steps)
    weights = manifest.get("weights")
    weights = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    sampler = None
    if manifest.get("sampler"):
        s = manifest["sampler"]
        sampler = make_sampler(s["name"], int(subset.numel()), epochs, seed=s["seed"] or 0, **s["options"])
    ckpt = student_checkpoint(Path(inputs["checkpoints"]), student, key, log)
    res = train(model, train_d, cfg, subset=subset, val=val_d, teacher=teacher, teacher_logits=t_logits,
                checkpoint=ckpt, sampler=sampler, sample_weights=weights, kd=kd,
                on_epoch=lambda epoch, m: (observer().note(f"{student.name} epoch {epoch}/{epochs}"),
                                           fault_point(inputs["checkpoints"], "distill", epoch)))
    model.load_state_dict(res.best_state)
    val = evaluate(model, val_d)
    return {"name": student.name, "state": state_arrays(model),
            "history": res.history, "val_acc": val["acc"], "val_loss": val["loss"], "steps": res.steps,
            "best_epoch": res.best_epoch, "samples_seen": res.samples_seen, "epochs": epochs,
            "teacher_logits": "cached" if t_logits is not None else "live" if kd is not None else "none",
            "loss": student.loss, "weighted": weights is not None, "n_train": int(subset.numel()), "wall_s": res.seconds,
            "started": started, "ended": time.time(), "node": where(), "checkpoint": str(ckpt.path)}


def reused_result(earlier: Earlier) -> dict:
    """A task result for a student reused from ``earlier`` (whose files are already in place): its
    training's result from the key file, no training seconds, this process as its node."""
    now = time.time()
    return {**earlier.result, "wall_s": 0.0, "started": now, "ended": now, "node": where(),
            "checkpoint": None, "work_s": 0.0, "reused_from": earlier.where}


def student_record(stage: Stage, student: Student, res: dict) -> dict:
    """A student's metrics.json (without its history): who it is, how it trained, its best-epoch results."""
    st = stage.params.student
    mf = stage.manifests[student.manifest]
    m = mf.manifest
    kd = student.kd
    tinfo = stage.teachers[stage.params.teacher.arch if kd is None else kd.teacher]["info"]
    kd_fields = kd_record(kd)
    return {
        "name": student.name, "manifest": student.manifest, "method": m["method"],
        "fraction": m["fraction"], "selection_seed": m["seed"], "seed": student.seed,
        "kd": kd_fields["kd"], "loss": res["loss"], "kd_weight": kd_fields["kd_weight"],
        "kd_schedule": kd_fields["kd_schedule"], "kd_setting": kd_fields["kd_setting"],
        "temperature": kd_fields["temperature"], "teacher_logits": res["teacher_logits"],
        "teacher_arch": tinfo["arch"], "teacher_params": tinfo.get("n_params"), "student_arch": st.arch,
        "dataset": stage.meta["dataset"], "manifest_sha256": mf.sha256,
        "teacher_sha256": None if kd is None else stage.teachers[kd.teacher]["sha256"],
        "n_train": res["n_train"], "epochs": res["epochs"], "budget": st.budget,
        "sampler": (m.get("sampler") or {}).get("name"), "balanced": m.get("balanced"),
        "weighted": res["weighted"], "steps": res["steps"], "best_epoch": res["best_epoch"],
        "val_acc": res["val_acc"], "val_loss": res["val_loss"], "samples_seen": res["samples_seen"],
        "seen_fraction": res["samples_seen"] / (st.epochs * stage.n_train),
    }


def record_student(stage: Stage, student: Student, aliases: tuple, res: dict, out_dir: Path,
                   parent_run_id: Optional[str], position: str = "") -> dict:
    """In the stage's process: write a student's model, key file and metrics under ``out_dir`` and its
    MLflow run (one per student, created here, so a retried or killed task never leaves a second
    one), plus the runs of its ``aliases`` (students with identical training). ``res``: a training
    task's result, or :func:`reused_result` of an earlier student whose files are already copied into
    ``out_dir``. Returns the task index entry."""
    log = get_run_logger()
    params, meta = stage.params, stage.meta
    st = params.student
    mf = stage.manifests[student.manifest]
    reused = res.get("reused_from")
    sdir = Path(out_dir) / student.name
    if not reused:
        c, h, _ = meta["shape"]
        model = model_from_state(st.arch, c, meta["num_classes"], h, res["state"])
        save_model(sdir, model, {"arch": st.arch, "in_channels": c, "num_classes": meta["num_classes"],
                                 "image_size": h, "dataset": meta["dataset"], "dataset_sha256": meta["sha256"],
                                 "compute": task_compute(params, res["node"])})
        result = {k: res[k] for k in RESULT_FIELDS if k != "history"} | {"history": stable_history(res["history"])}
        write_key(sdir, stage.keys[student.name], stage.inputs[student.name], result, MODEL_FILES)
    record = student_record(stage, student, res)
    # no timings or run ids: a DVC out is byte-reproducible (those go to MLflow and the run record)
    atomic_write_json(sdir / "metrics.json", {**record, "history": stable_history(res["history"])})
    obs = observer()
    tr = obs.shared_tracker(stage.root, parent_run_id)  # one per sweep run: the store is checked once
    tags = {**obs.stage_tags(stage.root, "distill", meta), "kdprune.role": "student", "method": record["method"],
            "manifest_sha256": mf.sha256, "dvc.manifest_md5": mf.md5,
            **({"kdprune.sweep_run_id": parent_run_id} if parent_run_id else {}),
            **({"kdprune.reused_from": reused} if reused else {}),
            **obs.run_color(record["method"], params.select.labels), **node_tags(res["node"])}
    run_params = {**{k: v for k, v in record.items() if k not in RESULT_KEYS}, "student": params.section("student")}
    # a top-level run, not a child of the sweep's run: MLflow's runs table and charts show children only
    # under an expanded parent, so nested students cannot be compared side by side (see STUDENTS_VIEW)
    with tr.run(student.name, None, tags=tags, params=run_params, wait=False,
                start_ms=int(res["started"] * 1000), end_ms=int(res["ended"] * 1000)) as run_id:
        obs.log_student_data(tr, run_id, mf.path, mf.manifest, tags, meta)
        tr.log_history(run_id, res["history"])
        tr.log_metrics(run_id, {"best_val_acc": record["val_acc"], "steps": res["steps"], "wall_s": res["wall_s"],
                                "n_train": record["n_train"], "samples_seen": res["samples_seen"]})
        tr.log_artifact(run_id, mf.path, "manifest")
        tr.log_artifact(run_id, sdir / "model.safetensors", "model")
    # where and when it trained (the bench's per-task overhead), or where it was reused from: the run record
    runs = {student.name: {"mlflow_run_id": run_id, "wall_s": res["wall_s"], "task_start": res["started"],
                           "task_end": res["ended"], "reused": bool(reused), "reused_from": reused or "",
                           **res["node"]}}
    for alias in aliases:
        runs[alias.name] = {"mlflow_run_id": record_alias(stage, tr, alias, record, run_params, res["history"], sdir,
                                                          Path(out_dir), tags),
                            "wall_s": 0.0, "reused": bool(reused), "reused_from": reused or ""}
    if tr.summary(wait=False):  # the distill stage's own run end waits for every student's logging
        log.warning(f"student {student.name}: {tr.summary(wait=False)}; the model and metrics are on disk in {sdir}")
    if reused:
        log.info(f"student {position} {student.name}: reused from {reused} (inputs unchanged), "
                 f"val_acc {res['val_acc']:.4f}")
    else:
        log.info(f"student {position} {student.name}: n={record['n_train']} steps={res['steps']} "
                 f"val_acc {res['val_acc']:.4f} ({res['wall_s']:.1f}s on {res['node']['host']})")
    return {"name": student.name, "val_acc": res["val_acc"], "steps": res["steps"], "wall_s": res["wall_s"],
            "runs": runs, "checkpoint": res["checkpoint"], "work_s": res["work_s"]}


# a student's results, logged as metrics rather than params
RESULT_KEYS = ("name", "steps", "best_epoch", "val_acc", "val_loss", "samples_seen", "seen_fraction")


def record_alias(stage: Stage, tr, alias: Student, record: dict, run_params: dict, history: list, sdir: Path,
                 out_dir: Path, tags: dict) -> str:
    """Record a student that trains exactly like ``record``'s under its own name, manifest and method;
    returns its MLflow run id."""
    mf = stage.manifests[alias.manifest]
    m = mf.manifest
    rec = {**record, "name": alias.name, "manifest": alias.manifest, "method": m["method"],
           "selection_seed": m["seed"], "same_training_as": record["name"], "manifest_sha256": mf.sha256}
    adir = out_dir / alias.name
    adir.mkdir(parents=True, exist_ok=True)
    for f in (*MODEL_FILES, KEY_FILE):
        shutil.copyfile(sdir / f, adir / f)
    atags = {**tags, "method": m["method"], "manifest_sha256": mf.sha256, "dvc.manifest_md5": mf.md5,
             "kdprune.same_training_as": record["name"],
             **observer().run_color(m["method"], stage.params.select.labels)}
    same = {k: rec[k] for k in ("manifest", "method", "selection_seed", "same_training_as")}
    with tr.run(alias.name, None, tags=atags, params={**run_params, **same}, wait=False) as run_id:
        observer().log_student_data(tr, run_id, mf.path, m, atags, stage.meta)
        atomic_write_json(adir / "metrics.json", {**rec, "history": stable_history(history)})
        tr.log_history(run_id, history)
        tr.log_metrics(run_id, {"best_val_acc": rec["val_acc"], "steps": rec["steps"], "wall_s": 0.0,
                                "n_train": rec["n_train"], "samples_seen": rec["samples_seen"]})
    return run_id
