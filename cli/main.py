"""Command line: ``kdprune <command> [options]`` (the console script), or ``python -m flows <command>``.

Both are this module's ``main``: one parser, one subcommand per entry of COMMANDS, each with its
own ``--help``. ``sweep --profile NAME [-S key=value ...]`` writes params.yaml from
profiles/NAME.yaml and the overrides (validated first) and runs the stale stages: e.g. the
Fashion-MNIST study is ``kdprune sweep --profile fashion_mnist``. ``profile NAME`` only writes params.yaml.

Params are validated before Prefect is imported, so a bad params.yaml stops with one clear message
and leaves nothing behind. Commands that track first start MLflow's child process, which imports it (see
tracking/tracker.py), so that its imports overlap this process's. Then the local Prefect server is made to
answer (started on 127.0.0.1 on first use, reused after) and the flow runs.
``KDPRUNE_PARENT_RUN_ID`` nests a stage's MLflow run under an existing parent run.

``stores up|down|status|import|client`` manages the lab's stores (servers/stores.py): PostgreSQL, the
MLflow and Prefect servers on it, the client file every entrypoint reads; ``import`` copies the local
SQLite store's runs into the server; ``client --host NAME`` prints a colleague's client file.
``push`` / ``pull`` run ``dvc push`` / ``dvc pull`` against the DVC remote (KDPRUNE_DVC_REMOTE by default).
"""
from __future__ import annotations

import argparse
import atexit
import faulthandler
import importlib
import json
import logging
import os
import sys
import time

from kdprune.config import STAGES as ALL_STAGES
from servers.runtime import configure_env, ensure_prefect_server, project_root, stop_prefect_server
from tracking.tracker import check_tracking_store, import_mlflow_early

_DONE: list[int] = []  # set when main() has finished cleanly


def _fast_exit() -> None:
    """Registered first, so it runs last, after every other exit handler (Prefect's log and event
    workers; MLflow's child process has finished what was sent before any, as Python joins it
    before exit handlers run): flush logging and the standard streams, then leave
    without interpreter finalization, which costs 2-3 s with torch, Prefect and MLflow loaded and
    writes nothing. Only after a clean finish; errors exit normally."""
    if not _DONE:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_DONE[0])


NEXT_STEP = "[kdprune] compare the students: run `make ui` and open the link it prints"
STAGES = tuple(s for s in ALL_STAGES if s != "validate")  # each a Prefect flow (validate: a command of its own)

