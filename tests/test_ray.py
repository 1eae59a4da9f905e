"""The Ray runner (runner.kind: ray) on a real two-node Ray cluster on this machine.

``ray.cluster_utils.Cluster`` starts a head and a worker node (one CPU each) as real Ray processes;
the pipeline runs in a subprocess that joins it through ``runner.address``, exactly like a lab's
cluster. Checked: students run on both nodes (the MLflow tag says which), the results equal the
local runner's bit for bit, a SIGKILLed worker and a removed node each end with every student
trained once and exactly one finished MLflow run per student, and ``dvc status`` is clean.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.project import make_project
from tests.conftest import TINY

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -c constraints.txt -e .)")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c, worker
    c.shutdown()


@pytest.fixture(scope="module")
def ray_project(tmp_path_factory, prefect_port, cluster):
    """The tiny project after a full local-runner pipeline run: its students' hashes and results."""
    port, home = prefect_port
    proj = make_project(tmp_path_factory.mktemp("rayproj") / "kdp", port, TINY)
    proj.env["PREFECT_HOME"] = str(home)
    proj.run(sys.executable, "-m", "flows", "pipeline", timeout=900)
    local = {"models": student_hashes(proj.path), "results": test_accuracies(proj.path)}
    c, _ = cluster
    proj.write_params({**TINY, "runner": {"kind": "ray", "address": c.address}})
    proj.env["KDPRUNE_RETRAIN"] = "1"  # the Ray runner trains them again (unchanged students are reused otherwise)
    return proj, local


def student_hashes(root: Path) -> dict[str, str]:
    return {d.name: hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
            for d in sorted((root / "models" / "students").iterdir()) if d.is_dir()}


def test_accuracies(root: Path) -> dict[str, str]:
    with open(root / "reports" / "results.csv") as f:
        return {r["name"]: r["test_acc"] for r in csv.DictReader(f)}


test_accuracies.__test__ = False  # a helper, not a test


