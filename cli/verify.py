"""``kdprune verify`` (``make verify``): does a re-run reproduce the committed results?

Re-runs the pipeline from nothing in a scratch copy of the project (its code, dvc.yaml and params.yaml
as they are here; its own DVC, MLflow store and Prefect server), or takes another run's project
directory (``--from DIR``), and compares every cell of the committed ``reports/metrics.json`` with the
re-run's (kdprune/agreement.py): equal bytes where the re-run reproduced the committed models (the
portable setting on an x86-64 CPU with AVX2), else within what seed-to-seed variation explains. Prints
the table, writes it to ``reports/verify.json`` and ``reports/verify.md``, logs them to MLflow, says which
claims' verdicts changed, and exits 1 when a cell is outside what noise explains (0 when all agree).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from servers.runtime import free_port, project_root

# what the re-run needs of the project: its code, its pipeline and its params (not its outputs)
COPY = ["kdprune", "artifacts", "execution", "tasks", "flows", "tracking", "telemetry", "servers", "cli", "profiles", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"]
MODEL_OUTS = ("models/teacher", "models/teachers", "models/students")


def _outs(lock_path: Path) -> dict[str, str]:
    if not lock_path.exists():
        return {}
    lock = yaml.safe_load(lock_path.read_text()) or {}
    return {o["path"]: o.get("md5") for st in (lock.get("stages") or {}).values() for o in st.get("outs", []) or []}


def _read(run: Path) -> tuple[dict, list[dict], dict]:
    import csv

    reports = run / "reports"
    metrics_path = reports / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} not found: `make run` writes it (the evaluate stage)")
    try:
        metrics = json.loads(metrics_path.read_text())
    except ValueError as e:
        raise ValueError(f"{metrics_path} is not valid JSON ({e}); `git checkout {metrics_path.relative_to(run)}` "
                         "restores the committed one, `dvc repro evaluate` rewrites it") from None
    plot = reports / "plots" / "accuracy.csv"
    rows = list(csv.DictReader(plot.open())) if plot.exists() else []
    claims_path = reports / "claims.json"
    claims = json.loads(claims_path.read_text()) if claims_path.exists() else {}
    return metrics, rows, claims


def scratch_env(port: int) -> dict:
    """This process's environment without kdprune/Prefect/MLflow/DVC settings, on its own Prefect port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "KDPRUNE_", "DVC_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        KDPRUNE_PREFECT_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DVC_NO_ANALYTICS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def scratch_copy(root: Path, dest: Path, env: dict, prepare=None) -> None:
    """The project's code and params (``COPY``) in ``dest`` with a git and DVC repo of its own and its
    MLflow store, as `make setup` leaves a checkout; ``prepare(dest)`` runs before the first commit
    (e.g. to write other params)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    if prepare is not None:
        prepare(dest)
    git = ["git", "-c", "user.email=kdprune@localhost", "-c", "user.name=kdprune"]
    for cmd in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "init"],
                [sys.executable, "-m", "dvc", "init", "-q"], "plots", [sys.executable, "-m", "flows", "init"]):
        if cmd == "plots":  # the plot templates dvc.yaml names, once `dvc init` has made .dvc/
            if (root / ".dvc" / "plots").is_dir():
                shutil.copytree(root / ".dvc" / "plots", dest / ".dvc" / "plots")
            continue
        done = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"setting up the scratch copy in {dest}: `{' '.join(cmd)}` exited {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()[-1500:]}")


def scratch_run(root: Path, dest: Path, timeout_s: float) -> Path:
    """The project's code and params in ``dest`` (``scratch_copy``), and the pipeline run there from
    nothing, its output shown as it goes."""
    env = {**scratch_env(free_port()), "KDPRUNE_ROOT": str(dest)}
    scratch_copy(root, dest, env)
    print(f"[kdprune] verify: re-running the pipeline from nothing in {dest}", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "flows", "pipeline"], cwd=dest, env=env, check=True, timeout=timeout_s)
    finally:
        subprocess.run([sys.executable, "-m", "flows", "stop"], cwd=dest, env=env, capture_output=True, timeout=60)
    return dest


def verify(args) -> int:
    root = project_root()
    keep = None
    try:
        if args.source:
            run = Path(args.source).resolve()
        else:
            keep = Path(tempfile.mkdtemp(prefix="kdprune-verify-"))
            run = scratch_run(root, keep, args.timeout)
        committed, c_rows, c_claims = _read(root)
        rerun, r_rows, r_claims = _read(run)
    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"kdprune: verify: {e}", file=sys.stderr)
        return 3
    report, md = agreement(root, run, (committed, c_rows, c_claims), (rerun, r_rows, r_claims))
    out = root / "reports"
    from artifacts.files import atomic_write_json, atomic_write_text

    atomic_write_json(out / "verify.json", report)
    atomic_write_text(out / "verify.md", md)
    print(md, flush=True)
    _log(root, report)
    if keep is not None and not args.keep:
        shutil.rmtree(keep, ignore_errors=True)
    elif keep is not None:
        print(f"[kdprune] verify: the re-run is kept in {keep}")
    bad = report["outside"]
    print(f"[kdprune] verify: {'FAILED: ' + ', '.join(bad) + ' outside what noise explains' if bad else 'every cell agrees'}"
          f" ({out / 'verify.md'})", flush=True)
    return 1 if bad else 0


def agreement(root: Path, run: Path, committed_results=None, rerun_results=None) -> tuple[dict, str]:
    """The comparison of ``run``'s results with ``root``'s: (the report as a dict, the table as markdown)."""
    from kdprune import agreement as G

    committed, c_rows, c_claims = committed_results or _read(root)
    rerun, r_rows, r_claims = rerun_results or _read(run)
    c_outs, r_outs = _outs(root / "dvc.lock"), _outs(run / "dvc.lock")
    same_models = all(c_outs.get(o) == r_outs.get(o) for o in MODEL_OUTS) and any(o in c_outs for o in MODEL_OUTS)
    regime = ("bytes: the re-run reproduced the committed models, so every cell must be equal" if same_models else
              "noise: the re-run's models differ from the committed ones (another CPU, a GPU, native kernels or "
              "other threads), so a cell agrees within seed noise")
    spread_c, spread_r = G.spreads(c_rows), G.spreads(r_rows)
    n_test = int(_prepared_meta(root).get("sizes", {}).get("test", 0)) or _prepared_test_size(run)
    rows = G.compare(G.metric_cells(committed), G.metric_cells(rerun), spread_c, spread_r, same_models, n_test)
    claims = G.changed_claims(c_claims, r_claims)
    seeds = G.seeds_needed(rows, spread_c)
    report = {"regime": "bytes" if same_models else "noise", "rerun": str(run), "cells": [r.as_dict() for r in rows],
              "outside": [r.name for r in rows if not r.ok], "claims_changed": claims, "seeds_needed": seeds,
              "outs_differing": sorted(k for k in set(c_outs) | set(r_outs) if c_outs.get(k) != r_outs.get(k))}
    return report, G.markdown(rows, regime, claims, seeds)


def _prepared_meta(root: Path) -> dict:
    for meta in sorted((root / "data" / "prepared").glob("*/meta.json")):
        return json.loads(meta.read_text())
    return {}


def _prepared_test_size(run: Path) -> int:
    return int(_prepared_meta(run).get("sizes", {}).get("test", 0))


def _log(root: Path, report: dict) -> None:
    """The check as an MLflow run (``verify``) with the table as artifacts; a store that cannot be
    reached is said, not fatal: the files are on disk."""
    try:
        from tracking.tracker import Tracker

        tr = Tracker(root)
        with tr.run(f"verify {time.strftime('%Y-%m-%d %H:%M:%S')}", None,
                    tags={"kdprune.stage": "verify", "kdprune.verify_regime": report["regime"]}) as run_id:
            tr.log_metrics(run_id, {"cells": len(report["cells"]), "outside": len(report["outside"])})
            for f in ("verify.json", "verify.md"):
                tr.log_artifact(run_id, root / "reports" / f, "verify")
    except Exception as e:  # noqa: BLE001 - the verdict stands without the log
        print(f"kdprune: verify: not logged to MLflow ({e}); the table is in reports/verify.md", file=sys.stderr)
