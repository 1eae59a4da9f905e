from pathlib import Path
from typing import Optional

from prefect import flow

from kdprune.device import resolve_device
from artifacts.stages import load_prepared
from execution.params import load_params
from execution.observe import observer, work_seconds
from execution.runner import fan_out, run_tasks, share
from tasks.scores import check_dynamics, clear_proxies, compute_scores, keep_proxy, proxy_jobs, proxy_workdir, train_proxy


@flow(name="scores")
def scores(root: str = ".", parent_run_id: Optional[str] = None) -> dict:
    """Stage 3: proxy runs on the runner of params.yaml's ``runner`` (their arrays come back to this
    process, which writes them), then one score per example per method."""
    params = load_params(root, "scores")
    root_p = Path(root)
    check_dynamics(root_p, params)  # a score needing logits the teacher did not record: refused before proxies
    workdir = proxy_workdir(root_p, params)
    jobs = proxy_jobs(params)
    proxies = []
    if jobs:
        meta, splits = load_prepared(root_p, params.data.dataset)
        dev = str(resolve_device(params.device))
        inputs = {"meta": meta, "train": share(splits["train"], params), "checkpoints": str(root_p)}
        with observer().progress("scores: proxy runs", len(jobs), "run") as bar:
            proxies = run_tasks(params, dev, train_proxy, [(params, kind, seed, inputs, dev) for kind, seed in jobs],
                                lambda i, res: (bar.update(1), keep_proxy(workdir, res))[1])
    out = compute_scores(root, params, parent_run_id, proxies)
    clear_proxies(workdir, proxies)
    return {**out, "work_s": work_seconds([*proxies, out])}


scores_flow = fan_out(scores, "scores", has_tasks=lambda p: bool(proxy_jobs(p)))
