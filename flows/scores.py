from pathlib import Path
from typing import Optional

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from kdprune.device import device_count
from tasks.common import load_params, work_seconds
from tasks.scores import clear_proxies, compute_scores, proxy_jobs, proxy_workdir, train_proxy


@flow(name="scores", task_runner=ThreadPoolTaskRunner(max_workers=device_count("auto")))
def scores_flow(root: str = ".", parent_run_id: Optional[str] = None) -> dict:
    """Stage 3: proxy runs (in parallel up to the devices present), then one score per example per method."""
    params = load_params(root, "scores")
    workdir = proxy_workdir(Path(root), params)
    futures = [train_proxy.submit(root, params, kind, seed, str(workdir)) for kind, seed in proxy_jobs(params)]
    proxies = [f.result() for f in futures]
    out = compute_scores(root, params, parent_run_id, proxies)
    clear_proxies(workdir, proxies)
    return {**out, "work_s": work_seconds([*proxies, out])}
