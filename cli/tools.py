"""The commands around the pipeline: ``kdprune ui``, ``kdprune bench``, ``kdprune data NAME``.

Each takes the parsed command line (cli/main.py) and returns the exit code.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from servers.runtime import port_free, project_root

BENCHMARKS = ("trainer_bench", "grand_bench", "pipeline_bench", "ray_bench", "portable_bench", "ddp_bench",
              "stream_bench")


# ---------------------------------------------------------------- kdprune ui

def _wait_healthy(url: str, proc: subprocess.Popen | None, timeout_s: float = 300.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the MLflow server exited with code {proc.returncode} (its log is above)")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the MLflow server at {url} did not answer within {timeout_s:.0f}s")


def links(tracking_uri: str, base: str) -> list[tuple[str, str]]:
    """(what, URL) for each thing worth opening, the answer first: the study's figure (accuracy against
    kept fraction per KD arm, mean ± std over seeds) on the latest summary run, the students of the
    latest sweep, the experiment, the registered teacher, the Prefect UI."""
    from mlflow.tracking import MlflowClient

    from tracking.study import SUMMARY_TAG
    from tracking.tracker import EXPERIMENT, STUDENTS_VIEW, TRAINING_KINDS, ui_url

    out = []
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        out.append(("MLflow (no kdprune experiment yet: `make run` first)", base + "/"))
    else:
        training = exp.tags.get("mlflow.experimentKind") in TRAINING_KINDS
        flow = "?workflowType=machine_learning" if training else ""
        summary = client.search_runs([exp.experiment_id], filter_string=f"tags.`{SUMMARY_TAG}` != ''", max_results=1,
                                     order_by=["attributes.start_time DESC"])
        if summary:
            r = summary[0]
            out.append((f"does KD help? test accuracy vs kept fraction per KD arm, mean ± std over seeds "
                        f"(run '{r.info.run_name}'; its table: summary/accuracy_mean_std.csv)",
                        f"{base.rstrip('/')}/#/experiments/{exp.experiment_id}/runs/{r.info.run_id}/artifactPath/"
                        f"{r.data.tags[SUMMARY_TAG]}{flow}"))
        if f"mlflow.sharedViewState.{STUDENTS_VIEW}" in exp.tags:
            out.append(("students of the latest sweep, side by side (Chart: test_acc_pct vs fraction, coloured "
                        "by KD arm)", ui_url(base, exp.experiment_id, exp.tags)))
        out.append(("every run of the experiment", ui_url(base, exp.experiment_id, exp.tags, view=None)))
        # the registered model's own page: its versions with their tags (test_acc) and descriptions, on the
        # model-training side (the registry's list page opens on the GenAI side with a promotion pop-up)
        from tracking.models import teacher_model_name

        teachers = client.search_registered_models(f"name LIKE '{teacher_model_name('')}%'",
                                                   order_by=["last_updated_timestamp DESC"], max_results=1)
        registry = (f"{base.rstrip('/')}/#/models/{teachers[0].name}{flow}" if teachers
                    else f"{base.rstrip('/')}/#/models{flow}")
        out.append(("the teacher in the Model Registry (its versions, with test accuracy and description)", registry))
    prefect = os.environ.get("PREFECT_API_URL", "").removesuffix("/api")
    if prefect:
        out.append(("Prefect: flow runs, the report and results artifacts, the nightly deployment", prefect))
    return out


DEFAULT_UI_PORT = 5000  # MLflow's own default


def ui_port(requested: int | None) -> tuple[int, str]:
    """The port ``kdprune ui`` serves on, and a note when it is not the one asked for. A port named
    with --port that is taken is refused (RuntimeError: a link to whatever holds it would mislead);
    the default (5000) that is taken gives way to a free port, and says so."""
    port = requested or DEFAULT_UI_PORT
    if port_free(port):
        return port, ""
    if requested:
        raise RuntimeError(f"port {port} on 127.0.0.1 is already in use (another MLflow UI, or another program); "
                           f"pick a free one with --port N (`make ui PORT=N`), or stop what holds it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    return free, f"port {port} is in use: the MLflow UI is served on {free} instead"


def _stop_group(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stop the server and every process it started (its own session: MLflow runs its web server as a child)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group (the web server's workers)
    except ProcessLookupError:
        pass
    proc.wait()


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through ui()'s finally, which stops the server


def ui(args) -> int:
    """Serve MLflow's UI on the project's store (127.0.0.1:--port) and print the links. The server is
    this command's: Ctrl-C or SIGTERM stops it with the command."""
    uri = os.environ["MLFLOW_TRACKING_URI"]
    proc = None
    try:
        if uri.startswith(("http://", "https://")):
            base = uri.rstrip("/")  # a tracking server: its UI is already served
        elif args.no_serve:
            base = f"http://127.0.0.1:{args.port or DEFAULT_UI_PORT}"
        else:
            port, note = ui_port(args.port)
            if note:
                print(f"[kdprune] {note}", flush=True)
            base = f"http://127.0.0.1:{port}"
            mlflow = shutil.which("mlflow", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                  os.environ.get("PATH", "")]))
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _exit_on_sigterm)
            # one worker: a local UI for one researcher (MLflow's default, 4, quadruples start-up and memory);
            # its own session, so that stopping it stops the web server it starts too
            proc = subprocess.Popen([mlflow or "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
                                     "--port", str(port), "--workers", "1"], start_new_session=True)
        _wait_healthy(base, proc)
        for what, url in links(uri, base):
            print(f"[kdprune] {what}:\n    {url}", flush=True)
        if proc is None:
            return 0
        print("[kdprune] MLflow UI serving; Ctrl-C stops it", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    except RuntimeError as e:
        print(f"kdprune: {e}", file=sys.stderr)
        return 3
    finally:
        if proc is not None:
            _stop_group(proc)


# ---------------------------------------------------------------- kdprune bench

def print_bench_table(path: Path) -> None:
    for r in json.loads(path.read_text()):
        if r.get("skipped"):
            print(f"{r['name']:38s} {'skipped':>10} {r['unit']:9s} {r['skipped']}")
        else:
            print(f"{r['name']:38s} {r['value']:>10} {r['unit']:9s} target {r['target']}")


def bench(args) -> int:
    """Each benchmark module in its own process, so one that fails does not stop the others."""
    root = project_root()
    failed = []
    for name in args.only or BENCHMARKS:
        if name not in BENCHMARKS:
            print(f"kdprune: unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        print(f"[kdprune] bench: {name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=root).returncode != 0:
            failed.append(name)
    out = root / "reports" / "bench.json"
    if out.exists():
        print_bench_table(out)
    if failed:
        print(f"kdprune: bench: {', '.join(failed)} failed (output above); the other rows are in {out}",
              file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- kdprune data NAME

def missing_data(dataset: str, root: str | None) -> str | None:
    """None when ``dataset`` loads from ``root`` (a streamable one: lists its files); otherwise why not and
    how to get it."""
    from kdprune.data import DATASETS, DatasetUnavailable
    from kdprune.data.stream import FILE_DATASETS

    try:
        (FILE_DATASETS if dataset in FILE_DATASETS else DATASETS).get(dataset)(root=root)
    except DatasetUnavailable as e:
        return str(e)
    return None


def _apt_usable() -> str | None:
    """Why apt-get cannot install here, or None when it can (root, apt-get present)."""
    if shutil.which("apt-get") is None:
        return "this machine has no apt-get"
    if os.geteuid() != 0:
        return "installing a Debian package needs root (run it with sudo)"
    return None


def _progress(total: int, what: str):
    done = [0, time.monotonic()]

    def tick(n: int) -> None:
        done[0] += n
        if time.monotonic() - done[1] > 5 or done[0] == total:
            done[1] = time.monotonic()
            print(f"[kdprune] {what}: {done[0]}/{total} images", flush=True)

    return tick


def synthetic(args) -> int:
    """``kdprune data synthetic --out DIR --classes C --images N --size S --format jpg``."""
    from kdprune.data.synthetic import write_synthetic

    if not args.out:
        print("kdprune: data synthetic: --out DIR is required (the image folder to write)", file=sys.stderr)
        return 2
    test = args.test_images if args.test_images is not None else max(args.classes, args.images // 10)
    t0 = time.monotonic()
    try:
        info = write_synthetic(args.out, args.classes, args.images, test, args.size, args.fmt or "jpg", args.seed,
                               args.workers, progress=_progress(args.images + test, f"writing {args.out}"))
    except ValueError as e:
        print(f"kdprune: data synthetic: {e}", file=sys.stderr)
        return 2
    print(f"[kdprune] wrote {info['train']} + {info['test']} {info['size']} px {info['format']} images of "
          f"{info['classes']} classes to {info['out']} in {time.monotonic() - t0:.0f}s; use it with data.dataset: "
          f"imagefolder, data.root: {info['out']}", flush=True)
    return 0


def export(args) -> int:
    """``kdprune data export --dataset fashion_mnist --out DIR [--format png]``: a dataset as an image folder."""
    from kdprune.data import DATASETS, DatasetUnavailable
    from kdprune.data.synthetic import export_folder

    if not args.out or not args.dataset:
        print("kdprune: data export: --dataset NAME and --out DIR are required", file=sys.stderr)
        return 2
    try:
        raw = DATASETS.get(args.dataset)(root=None)
    except (KeyError, DatasetUnavailable) as e:
        print(f"kdprune: data export: {e}", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    info = export_folder(raw, args.out, args.fmt or "png", args.workers,
                         progress=_progress(len(raw.train_y) + len(raw.test_y), f"writing {args.out}"))
    print(f"[kdprune] wrote {args.dataset} ({info['train']} + {info['test']} images, {info['format']}) to "
          f"{info['out']} in {time.monotonic() - t0:.0f}s; use it with data.dataset: imagefolder, data.root: "
          f"{info['out']}", flush=True)
    return 0


def data(args) -> int:
    """Get the data profile ``args.name`` needs: the Debian package where the dataset has one and
    apt-get is usable, otherwise print exactly what to do. ``synthetic`` and ``export`` write image folders."""
    from kdprune.data import DATASETS

    if args.name in ("synthetic", "export"):
        return synthetic(args) if args.name == "synthetic" else export(args)
    root = project_root()
    prof = root / "profiles" / f"{args.name}.yaml"
    if not args.name or not prof.exists():
        names = ", ".join(sorted(p.stem for p in (root / "profiles").glob("*.yaml")))
        print(f"kdprune: data: name a profile, e.g. `make data NAME=fashion_mnist`; available: {names}",
              file=sys.stderr)
        return 2
    d = yaml.safe_load(prof.read_text())["data"]
    dataset, data_root = d["dataset"], d.get("root")
    why = missing_data(dataset, data_root)
    if why is None:
        print(f"[kdprune] {dataset} (profile {args.name}) is already here", flush=True)
        return 0
    package = getattr(DATASETS.get(dataset), "debian_package", None) if data_root is None else None
    if package:
        blocked = _apt_usable()
        if blocked is None:
            print(f"[kdprune] installing {package} (apt-get) for {dataset}", flush=True)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            ok = subprocess.run(["apt-get", "install", "-y", package], env=env).returncode == 0
            if not ok:  # stale package lists are the usual reason
                ok = (subprocess.run(["apt-get", "update"], env=env).returncode == 0
                      and subprocess.run(["apt-get", "install", "-y", package], env=env).returncode == 0)
            if ok and missing_data(dataset, data_root) is not None:  # installed, but its files were removed
                ok = subprocess.run(["apt-get", "install", "-y", "--reinstall", package], env=env).returncode == 0
            if ok and (why := missing_data(dataset, data_root)) is None:
                print(f"[kdprune] {dataset} is installed; `make study NAME={args.name}` runs the study", flush=True)
                return 0
            print(f"kdprune: apt-get install {package} did not make {dataset} available; {why}", file=sys.stderr)
            return 1
        print(f"kdprune: {dataset} is not on this machine and cannot be installed from here ({blocked}). "
              f"Run: sudo apt-get install -y {package}   (then `make study NAME={args.name}`)", file=sys.stderr)
        return 1
    print(f"kdprune: {dataset} (profile {args.name}) is not on this machine. {why}", file=sys.stderr)
    return 1
