"""select: scores -> data/manifests/<method>-<fraction>[-<seed>].json (sorted kept sample ids).

Static methods keep a subset chosen once; per-epoch methods (rs2, infobatch) keep every id and
record the sampler, its options and seed, which the distill stage uses to draw each epoch.
Joint selectors (kdprune.selection.joint) read the teacher's features, last-layer gradients,
validation data or the model itself, computed once per stage for all of them; weighted ones
(CRAIG, GradMatch) put per-element loss weights in the manifest. Their cost (seconds, peak
memory, the shared teacher forward) goes to MLflow and to the run record ``.kdprune/runs/select.json`` (not a DVC
output: manifests stay byte-reproducible).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from kdprune.device import resolve_device
from kdprune.scores import SCORES
from kdprune.selection import JOINT, run_joint, select, selector_options
from kdprune.settings import Params
from artifacts.stages import load_prepared, ScoreReader, write_manifest
from artifacts.files import atomic_directory, sha256_file
from execution.observe import observer, timed_work


def manifest_name(stem: str, fraction: float, seed: Optional[int]) -> str:
    return f"{stem}-{fraction:g}" + ("" if seed is None else f"-{seed}") + ".json"


def plan(params: Params) -> list[dict]:
    """Every manifest the params ask for: (method, fraction, seed) with its score file and selector/sampler
    (the select section as validation parsed it)."""
    settings, sp = params.select, params.scores
    out = []
    for m in settings.methods:
        seeds = sp.seeds if m.stochastic else [None]
        for seed in seeds:
            for frac in settings.fractions_of(m):
                stem = f"{m.score}-{seed}" if m.score is not None and SCORES.get(m.score).seeded else m.score
                out.append({"method": m, "fraction": frac, "seed": seed, "score_stem": stem})
    return out


def joint_inputs(root: Path, params: Params, meta: dict, splits: dict, needs: set[str]):
    """The teacher's features / gradients / validation data / model for the joint selectors, once."""
    from kdprune.selection.joint.inputs import model_inputs
    from artifacts.models import device_data, load_model

    device = resolve_device(params.device)
    tdir = Path(root) / "models" / "teacher"
    model, _ = load_model(tdir, device)
    train_d = device_data(meta, splits["train"], device, params)
    val_d = device_data(meta, splits["val"], device, params) if "validation" in needs else None
    inputs = model_inputs(model, train_d, val_d, needs, meta["num_classes"])
    return inputs, sha256_file(tdir / "model.safetensors")


