"""scores: teacher dynamics, proxy runs, embeddings -> data/scores/<method>[-<seed>].npy + .json.

What to compute follows from the requested scores' registrations (``kdprune/scores``), never from
their names: the context fields they need (teacher model, embeddings, inputs, proxy runs), whether
they are seeded (one file per seed in ``scores.seeds``) and their options, named under the score in
params (``scores.<score>: {option: value}``) and resolved against the registration.

Proxy runs (short independent trainings for the scores needing ``proxy_logits`` / ``proxy_models``,
subset runs for ``memo_masks``) are their own Prefect tasks so they can run in parallel; their files
live under ``.kdprune/proxies/`` while the stage runs and are removed when it finishes. Each score's
JSON states its definition, variant, keep direction, options and the proxy training it needed; its cost
(seconds, peak memory, proxy training seconds) goes to MLflow and the stage's run record
(``.kdprune/runs/scores.json``), not into the DVC out.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from kdprune.device import resolve_device
from kdprune.models import build_model
from kdprune.scores import SCORES, ScoreContext, ScoreSpec
from kdprune.settings import Params, ScoresSettings
from kdprune.train import predict_logits, seeded, train
from artifacts.stages import dynamics_kind, load_prepared, read_dynamics, read_dynamics_stats, ScoreWriter
from artifacts.checkpoints import checkpoint_root, FileCheckpoint, fingerprint
from artifacts.files import atomic_directory, atomic_save_npy, atomic_write_bytes, atomic_write_json, load_json, load_npy
from execution.params import inside
from execution.observe import observer, timed_work
from artifacts.models import device_data, load_model, model_from_state, state_arrays, state_tensors
from execution.runner import task_device, where
from kdprune.train import train_config


def requested(sp: ScoresSettings) -> dict[str, tuple[ScoreSpec, dict]]:
    """Each score of scores.methods: its registration and its options (resolved by params validation)."""
    return {method: (SCORES.get(method), sp.options_of(method)) for method in sp.methods}


# the file of a proxy's weights snapshot, read by the scores that declare ``proxy_models`` in their needs
PROXY_WEIGHTS = "weights"


def proxy_reads(sp: ScoresSettings) -> dict:
    """What the proxy runs must record for the requested scores: the epochs their logits are read at
    (each ``proxy_logits`` score's input option ``epoch``) and the epoch their weights are taken at
    (``weights_at``: scores.grand_epoch when a score declares ``proxy_models``, else None)."""
    scores = requested(sp).values()
    return {"logit_epochs": sorted({o["epoch"] for s, o in scores if "proxy_logits" in s.needs}),
            "weights_at": sp.grand_epoch if any("proxy_models" in s.needs for s, _ in scores) else None}


def proxy_workdir(root: Path, params: Params) -> Path:
    key = fingerprint(params.section("scores"), params.section("teacher"), params.section("data"), params.device,
                      PROXY_WEIGHTS)
    return Path(root) / ".kdprune" / "proxies" / key


def proxy_jobs(params: Params) -> list[tuple[str, int]]:
    """The proxy trainings the requested scores need: ("proxy", seed) and ("memo", model index)."""
    sp = params.scores
    kinds = set().union(*(spec.proxies for spec, _ in requested(sp).values()))
    jobs = []
    if "proxy" in kinds:
        jobs += [("proxy", s) for s in sp.proxy_seeds]
    if "memo" in kinds:
        jobs += [("memo", m) for m in range(sp.memorization_models)]
    return jobs


@task(name="train-proxy", cache_policy=NO_CACHE, persist_result=False, retries=1,
      task_run_name="{kind}-{seed}")
@timed_work
def train_proxy(params: Params, kind: str, seed: int, inputs: dict, device: str) -> dict:
    """One proxy training, wherever the runner placed it; returns what the scores read (the stage's
    process writes it: :func:`keep_proxy`). ``proxy``: full train split for scores.proxy_epochs,
    recording what the scores read (:func:`proxy_reads`): the weights at scores.grand_epoch and the
    logits at each read epoch. ``memo``: a random
    scores.memorization_fraction subset, then which training examples the final model classifies correctly."""
    log = get_run_logger()
    sp, tp = params.scores, params.teacher
    dev = task_device(params, device)
    meta = inputs["meta"]
    train_d = device_data(meta, inputs["train"], dev, params)
    c, h, _ = meta["shape"]
    arch = sp.proxy_arch or tp.arch
    with seeded(1000 + seed):
        model = build_model(arch, c, meta["num_classes"], h)
    files: dict[str, np.ndarray | dict] = {}
    info = {"arch": arch, "in_channels": c, "num_classes": meta["num_classes"], "image_size": h}
    ckpt_root = checkpoint_root(inputs["checkpoints"])
    t0 = time.perf_counter()
    if kind == "proxy":
        reads = proxy_reads(sp)
        wanted = set() if reads["weights_at"] is None else {PROXY_WEIGHTS}
        wanted |= {f"logits-{e}" for e in reads["logit_epochs"]}

        def keep_weights(tag: str) -> None:
            files[tag] = state_arrays(model)

        if reads["weights_at"] == 0:  # at initialisation
            keep_weights(PROXY_WEIGHTS)

        def at_epoch(e: int, _m: dict) -> None:
            if e == reads["weights_at"]:
                keep_weights(PROXY_WEIGHTS)
            if e in reads["logit_epochs"]:  # a read point: a clean eval-mode pass over the train split
                files[f"logits-{e}"] = predict_logits(model, train_d).cpu().numpy()

        # the teacher's full schedule (its LR curve), stopped after proxy_epochs: read early in a full run
        cfg = train_config(tp, order_seed=1000 + seed, aug_seed=1000 + seed, stop_after=sp.proxy_epochs)
        ckpt = FileCheckpoint(ckpt_root, "scores", f"proxy-{seed}",
                              fingerprint(cfg.__dict__, arch, meta["sha256"], params.runner.cpus_per_task,
                                          params.reproducibility.cpu), log)
        train(model, train_d, cfg, checkpoint=ckpt, on_epoch=at_epoch)
        if ckpt.resumed_from and not (wanted <= set(files)):
            # resumed past a read point: its arrays were in the killed attempt's memory; train afresh
            ckpt.clear()
            return train_proxy.fn(params, kind, seed, inputs, device)
    else:
        rng = np.random.default_rng([seed, 7])
        n = len(train_d)
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[: int(round(sp.memorization_fraction * n))]] = True
        cfg = train_config(tp, epochs=sp.memorization_epochs, order_seed=2000 + seed, aug_seed=2000 + seed)
        ckpt = FileCheckpoint(ckpt_root, "scores", f"memo-{seed}",
                              fingerprint(cfg.__dict__, arch, meta["sha256"], params.runner.cpus_per_task,
                                          params.reproducibility.cpu), log)
        train(model, train_d, cfg, subset=torch.from_numpy(np.flatnonzero(mask)), checkpoint=ckpt)
        files["mask"] = mask
        files["correct"] = (predict_logits(model, train_d).argmax(1) == train_d.y).cpu().numpy()
    secs = time.perf_counter() - t0
    log.info(f"{kind} run {seed}: {arch}, {cfg.epochs} epochs, {secs:.1f}s")
    return {"kind": kind, "seed": seed, "files": files, "info": info, "seconds": secs, "checkpoint": str(ckpt.path),
            "node": where()}


def keep_proxy(workdir: Path, res: dict) -> dict:
    """In the stage's process: a proxy's arrays under ``workdir/<kind>-<seed>/``, where the scores read them."""
    from safetensors.torch import save

    out = Path(workdir) / f"{res['kind']}-{res['seed']}"
    out.mkdir(parents=True, exist_ok=True)
    for name, value in res["files"].items():
        if isinstance(value, dict):  # weights
            atomic_write_bytes(out / f"{name}.safetensors", save(state_tensors(value)))
        else:
            atomic_save_npy(out / f"{name}.npy", value)
    atomic_write_json(out / "info.json", {**res["info"], "seconds": res["seconds"], "checkpoint": res["checkpoint"]})
    return {"path": str(out), "seconds": res["seconds"], "kind": res["kind"], "checkpoint": res["checkpoint"],
            "work_s": res["work_s"], **res["node"]}


def _proxy_model(d: Path, device):
    from safetensors.torch import load

    info = load_json(d / "info.json")
    model = model_from_state(info["arch"], info["in_channels"], info["num_classes"], info["image_size"],
                             load((d / f"{PROXY_WEIGHTS}.safetensors").read_bytes()))
    return model.to(device).eval()


def dynamics_reads(sp: ScoresSettings) -> tuple[list[str], set[str]]:
    """Of the requested scores: those that read the teacher's full logits (they declare no statistics),
    and the dynamics statistics the others read."""
    logits, stats = [], set()
    for method, (spec, _) in requested(sp).items():
        if spec.needs_logits:
            logits.append(method)
        elif "dynamics" in spec.needs:
            stats |= set(spec.stats)
    return logits, stats


def check_dynamics(root: Path, params: Params) -> None:
    """Before any compute: refuse a score needing the full logits when the teacher recorded statistics
    (teacher.dynamics: stats, or auto on a dataset whose logits are too big), naming it."""
    logits, _ = dynamics_reads(params.scores)
    if logits and dynamics_kind(Path(root) / "models" / "teacher") == "stats":
        raise ValueError(f"scores.methods: {', '.join(logits)} need the teacher's full logits (no per-example "
                         f"statistics declared), but the teacher recorded statistics (teacher.dynamics: "
                         f"{params.teacher.dynamics}); set teacher.dynamics: logits and re-run the teacher, or "
                         "drop them from scores.methods")


def build_context(root: Path, params: Params, meta: dict, splits: dict, proxies: list[dict], device
                  ) -> tuple[ScoreContext, dict[int, list[np.ndarray]]]:
    """Everything the requested scores read, computed once: only the fields some score needs (or
    prefers); and the proxies' logits by read epoch (``ctx.proxy_logits`` is set per score)."""
    sp = params.scores
    train = splits["train"]
    specs = [spec for spec, _ in requested(sp).values()]
    needs = set().union(*(set(s.needs) | set(s.prefers) for s in specs))
    ctx = ScoreContext(ids=train.ids, labels=train.y, num_classes=meta["num_classes"])
    teacher_dir = Path(root) / "models" / "teacher"
    check_dynamics(root, params)
    if dynamics_kind(teacher_dir) == "logits":  # every score computes from the full logits
        ctx.dynamics = read_dynamics(teacher_dir, train)
    else:  # only the statistics the requested scores declare, memory-mapped
        ctx.stats = read_dynamics_stats(teacher_dir, train, sorted(dynamics_reads(sp)[1]))
    train_d = None
    if {"final_logits", "embeddings", "inputs"} & needs:
        train_d = device_data(meta, train, device, params)
    if "final_logits" in needs:  # the teacher in eval mode
        teacher, _ = load_model(Path(root) / "models" / "teacher", device)
        ctx.final_logits = predict_logits(teacher, train_d).cpu().numpy()
    if "embeddings" in needs:
        enc_dir = inside(root, sp.encoder) if sp.encoder else Path(root) / "models" / "teacher"
        encoder, _ = load_model(enc_dir, device)
        ctx.embeddings = predict_logits(encoder, train_d, features=True).cpu().numpy()
    if "inputs" in needs:
        ctx.inputs = train_d.normalise(train_d.x)
    pdirs = [Path(p["path"]) for p in proxies if p["kind"] == "proxy"]
    logits_at = {e: [load_npy(d / f"logits-{e}.npy") for d in pdirs] for e in proxy_reads(sp)["logit_epochs"]}
    if "proxy_models" in needs:
        ctx.proxy_models = [_proxy_model(d, device) for d in pdirs]
    mdirs = [Path(p["path"]) for p in proxies if p["kind"] == "memo"]
    if "memo_masks" in needs:
        ctx.memo_masks = np.stack([load_npy(d / "mask.npy") for d in mdirs])
        ctx.memo_correct = np.stack([np.load(d / "correct.npy") for d in mdirs])
    return ctx, logits_at


def recipe(spec: ScoreSpec, opts: dict, params: Params) -> Optional[dict]:
    """The proxy training a score's values came from (its JSON's ``proxy_training``), or None."""
    sp = params.scores
    if "proxy" in spec.proxies:
        out = {"runs": len(sp.proxy_seeds), "epochs": sp.proxy_epochs, "schedule_epochs": params.teacher.epochs}
        if "proxy_logits" in spec.needs:
            out.update(read_at_epoch=opts["epoch"], **{"pass": "eval mode, clean inputs"})
        if "proxy_models" in spec.needs:
            out["at_epoch"] = proxy_reads(sp)["weights_at"]
        return out
    if "memo" in spec.proxies:
        return {"runs": sp.memorization_models, "epochs": sp.memorization_epochs}
    return None


@task(name="compute-scores", cache_policy=NO_CACHE, persist_result=False)
@timed_work
def compute_scores(root: str, params: Params, parent_run_id: Optional[str] = None,
                   proxies: Optional[list[dict]] = None) -> dict:
    log = get_run_logger()
    root = Path(root)
    sp = params.scores
    proxies = proxies or []
    device = resolve_device(params.device)
    meta, splits = load_prepared(root, params.data.dataset)
    train = splits["train"]
    proxy_s = {k: sum(p["seconds"] for p in proxies if p["kind"] == k) for k in ("proxy", "memo")}
    out = root / "data" / "scores"
    obs = observer()
    tr = obs.tracker(root)
    index, costs = [], {}
    with tr.run("scores", parent_run_id, tags=obs.stage_tags(root, "scores", meta), params={"scores": sp}) as run_id, \
            atomic_directory(out) as tmp:
        ctx, logits_at = build_context(root, params, meta, splits, proxies, device)
        files = ScoreWriter(tmp, train.ids, meta)
        for method, (spec, opts) in requested(sp).items():
            ctx.proxy_logits = logits_at[opts["epoch"]] if "proxy_logits" in spec.needs else None
            for seed in (sp.seeds if spec.seeded else [None]):
                ctx.seed = 0 if seed is None else seed
                with obs.measure_cost() as cost:
                    values = spec(ctx, **spec.fn_options(opts))
                stem = method if seed is None else f"{method}-{seed}"
                proxy_cost = sum(proxy_s[k] for k in spec.proxies)
                # the cost differs from run to run: MLflow and the run record, not this DVC out
                files.write(stem, values, {
                    "method": method, "seed": seed, "keep": spec.keep, "definition": spec.definition,
                    "variant": spec.variant, "options": opts, "proxy_training": recipe(spec, opts, params),
                    "stats": {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean())},
                })
                costs[stem] = {"method": method, "seconds": cost["seconds"], "peak_mem_mb": cost["peak_mem_mb"],
                               "proxy_train_s": proxy_cost, "total_s": cost["seconds"] + proxy_cost}
                index.append({"file": f"{stem}.npy", "method": method, "seed": seed})
                tr.log_metrics(run_id, {f"{stem}.seconds": cost["seconds"], f"{stem}.peak_mem_mb": cost["peak_mem_mb"],
                                        f"{stem}.total_s": costs[stem]["total_s"]})
                log.info(f"score {stem}: {cost['seconds'] * 1000:.1f} ms (+{proxy_cost:.1f}s proxy training), "
                         f"peak {cost['peak_mem_mb']:.1f} MiB, range [{values.min():.3g}, {values.max():.3g}]")
        atomic_write_json(tmp / "index.json", index)
    obs.write_record(root, "scores", {"mlflow_run_id": run_id, "costs": costs})
    return {"path": str(out), "scores": [e["file"] for e in index]}


def clear_proxies(workdir: Path, proxies: list[dict]) -> None:
    """After the stage's outputs are in place: drop proxy files and their checkpoints."""
    for p in proxies:
        Path(p["checkpoint"]).unlink(missing_ok=True)
    shutil.rmtree(workdir, ignore_errors=True)