def student_runs(root: Path) -> list:
    """Every student run of the project's newest distill sweep, any status."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdprune")
    sweeps = client.search_runs([exp.experiment_id], "tags.`kdprune.sweep` = 'true'", order_by=["start_time DESC"],
                                max_results=1)
    return client.search_runs([exp.experiment_id], f"tags.`kdprune.sweep_run_id` = '{sweeps[0].info.run_id}'",
                              max_results=1000)


def one_finished_run_per_student(root: Path) -> list:
    runs = student_runs(root)
    names = [r.info.run_name for r in runs]
    expected = sorted(json.loads(p.read_text())["name"] for p in (root / "models" / "students").glob("*/metrics.json"))
    assert sorted(names) == expected, f"runs {sorted(names)} != students {expected}"
    assert {r.info.status for r in runs} == {"FINISHED"}
    return runs


def test_tiny_sweep_on_two_nodes_equals_the_local_runner_bit_for_bit(ray_project, cluster):
    proj, local = ray_project
    c, worker = cluster
    out = proj.run(sys.executable, "-m", "flows", "distill", timeout=900)
    assert "on ray runner" in out.stdout + out.stderr
    proj.run(sys.executable, "-m", "flows", "evaluate", timeout=600)
    assert student_hashes(proj.path) == local["models"]
    assert test_accuracies(proj.path) == local["results"]
    runs = one_finished_run_per_student(proj.path)
    nodes = {r.data.tags.get("kdprune.ray_node_id") for r in runs}
    assert nodes == {n.node_id for n in c.list_all_nodes()}, f"students ran on {nodes}"
    # the same params metrics and artifacts as the local runner's students, plus the node
    r = runs[0]
    assert {"method", "fraction", "kd_weight", "seed", "teacher_arch", "manifest_sha256"} <= set(r.data.params)
    assert {"best_val_acc", "val_acc", "steps", "wall_s"} <= set(r.data.metrics)
    # the runner is not a param of the stage (it does not change results): DVC finds everything up to date
    proj.run(sys.executable, "-m", "flows", "pipeline", timeout=600)  # records the validate stage only
    status = proj.run("dvc", "status", "--json")
    assert json.loads(status.stdout or "{}") == {}, status.stdout


def tree_hashes(root: Path, *dirs: str) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for d in dirs for f in sorted((root / d).rglob("*")) if f.is_file()}


def test_proxies_and_extra_teachers_on_two_nodes_equal_the_local_runner(ray_project, cluster):
    """scores' proxy and memorization runs and teachers' extra architectures: the same outputs under
    both runners, their runs on both nodes."""
    proj, _ = ray_project
    c, _ = cluster
    more = {**TINY, "scores": {**TINY["scores"], "methods": [*TINY["scores"]["methods"], "el2n_proxy", "memorization"],
                               "proxy_seeds": [0, 1], "proxy_epochs": 2, "el2n_proxy": {"epoch": 2},
                               "memorization_models": 2, "memorization_epochs": 2},
            "student": {**TINY["student"], "teachers": ["small_cnn_narrow", "small_cnn_wide"]}}
    outs = {}
    for kind, address in (("local", None), ("ray", c.address)):
        proj.write_params({**more, "runner": {"kind": kind, "address": address}})
        for stage in ("teachers", "scores"):
            proj.run(sys.executable, "-m", "flows", stage, timeout=900)
        outs[kind] = tree_hashes(proj.path, "models/teachers", "data/scores")
        record = json.loads((proj.path / ".kdprune" / "runs" / "teachers.json").read_text())
        nodes = {r["ray_node_id"] for r in record.values()}
        assert nodes == ({None} if kind == "local" else {n.node_id for n in c.list_all_nodes()}), nodes
    assert outs["ray"] == outs["local"]
    assert any(k.startswith("data/scores/el2n_proxy") for k in outs["ray"])
    assert "models/teachers/small_cnn_wide/model.safetensors" in outs["ray"]
    proj.write_params({**TINY, "runner": {"kind": "ray", "address": c.address}})


def test_a_worker_killed_mid_student_is_retried_once(ray_project):
    proj, local = ray_project
    out = proj.run(sys.executable, "-m", "flows", "distill", timeout=900, env={"KDPRUNE_FAULT": "distill:3:kill"})
    assert (proj.path / ".kdprune" / "faults" / "distill-3-kill").exists(), "the fault never fired"
    assert student_hashes(proj.path) == local["models"], out.stdout[-3000:]
    one_finished_run_per_student(proj.path)


def test_a_removed_node_loses_no_student(ray_project, cluster):
    proj, local = ray_project
    c, worker = cluster
    marker = proj.path / ".kdprune" / "faults" / "distill-2-pause"
    env = {**proj.env, "KDPRUNE_FAULT": "distill:2:pause", "KDPRUNE_FAULT_NODE": worker.node_id}
    with subprocess.Popen([sys.executable, "-m", "flows", "distill"], cwd=proj.path, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as p:
        deadline = time.time() + 600
        while not marker.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert marker.exists(), "no student paused on the worker node"
        c.remove_node(worker)  # the node goes away with a student in the middle of its training
        log, _ = p.communicate(timeout=900)
    assert p.returncode == 0, log[-4000:]
    assert student_hashes(proj.path) == local["models"]
    one_finished_run_per_student(proj.path)


@pytest.mark.parametrize("bad, key", [({"kind": "slurm"}, "runner.kind"),
                                      ({"kind": "ray", "address": "head-node"}, "runner.address"),
                                      ({"kind": "local", "address": "auto"}, "runner.address"),
                                      ({"cpus_per_task": 0}, "runner.cpus_per_task"),
                                      ({"gpus_per_task": 1.5}, "runner.gpus_per_task")])
def test_bad_runner_values_are_refused_before_any_compute(tiny_project, bad, key):
    proj = tiny_project
    before = (proj.path / "params.yaml").read_text()
    try:
        proj.write_params({**TINY, "runner": bad})
        out = proj.run(sys.executable, "-m", "flows", "pipeline", check=False, timeout=120)
    finally:
        (proj.path / "params.yaml").write_text(before)
    assert out.returncode == 2, out.stdout + out.stderr
    assert key in out.stderr, out.stderr
    assert "Beginning flow run" not in out.stdout + out.stderr and "Creating a local Ray" not in out.stdout + out.stderr


def test_the_runs_own_ray_starts_its_workers_at_the_stage_processes_priority():
    """Ray's default worker niceness is 15: students lost the CPU to any other process on a shared
    machine. The runner's Ray instance starts them at nice 0 (ray_env_defaults)."""
    code = ("import os\n"
            "from execution.runner import ray_env_defaults, ray_init_kwargs\n"
            "from kdprune.config import validate\n"
            "os.nice(-os.nice(0))\n"  # this process at 0 whatever the caller's niceness
            "ray_env_defaults()\n"
            "import ray\n"
            "ray.init(**ray_init_kwargs(validate({'runner': {'kind': 'ray', 'address': None}}, stage='prepare')))\n"
            "print('NICE', ray.get(ray.remote(lambda: os.nice(0)).remote()))\n"
            "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_worker_niceness"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    assert "NICE 0" in out.stdout, out.stdout + out.stderr[-2000:]