@task(name="select-subsets", cache_policy=NO_CACHE, persist_result=False)
@timed_work
def select_subsets(root: str, params: Params, parent_run_id: Optional[str] = None) -> dict:
    log = get_run_logger()
    root = Path(root)
    meta, splits = load_prepared(root, params.data.dataset)
    train = splits["train"]
    scores_in = ScoreReader(root / "data" / "scores", meta, train)
    out = root / "data" / "manifests"
    obs = observer()
    tr = obs.tracker(root)
    names = []
    settings = params.select  # every method parsed, every option resolved: once, by params validation
    jobs = plan(params)
    joint_opts = {m.joint: settings.options_of(m.joint) for m in settings.methods if m.joint}
    needs = set().union(*(JOINT.get(name).inputs_for(opts) for name, opts in joint_opts.items()))
    inputs, teacher_sha, inputs_cost = None, None, {"seconds": 0.0, "peak_mem_mb": 0.0}
    costs = {}
    with tr.run("select", parent_run_id, tags=obs.stage_tags(root, "select", meta), params={"select": params.section("select")}) as run_id, \
            atomic_directory(out) as tmp:
        if needs:
            with obs.measure_cost() as inputs_cost:
                inputs, teacher_sha = joint_inputs(root, params, meta, splits, needs)
            log.info(f"joint selector inputs ({', '.join(sorted(needs))}) from the teacher: "
                     f"{inputs_cost['seconds']:.2f}s, peak {inputs_cost['peak_mem_mb']:.1f} MiB")
        for job in jobs:
            m, frac, seed = job["method"], job["fraction"], job["seed"]
            base = {"method": m.label, "fraction": frac, "seed": seed, "balanced": m.balanced, "dataset": meta["dataset"],
                    "dataset_sha256": meta["sha256"], "n_total": int(len(train.ids))}
            if m.joint is not None:
                spec, opts = JOINT.get(m.joint), joint_opts[m.joint]
                base["balanced"] = bool(opts.get("balance"))
                with obs.measure_cost() as cost:
                    kept, weights = run_joint(m.joint, train.ids, inputs, frac, seed=seed or 0, options=opts)
                extra = {"selector": m.joint, "selector_options": opts, "sampler": None, "keep": None,
                         "score": None, "score_sha256": None, "score_variant": None,
                         "joint": {"definition": spec.definition, "variant": spec.variant,
                                   "inputs": list(spec.inputs_for(opts)), "model": "teacher",
                                   "model_sha256": teacher_sha}}
                if weights is not None:
                    extra.update(weights=weights.tolist(),
                                 weights_sha256=hashlib.sha256(weights.astype("<f8").tobytes()).hexdigest())
                costs[manifest_name(m.file_stem, frac, seed)] = {
                    "method": m.label, "fraction": frac, "seed": seed, "seconds": cost["seconds"],
                    "peak_mem_mb": cost["peak_mem_mb"], "inputs_s": inputs_cost["seconds"],
                    "inputs_peak_mem_mb": inputs_cost["peak_mem_mb"], "proxy_train_s": 0.0,
                    "total_s": cost["seconds"] + inputs_cost["seconds"], "cost": spec.cost}
            elif m.sampler is not None:
                opts = settings.sampler_options(m, frac)
                kept = train.ids
                extra = {"selector": None, "sampler": {"name": m.sampler, "seed": seed, "options": opts},
                         "keep": None, "score_sha256": None, "score_variant": None}
            else:
                score = scores_in.read(job["score_stem"])
                opts = settings.selector_keywords(m, frac)
                call = dict(opts)
                if m.cut_score is not None:  # the array its cut reads (CCS's), recorded by name and sha256
                    cut = scores_in.read(call.pop("cut_score"))
                    call["cut_scores"], opts["cut_score_sha256"] = cut.values, cut.sha256
                # the balance and count the method's registration rules (recorded as "balanced" and "n")
                takes = selector_options(m.selector)
                call.update({**({"balance": m.balanced} if "balance" in takes else {}),
                             **({"size": m.size(len(train.ids), frac)} if "size" in takes else {})})
                kept = select(m.selector, train.ids, train.y, score.values, frac, seed=seed or 0, **call)
                extra = {"selector": m.selector, "selector_options": opts, "sampler": None, "keep": score.info["keep"],
                         "score": m.score, "score_sha256": score.sha256, "score_variant": score.info["variant"],
                         "score_recipe": score.info.get("proxy_training"),
                         # equal scores: kdprune.selection.static.tie_ranks(ids, seed), class-proportional at the cut
                         "ties": {"order": "seeded random", "seed": seed or 0}}
            name = manifest_name(m.file_stem, frac, seed)
            manifest = write_manifest(tmp / name, {**base, **extra}, kept, train, meta["num_classes"])
            names.append(name)
            what = f"sampler {m.sampler} {opts}" if m.sampler else f"{len(kept)}/{len(train.ids)} kept"
            log.info(f"manifest {name}: {what}, class counts {manifest['class_counts']}")
        metrics = {"manifests": len(names)}
        for name, c in costs.items():
            stem = name[: -len(".json")]
            metrics.update({f"{stem}.seconds": c["seconds"], f"{stem}.peak_mem_mb": c["peak_mem_mb"],
                            f"{stem}.total_s": c["total_s"]})
            log.info(f"joint selection {stem}: {c['seconds']:.2f}s (+{c['inputs_s']:.2f}s teacher forward), "
                     f"peak {c['peak_mem_mb']:.1f} MiB")
        tr.log_metrics(run_id, metrics)
    # volatile figures: beside, never inside, the DVC output (the run record)
    obs.write_record(root, "select", {"mlflow_run_id": run_id, "costs": costs})
    return {"path": str(out), "manifests": names}