# Options, each defined once: (flags, argparse keywords, the commands that take it)
_SWEEPING = ("pipeline", "sweep", "deploy", "serve")
OPTIONS = [
    (("--profile",), dict(default=None, help={  # one text per command
        "sweep": "start from profiles/PROFILE.yaml (e.g. fashion_mnist) instead of the current params.yaml",
        "deploy": "deploy the sweep of profiles/PROFILE.yaml (named sweep/PROFILE) instead of the pipeline",
        "serve": "serve the sweep of profiles/PROFILE.yaml instead of the pipeline"}),
     ("sweep", "deploy", "serve")),
    (("-S", "--set"), dict(dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="override one param, e.g. -S student.kd_weights=[0.3,0.9] (repeatable)"),
     ("sweep", "profile", "deploy", "serve")),
    (("--force",), dict(action="store_true", help="re-run every stage even if DVC finds it up to date"),
     ("pipeline", "sweep")),
    (("--cron",), dict(default=None, help="the schedule (default '0 2 * * *': 02:00 every day)"), ("deploy", "serve")),
    (("--timezone",), dict(default="UTC", help="the schedule's time zone"), ("deploy", "serve")),
    (("--paused",), dict(action="store_true", help="create it paused, and leave one that exists as it is (what "
                                                   "'make setup' does); 'kdprune serve' resumes it"), ("deploy",)),
    (("--port",), dict(type=int, default=None, help="the MLflow UI's port (default 5000, or a free one when 5000 "
                                                    "is taken; a port named here that is taken is refused)"), ("ui",)),
    (("--no-serve",), dict(action="store_true", help="only print the links (a server already runs)"), ("ui",)),
    (("--only",), dict(action="append", default=[], metavar="BENCH",
                       help="run only this benchmark module (trainer_bench, grand_bench, pipeline_bench, ray_bench, portable_bench, "
                            "ddp_bench, stream_bench; "
                            "repeatable)"), ("bench",)),
    (("--out",), dict(default=None, metavar="DIR", help="synthetic / export: the image folder to write"), ("data",)),
    (("--classes",), dict(type=int, default=1000, help="synthetic: number of classes (default 1000)"), ("data",)),
    (("--images",), dict(type=int, default=100_000, help="synthetic: training images (default 100000)"), ("data",)),
    (("--test-images",), dict(type=int, default=None, help="synthetic: test images (default images / 10)"),
     ("data",)),
    (("--size",), dict(type=int, default=64, help="synthetic: image side in pixels (default 64)"), ("data",)),
    (("--format",), dict(dest="fmt", default=None, choices=("jpg", "png", "bmp"),
                         help="synthetic / export: file format (default jpg for synthetic, png for export)"),
     ("data",)),
    (("--seed",), dict(type=int, default=0, help="synthetic: the seed every image is drawn from"), ("data",)),
    (("--workers",), dict(type=int, default=None, help="synthetic / export: writing processes (default: all CPUs)"),
     ("data",)),
    (("--dataset",), dict(default=None, help="export: the registered dataset to write as an image folder "
                                             "(e.g. fashion_mnist)"), ("data",)),
    (("--host",), dict(default=None, help="stores client: the host name colleagues reach the servers at"),
     ("stores",)),
    (("--from",), dict(dest="source", default=None, metavar="DIR",
                       help="compare with the run in this project directory instead of re-running the pipeline"),
     ("verify",)),
    (("--keep",), dict(action="store_true", help="keep the scratch copy the pipeline re-ran in"), ("verify",)),
    (("--timeout",), dict(type=float, default=7200.0, help="seconds the re-run may take"), ("verify",)),
]

# command -> (help, positional `name` (its help, or None for none), other names); in --help's order
COMMANDS = {
    "pipeline": ("run the whole pipeline on params.yaml: the stale stages in order, then the report", None, ("run",)),
    "sweep": ("write params.yaml from a profile and -S overrides, then run its stale stages", None, ()),
    "profile": ("write params.yaml from profiles/NAME.yaml (and -S overrides); runs nothing",
                "the profile's name (profiles/NAME.yaml)", ()),
    "validate": ("check all of params.yaml: DVC's first stage (writes data/params-ok), before any output is "
                 "touched", None, ()),
    **{s: (f"run the {s} stage alone (what 'dvc repro {s}' runs)", None, ()) for s in STAGES},
    "deploy": ("create the pipeline's deployment pipeline/nightly (or a profile's sweep) with a cron schedule",
               None, ()),
    "serve": ("create the deployment and serve it: scheduled and UI-triggered runs execute in this process",
              None, ()),
    "ui": ("serve MLflow's UI on the project's store and print the links: the students of the latest sweep "
           "side by side, and the Prefect UI", None, ()),
    "bench": ("run every benchmark in bench/ that can run here -> reports/bench.json; a benchmark whose data "
              "is missing is reported as skipped, with the command that gets the data", None, ()),
    "data": ("fetch the data a profile needs (Fashion-MNIST: the Debian package when apt is usable), or print "
             "exactly how to; 'data synthetic --out DIR' writes a synthetic image folder, 'data export --dataset "
             "NAME --out DIR' writes a dataset as one", "a profile's name (profiles/NAME.yaml), synthetic or export",
             ()),
    "verify": ("re-run the pipeline from nothing in a scratch copy and compare every cell of the committed "
               "reports/metrics.json with it: equal bytes, or within seed noise (exit 1 when not)", None, ()),
    "init": ("create the MLflow store (part of 'make setup')", None, ()),
    "stop": ("stop the local Prefect server", None, ()),
    "stores": ("the lab's shared stores (PostgreSQL, MLflow and Prefect servers): up, down, status, import, client",
               "up, down, status, import or client", ()),
    "push": ("dvc push to the DVC remote", None, ()),
    "pull": ("dvc pull from the DVC remote", None, ()),
}


