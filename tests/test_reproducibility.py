"""reproducibility.cpu: under ``portable`` a teacher, a score and a student come out as the same bytes
whatever CPU-capability and thread settings the process was started with; under ``native`` they do
not (the control that shows the check can fail). kdprune/reproducibility.py says what is pinned."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.project import REPO
from kdprune import reproducibility as R

PROBE = Path(__file__).with_name("portable_probe.py")
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "3"}
# a start as on a machine with nothing better than SSE4.1, and other thread counts: under `native` it
# changes the kernels of every library the probe uses (on any machine with AVX2)
OLD_CPU = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE",
           "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR", "OPENBLAS_CORETYPE": "Nehalem",
           "MKL_DYNAMIC": "TRUE", **THREADS}
# a start that asks for the newest kernels (what a shell on an AVX-512/AMX machine may carry)
NEW_CPU = {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "MKL_CBWR": "AUTO",
           "NPY_DISABLE_CPU_FEATURES": ""}


def probe(mode: str, start_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (*R.PORTABLE_ENV, *R.THREAD_VARS)}
    env.update(start_env, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(PROBE), mode], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


needs_avx2 = pytest.mark.skipif(not R.cpu_supports_avx2(), reason="the portable kernels need an x86-64 CPU with AVX2")


@needs_avx2
def test_portable_results_do_not_depend_on_the_starting_environment():
    runs = [probe("portable", env) for env in ({}, OLD_CPU, NEW_CPU)]
    for r in runs[1:]:
        assert r == runs[0], "under reproducibility.cpu portable the bytes depend on how the process was started"
    assert runs[0]["compute"] == {"reproducibility": "portable", "threads": 2, "torch": runs[0]["compute"]["torch"],
                                  "cpu_capability": "AVX2"}


def test_mkl_runs_the_branch_portable_pins():
    """MKL keeps a branch pin other than COMPATIBLE on Intel CPUs only (on an AMD EPYC, MKL_CBWR=AVX2 ran
    its AUTO branch): the pin must be one MKL keeps on this CPU, as MKL itself reports it."""
    env = {**{k: v for k, v in os.environ.items() if k not in (*R.PORTABLE_ENV, *R.THREAD_VARS)},
           "PYTHONPATH": str(REPO)}
    code = ("from kdprune.reproducibility import apply, check, mkl_branch\napply('portable', 1)\n"
            "import torch\ncheck('portable', 1)\nprint(mkl_branch())\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] in ("None", R.PORTABLE_ENV["MKL_CBWR"])


@needs_avx2
def test_native_results_do_depend_on_it():
    """The control: without the setting the same starts give other bytes, so the test above can fail."""
    plain, old = probe("native", {}), probe("native", OLD_CPU)
    assert plain["teacher"] != old["teacher"] and plain["student"] != old["student"]
    assert plain["arithmetic"] != old["arithmetic"]  # the fingerprint sees the arithmetic that moved them
    assert old["compute"]["cpu_capability"] == "DEFAULT"


def test_the_environment_overrides_what_the_shell_set():
    env = dict(NEW_CPU)
    R.apply("portable", 3, env)
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["MKL_CBWR"] == "COMPATIBLE"
    assert env["NPY_DISABLE_CPU_FEATURES"] and all(env[v] == "3" for v in R.THREAD_VARS)
    env = dict(NEW_CPU)
    R.apply("native", 1, env)
    assert env["ATEN_CPU_CAPABILITY"] == "avx512" and env["OMP_NUM_THREADS"] == "1"  # native: only the threads


def test_a_process_that_loaded_torch_unpinned_is_refused():
    code = ("import torch, os\ntorch.zeros(4).sum()\nfrom kdprune.reproducibility import apply, check\n"
            "apply('portable', 1)\ncheck('portable', 1)\n")
    env = {**{k: v for k, v in os.environ.items() if k not in (*R.PORTABLE_ENV, *R.THREAD_VARS)},
           "ATEN_CPU_CAPABILITY": "default", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "did not start under it" in out.stderr


def test_cluster_workers_get_the_pin_in_their_runtime_environment():
    from execution.runner import ray_init_kwargs

    from kdprune.config import validate

    params = validate({"runner": {"kind": "ray", "address": "auto", "cpus_per_task": 3},
                       "reproducibility": {"cpu": "portable", "threads": 2}}, stage="prepare")
    env = ray_init_kwargs(params)["runtime_env"]["env_vars"]
    assert {k: env[k] for k in R.PORTABLE_ENV} == R.PORTABLE_ENV and env["OMP_NUM_THREADS"] == "3"
