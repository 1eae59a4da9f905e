"""Lineage: every stage depends on every result-determining project file its command imports (and on
nothing else of the code: output-neutral code never), DVC outputs are byte-reproducible, a bad
params.yaml loses nothing, and DVC's comparison tools (`dvc exp show`, `dvc metrics diff`,
`dvc plots diff`) see the results."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.project import REPO, make_project

# result-determining: every file of these that a stage's command imports is one of its DVC deps
RESULT = ("kdprune", "artifacts", "execution", "tasks", "flows")
# output-neutral: they cannot change an output, no result-determining module imports them (the stages
# report through execution/observe.py), and they are no DVC deps: fixing a log line re-runs nothing
NEUTRAL = ("tracking", "telemetry", "servers", "cli")
PACKAGES = RESULT + NEUTRAL
# `python -m flows`: the command line's shim (cli/main.py), output-neutral like the rest of the CLI
SHIM = REPO / "flows" / "__main__.py"


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.exists():
            return f
    return None


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def imported_names(f: Path, dynamic: bool = False) -> list[str]:
    """Every project module ``f`` names in an import statement, anywhere in it (inside functions too),
    and with ``dynamic`` in an ``importlib.import_module("...")`` call with a literal name (the stages'
    registries load that way only where params name them: the stage's real imports cover those)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif (dynamic and isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.append(node.args[0].value)
    return [n for n in names if n.split(".")[0] in PACKAGES]


def is_result_determining(f: Path) -> bool:
    rel = f.relative_to(REPO)
    return rel.parts[0] in RESULT and f != SHIM


def static_closure(files: set[Path]) -> set[Path]:
    """Every result-determining project file reachable from ``files`` through import statements anywhere
    in them (module level or inside functions), with the packages' __init__ files. Output-neutral files
    are neither followed nor counted (no result-determining file imports one:
    test_no_result_determining_module_imports_an_output_neutral_one)."""
    seen: set[Path] = set()
    todo = [f for f in files if is_result_determining(f)]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in imported_names(f):
            for mod in _with_parents(name):
                mf = _module_file(mod)
                if mf is not None and mf not in seen and is_result_determining(mf):
                    todo.append(mf)
    return seen


def stage_imports(stage: str) -> set[str]:
    """The project files `python -m flows <stage>` imports: what a fresh interpreter has loaded after
    importing flows/__main__.py and the stage's module and validating params.yaml the way the stage
    does (name checks import their registries), closed over every import statement in those files
    (imports inside functions included, so a code path these params do not take is still covered)."""
    code = (
        "import importlib, json, sys\n"
        "from execution.params import pin_cpu\n"
        "pin_cpu('.')\n"  # as the entrypoint does, before torch loads
        "import flows.__main__\n"
        f"importlib.import_module('flows.{stage}')\n"
        "from execution.params import load_params\n"
        f"load_params('.', {None if stage == 'validate' else repr(stage)})\n"
        "print(json.dumps([getattr(m, '__file__', None) for m in list(sys.modules.values())]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    loaded = {Path(f).resolve() for f in json.loads(out.splitlines()[-1]) if f}
    ours = {f for f in loaded if f.is_relative_to(REPO) and f.relative_to(REPO).parts[0] in RESULT}
    return {str(f.relative_to(REPO)) for f in static_closure(ours)}


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", list(dvc_stages()))
def test_stage_deps_are_exactly_its_imports(stage):
    spec = dvc_stages()[stage]
    assert spec["cmd"] == f"python -m flows {stage}"
    deps = [d for d in spec.get("deps", []) if d.split("/")[0] in PACKAGES]
    neutral = [d for d in deps if d.split("/")[0] in NEUTRAL or REPO / d == SHIM]
    assert not neutral, f"dvc.yaml stage {stage!r} depends on output-neutral code {neutral}"
    imported = stage_imports(stage)
    missing = sorted(f for f in imported if not _covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports {missing} but does not depend on them"
    # and nothing more: a code dep the command never imports would re-run the stage for nothing
    unused = [d for d in deps if not any(_covered(f, [d]) for f in imported)]
    assert not unused, f"dvc.yaml stage {stage!r} depends on {unused}, which its command does not import"


def test_every_stage_runs_after_validate():
    stages = dvc_stages()
    assert list(stages)[0] == "validate"
    marker = stages["validate"]["outs"][0]
    marker = next(iter(marker)) if isinstance(marker, dict) else marker
    for name, spec in stages.items():
        if name != "validate":
            assert marker in spec["deps"], f"stage {name} does not depend on the validate stage's {marker}"


def project_files(packages: tuple[str, ...]) -> list[Path]:
    return sorted(f for pkg in packages for f in (REPO / pkg).rglob("*.py") if "__pycache__" not in f.parts)


def test_no_result_determining_module_imports_an_output_neutral_one():
    """Result-determining code reaches tracking, progress, run records and the servers only through
    execution/observe.py (the entry point installs the real observer), so an output-neutral module is
    never in a stage's lineage: fixing it cannot re-run a study."""
    bad = [f"{f.relative_to(REPO)} imports {name}" for f in project_files(RESULT) if is_result_determining(f)
           for name in imported_names(f, dynamic=True)
           if name.split(".")[0] in NEUTRAL or _module_file(name) == SHIM]
    assert not bad, "result-determining code imports output-neutral code: " + "; ".join(bad)


def test_nothing_below_flows_imports_flows():
    bad = [f"{f.relative_to(REPO)} imports {name}" for f in project_files(("kdprune", "artifacts", "execution", "tasks"))
           for name in imported_names(f, dynamic=True) if name.split(".")[0] == "flows"]
    assert not bad, "; ".join(bad)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for f in project_files(PACKAGES + ("bench",)):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES + ("bench",):
                bad += [f"{f.relative_to(REPO)}: from {node.module} import {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "; ".join(bad)


def test_importing_the_code_changes_nothing_in_the_process_environment():
    """No import side effects: the entry point configures the environment (servers.runtime.configure_env)
    and installs the stages' observer explicitly; importing every module leaves os.environ as it was."""
    modules = [".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
               for f in project_files(PACKAGES) if f != SHIM]
    code = ("import importlib, json, os\n"
            "import sklearn\n"  # scikit-learn sets KMP_DUPLICATE_LIB_OK on import: its effect, not ours
            "before = dict(os.environ)\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "from execution.observe import Observer, observer\n"
            "print(json.dumps({'changed': sorted(k for k in {*before, *os.environ} if before.get(k) != os.environ.get(k)),\n"
            "                  'observer': type(observer()) is Observer}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "KDPRUNE_", "DVC_"))}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.splitlines()[-1])
    assert res == {"changed": [], "observer": True}, res


def test_a_stage_whose_entry_point_skipped_the_cpu_pin_is_refused():
    """The CPU kernels are pinned by the entry point (cli/main.py, output-neutral) before torch loads; the
    stage's own load_params (result-determining) verifies them, so a command line that forgot the pin
    cannot change a result: the stage stops before computing."""
    from kdprune import reproducibility as R

    code = "import flows.teacher\nfrom execution.params import load_params\nload_params('.', 'teacher')\n"
    env = {k: v for k, v in os.environ.items() if k not in (*R.PORTABLE_ENV, *R.THREAD_VARS)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "did not start under it" in out.stderr, out.stderr[-2000:]


def _placeholder_outs(proj_path: Path) -> None:
    """Every stage output as a placeholder, so that DVC can record each stage without running it."""
    params = yaml.safe_load((proj_path / "params.yaml").read_text())
    for spec in dvc_stages().values():
        for kind in ("outs", "metrics", "plots"):
            for out in spec.get(kind, []):
                path = next(iter(out)) if isinstance(out, dict) else out
                path = proj_path / path.replace("${data.dataset}", params["data"]["dataset"])
                if path.exists():
                    continue
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("placeholder\n")
                else:
                    path.mkdir(parents=True)
                    (path / "placeholder").write_text("placeholder\n")


def _stale(proj) -> set[str]:
    out = proj.run("dvc", "status", "--json").stdout
    return {k.rsplit(":", 1)[-1] for k in json.loads(out or "{}")}


def test_an_output_neutral_edit_leaves_dvc_status_clean_and_a_core_edit_stales_exactly_its_importers(tmp_path):
    """In a throw-away copy whose every stage DVC has recorded (placeholder outputs: what is checked is
    the code deps, not the results): a comment added to every output-neutral module, the shim
    included, leaves `dvc status` clean; a comment in one core module makes exactly the stages that
    import it stale."""
    from bench.project import free_port

    proj = make_project(tmp_path / "p", free_port())
    _placeholder_outs(proj.path)
    proj.run("dvc", "commit", "--force", "-q")
    assert _stale(proj) == set()
    neutral = project_files(NEUTRAL) + [SHIM]
    assert len(neutral) > 10
    for f in neutral:
        copy = proj.path / f.relative_to(REPO)
        copy.write_text(copy.read_text() + "# a log line fixed\n")
    assert _stale(proj) == set(), "an edit of output-neutral code re-runs stages"
    core = "kdprune/train/metrics.py"
    (proj.path / core).write_text((proj.path / core).read_text() + "# a comment\n")
    importers = {st for st in dvc_stages() if core in stage_imports(st)}
    assert importers and importers != set(dvc_stages())
    assert _stale(proj) == importers


def _outs(lock: dict) -> dict[str, str]:
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])}


# a process started as on another machine: other kernels asked for, other thread counts
OTHER_START = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE",
               "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4", "OPENBLAS_CORETYPE": "Nehalem", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def bytes_can_match() -> str | None:
    """Why this machine cannot reproduce the committed bytes, or None when it can: the default profile
    pins CPU kernels at AVX2 (reproducibility.cpu portable), and device auto trains on a GPU when one is there."""
    import torch

    from kdprune.reproducibility import cpu_supports_avx2

    if not cpu_supports_avx2():
        return "this CPU has no AVX2: the portable kernels cannot run here"
    if torch.cuda.is_available():
        return "a CUDA device is present: device auto trains there"
    return None


def other_arithmetic(run: Path) -> str | None:
    """Why ``run`` (this machine) computes other bits than the machine that recorded the committed dvc.lock,
    or None when their arithmetic fingerprints (reports/compute.json, written with the lock by the evaluate
    stage) are the same: then every out must be the same, and a difference means a stale dvc.lock."""
    here = json.loads((run / "reports" / "compute.json").read_text())["arithmetic"]
    recorded = json.loads((REPO / "reports" / "compute.json").read_text())["arithmetic"]
    return None if here == recorded else (
        f"this CPU's arithmetic fingerprint is {here}, the recording machine's {recorded} (reports/compute.json): "
        "its kernels round differently, so its bytes cannot match")


@pytest.mark.integration
def test_two_clean_runs_of_the_default_pipeline_write_the_same_dvc_lock(tmp_path, prefect_port):
    """The default profile, twice from nothing, the second process started as if on another machine
    (other kernel and thread settings in its environment): every hash in dvc.lock is the same, and the
    outputs' hashes are those of the committed dvc.lock (what a colleague's `make run` checks). On a
    machine that cannot match bytes (no AVX2, a GPU, or arithmetic that rounds otherwise than the recording
    machine's: reports/compute.json) the committed results are checked statistically instead (`kdprune
    verify`'s comparison), and the test says so."""
    port, home = prefect_port
    locks, projects = [], []
    for i, start in enumerate(({}, OTHER_START)):
        proj = make_project(tmp_path / f"run{i}", port)  # params.yaml as committed: the default profile
        proj.env["PREFECT_HOME"] = str(home)
        proj.run(sys.executable, "-m", "flows", "pipeline", timeout=1800, env=start)
        locks.append(yaml.safe_load((proj.path / "dvc.lock").read_text()))
        projects.append(proj)
        assert "Data and pipelines are up to date" in proj.run("dvc", "status").stdout
    assert locks[0] == locks[1], "the starting environment changed a result under reproducibility.cpu portable"
    committed = yaml.safe_load((REPO / "dvc.lock").read_text())
    why_not = bytes_can_match() or other_arithmetic(projects[0].path)
    if why_not is None:
        assert _outs(locks[0]) == _outs(committed), "dvc.lock is stale: run `make run` and commit dvc.lock"
        return
    from cli.verify import agreement

    report, table = agreement(REPO, projects[0].path)
    print(f"bytes cannot match here ({why_not}); the statistical check instead:\n{table}")
    assert not report["outside"], f"outside what seed noise explains ({why_not}):\n{table}"