DESCRIPTION = """\
kdprune: data pruning with knowledge distillation, as a reproducible pipeline. It trains a
teacher, scores every training example, keeps a fraction of them per method, trains students on
each subset with and without the teacher's soft labels, and reports which method wins.

  make run                          the whole pipeline on params.yaml (= kdprune run)
  make ui                           compare the students in MLflow's UI
  kdprune sweep --profile NAME      a study from profiles/NAME.yaml, e.g. fashion_mnist
  kdprune sweep -S student.kd_weights=[0.3,0.9]    vary a param
"""
EPILOG = "'kdprune COMMAND --help' shows a command's options. Outside the virtualenv, 'make' runs the same (see Makefile)."


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return f"kdprune {dist_version('kdprune')}"
    except PackageNotFoundError:
        return "kdprune (not installed: 'make setup' installs it)"


def parser(prog: str = "kdprune") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=version())
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd, (help_, name_help, aliases) in COMMANDS.items():
        # each name its own parser, so that `kdprune run --help` says `usage: kdprune run`
        names = (*aliases, cmd)  # the first is the one a user types (run), the others listed as the same
        for name in names:
            p = sub.add_parser(name, help=help_ if name == names[0] else f"the same as {names[0]}", description=help_)
            p.set_defaults(command=cmd, name=None, profile=None, overrides=[], force=False, cron=None, timezone="UTC",
                           serve=cmd == "serve", paused=False, host=None, source=None, keep=False,
                           timeout=7200.0)
            if name_help:
                p.add_argument("name", nargs="?" if cmd == "stores" else None, default=None, help=name_help)
            for flags, kw, cmds in OPTIONS:
                if cmd in cmds:
                    p.add_argument(*flags, **{**kw, "help": kw["help"][cmd]} if isinstance(kw.get("help"), dict)
                                   else kw)
    return ap


class _RayTokenOnNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def main(argv: list[str] | None = None) -> None:
    if argv is None:  # the command line, not a caller in this process
        atexit.register(_fast_exit)
        if hasattr(faulthandler, "register"):  # `kill -USR1 <pid>`: every thread's stack to stderr (a hung run)
            import signal

            faulthandler.register(signal.SIGUSR1, all_threads=True)
    configure_env()  # before Prefect or MLflow is imported: they read their settings once
    # DVC, used as a library by the pipeline (dvc status, dvc commit), draws a bar per file it hashes or
    # commits (a fraction of a second each, hundreds of lines a run) unless the loggers that decide its
    # bars are above ERROR; those two loggers log nothing else, DVC's own warnings and errors still show
    for bars in ("dvc.progress", "dvc_data.callbacks"):
        logging.getLogger(bars).setLevel(logging.CRITICAL)
    # and its "Updating lock file 'dvc.lock'" (twice: its handler and Prefect's) says what the pipeline's
    # "recorded in dvc.lock: <stages>" says
    logging.getLogger("dvc.dvcfile").setLevel(logging.WARNING)
    # Ray 2.60 warns, at each run's own Ray instance, that it turned token authentication on (as it should);
    # its warning that authentication is *off* still shows. Not RAY_AUTH_MODE=token: a driver in token mode
    # joining a cluster started without it is refused by that cluster's workers
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_RayTokenOnNote())
    from execution.observe import install
    from telemetry.observer import StageObserver

    install(StageObserver())  # the stages report through it (execution/observe.py)
    prog = "kdprune" if os.path.basename(sys.argv[0]) == "kdprune" else "python -m flows"
    args = parser(prog).parse_args(argv)
    if args.command in ("stores", "push", "pull"):
        sys.exit(_stores(args))
    if args.command in ("bench", "data", "ui"):
        from cli import tools

        sys.exit(getattr(tools, args.command)(args))
    if args.command in (*STAGES, "validate", "pipeline", "sweep", "deploy", "serve", "verify"):
        # before torch or NumPy loads in this process (or in MLflow's child, or in Ray's workers, which
        # inherit it): the kernels and thread counts `reproducibility` asks for (kdprune/reproducibility.py)
        from execution.params import pin_cpu

        pin_cpu(project_root(), args.profile if args.command != "verify" else None, args.overrides)
    if args.command == "verify":
        from cli.verify import verify

        sys.exit(verify(args))
    if args.command == "deploy" and args.paused and not args.profile and not args.overrides:
        sys.exit(_deploy_once(args))
    if args.command in (*STAGES, "pipeline", "sweep", "deploy", "serve"):
        # MLflow's imports (about 2 s) run in its child process while this one imports torch and Prefect; nothing
        # touches a store until a stage opens it, so bad params below still leave nothing behind
        import_mlflow_early()
    from kdprune.config import ParamsError  # torch and the registries: after MLflow's import has started
    from execution.params import load_params, profile_names, sweep_params

    if args.command == "stop":
        print("stopped the local Prefect server" if stop_prefect_server() else "no local Prefect server was running")
        return
    root = project_root()
    if args.command == "validate":  # no tracking, no server: params only
        from flows.validate import validate_stage

        try:
            validate_stage(root)
        except ParamsError as e:
            print(f"kdprune: {e}", file=sys.stderr)
            sys.exit(2)
        print("[kdprune] params.yaml is valid", flush=True)
        _DONE.append(0)
        return
    if args.command == "init":  # the tracking store's tables and experiment, once per project (like `dvc init`)
        from tracking.tracker import Tracker

        try:
            check_tracking_store()
            print(f"[kdprune] MLflow store ready at {Tracker(root).uri}")
        except RuntimeError as e:
            print(f"kdprune: {e}", file=sys.stderr)
            sys.exit(3)
        return
    try:
        if args.command == "profile":
            from execution.params import write_params

            if not args.name:
                raise ParamsError("profile: name one, e.g. `kdprune profile fashion_mnist`; available: "
                                  + ", ".join(profile_names(root)))
            raw = sweep_params(root, args.name, args.overrides)
            changed = write_params(root, raw, f"kdprune profile {args.name}", args.name, args.overrides)
            print(f"[kdprune] params.yaml {'written from' if changed else 'already matches'} profile {args.name}",
                  flush=True)
            return
        if args.command == "sweep" or (args.command in ("deploy", "serve") and args.profile):
            sweep_params(root, args.profile, args.overrides)  # all of it validated before anything runs
        else:
            load_params(root, args.command if args.command in STAGES else None)
    except ParamsError as e:
        print(f"kdprune: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        check_tracking_store()
        ensure_prefect_server()
    except RuntimeError as e:
        print(f"kdprune: {e}", file=sys.stderr)
        sys.exit(3)
    if args.command in ("deploy", "serve"):
        from cli.deploy import deploy

        deploy(cron=args.cron, timezone=args.timezone, serve=args.serve, profile=args.profile,
               overrides=args.overrides, paused=args.paused)
    elif args.command in ("pipeline", "sweep"):
        t0 = time.perf_counter()
        if args.command == "pipeline":
            from flows.pipeline import pipeline

            out = pipeline(root=str(root), force=args.force)
        else:
            from flows.sweep import sweep

            out = sweep(root=str(root), profile=args.profile, overrides=args.overrides, force=args.force)
        _publish_study(root, out["mlflow_run_id"])
        print(f"[kdprune] {args.command} finished in {time.perf_counter() - t0:.1f}s; stages run: "
              f"{', '.join(out['stages_run']) or 'none (all up to date)'}; MLflow parent run {out['mlflow_run_id']}",
              flush=True)
        print(NEXT_STEP, flush=True)
    else:
        flow_fn = getattr(importlib.import_module(f"flows.{args.command}"), f"{args.command}_flow")
        flow_fn(root=str(root), parent_run_id=os.environ.get("KDPRUNE_PARENT_RUN_ID") or None)
        if args.command == "evaluate":  # `dvc repro`: the summary on the evaluate stage's own run
            _publish_study(root, None)
    if args.command not in ("deploy", "serve"):
        # a stage's runs may end without waiting for their logging (the teacher's registered model):
        # the command is done when its tracking is; what it could not log, over all its stages, is said last
        from tracking.tracker import describe_not_logged, not_logged_total

        if lost := not_logged_total():
            on_disk = ("every stage's models and metrics are on disk (its outputs)" if args.command in ("pipeline", "sweep")
                       else f"the model and metrics are on disk (the {args.command} stage's outputs)")
            print(f"kdprune: not logged to MLflow at {os.environ.get('MLFLOW_TRACKING_URI')}: "
                  f"{describe_not_logged(lost)}; {on_disk}", file=sys.stderr)
    _DONE.append(0)


def _publish_study(root, run_id) -> None:
    """The study's summary in MLflow (tracking/study.py): best effort, never the reason a run fails."""
    from tracking.study import publish_study

    try:
        publish_study(root, run_id)
    except Exception as e:  # e.g. a results table of an older layout: the results are on disk all the same
        print(f"kdprune: the study's summary was not published to MLflow ({type(e).__name__}: {e})", file=sys.stderr)


def _deploy_once(args) -> int:
    """`make setup`, every time: the nightly deployment registered (paused) on the server this project
    talks to. Asked of that server, not of a marker file: another project's server, or a new one, has
    none. The check costs a request; the deployment (imports torch and Prefect) only when it is missing."""
    from servers.runtime import deployment_exists

    try:
        url = ensure_prefect_server()
        if deployment_exists("pipeline/nightly"):
            print(f"[kdprune] deployment 'pipeline/nightly' is registered on {url.removesuffix('/api')}", flush=True)
            return 0
    except RuntimeError as e:
        print(f"kdprune: {e}", file=sys.stderr)
        return 3
    from cli.deploy import deploy

    deploy(cron=args.cron, timezone=args.timezone, paused=True)
    return 0


def _stores(args) -> int:
    from servers import stores

    root = project_root()
    try:
        if args.command in ("push", "pull"):
            return stores.dvc_transfer(root, args.command)
        if args.name == "up":
            settings = stores.up(root)
            print(f"[kdprune] stores up: MLflow {settings['MLFLOW_TRACKING_URI']}, Prefect {settings['PREFECT_API_URL']}"
                  f"{', authentication on' if 'PREFECT_API_AUTH_STRING' in settings else ''}; every entrypoint of "
                  f"this project now uses them (settings in {stores.Paths(root).client})", flush=True)
        elif args.name == "down":
            stopped = stores.down(root)
            print(f"[kdprune] stopped: {', '.join(stopped) or 'nothing was running'}; data kept, "
                  "`make stores-up` starts them again", flush=True)
        elif args.name == "status":
            print(json.dumps(stores.status(root), indent=2))
        elif args.name == "import":
            counts = stores.import_local_runs(root)
            print(f"[kdprune] imported {counts['runs']} runs ({counts['metric points']} metric points, "
                  f"{counts['artifacts']} artifact files); {counts['skipped']} were already there", flush=True)
        elif args.name == "client":
            if not args.host:
                raise stores.StoresError("stores client: name the host colleagues reach the servers at, "
                                         "e.g. --host labserver.example.org")
            sys.stdout.write(stores.colleague_file(root, args.host))
        else:
            print("kdprune: stores: say up, down, status, import or client", file=sys.stderr)
            return 2
    except RuntimeError as e:  # StoresError, or a server that would not start
        print(f"kdprune: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    main()
