"""Where CPU results may depend on the machine, and the setting that stops them (``reproducibility``).

torch, oneDNN, MKL and NumPy each pick their kernels by the CPU's instruction set, and split work by
thread count: on a machine with AVX-512 and AMX, four settings (native, one thread, kernels capped at
AVX2, both) trained four different digits teachers. Two settings of params.yaml decide it:

- ``reproducibility.threads``: torch's, MKL's, OpenMP's and OpenBLAS's thread count in each stage's
  own process (a task on the runner takes ``runner.cpus_per_task``), never the machine's core count.
- ``reproducibility.cpu``: ``portable`` pins every instruction-set choice measured to change a result
  at AVX2 (MKL: its COMPATIBLE branch), so the same params give the same bytes on x86-64 CPUs with AVX2 (README
  "Reproducibility"); ``native`` leaves them to the machine (its best kernels; bytes differ between CPUs).

What ``portable`` pins, each measured here to change the bytes when left native (AVX-512 machine):
ATen's CPU kernels (``ATEN_CPU_CAPABILITY``), oneDNN's convolutions (``ONEDNN_MAX_CPU_ISA``), MKL's
GEMMs and vector maths (``MKL_CBWR``: Intel's conditional numerical reproducibility, with dynamic thread
counts off; its ``COMPATIBLE`` branch, the one MKL keeps on every vendor's CPU: see ``PORTABLE_ENV``), and
NumPy's float64 ``exp``/``log`` (``NPY_DISABLE_CPU_FEATURES``: its AVX-512 loops round differently
from the AVX2 ones, which moves every softmax-based score). OpenBLAS (NumPy's and SciPy's BLAS,
scikit-learn's k-means) is held at its Haswell kernels. All of them are read once, when the library
first loads: :func:`apply` must run before torch or NumPy is imported, in every process that computes
(the stage's, and each Ray worker's through its runtime environment); :func:`check` then verifies, in
the process, that the pin took and sets torch's threads.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import MutableMapping

MODES = ("portable", "native")

# MKL: a fixed code branch (conditional numerical reproducibility), with a fixed thread count and no
# dynamic adjustment of it (MKL_DYNAMIC / OMP_DYNAMIC false). The branch is COMPATIBLE, not AVX2: MKL
# keeps a branch pin other than COMPATIBLE on Intel CPUs only. On an AMD EPYC, MKL_CBWR=AVX2 ran the
# AUTO branch (MKL_VERBOSE "CNR:AUTO", mkl_cbwr_get 2), so the committed dvc.lock recorded on an Intel
# CPU was not reproduced there (teacher and everything after it differed). COMPATIBLE measured no slower
# on the default pipeline (42.0 s vs 43.6 s): its GEMMs are small, convolutions run in oneDNN.
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # NumPy 2.x's AVX-512 dispatch targets
    "OPENBLAS_CORETYPE": "Haswell",
}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def environment(mode: str, threads: int) -> dict[str, str]:
    """The variables a process that computes under ``mode`` with ``threads`` threads starts with."""
    if mode not in MODES:
        raise ValueError(f"reproducibility.cpu must be one of {', '.join(MODES)}, got {mode!r}")
    env = {v: str(int(threads)) for v in THREAD_VARS}
    if mode == "portable":
        env.update(PORTABLE_ENV)
    return env


def apply(mode: str, threads: int, environ: MutableMapping[str, str] = os.environ) -> None:
    """Set :func:`environment` in ``environ`` (overriding what was there: a capability variable the
    shell set must not decide a result). Effective only before torch and NumPy are first imported."""
    environ.update(environment(mode, threads))


def cpu_capability() -> str:
    """The instruction set ATen's CPU kernels run at in this process ('AVX2', 'AVX512', ...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def check(mode: str, threads: int) -> dict:
    """In a process about to compute: torch set to ``threads`` threads, and under ``portable`` every pin
    in force (else RuntimeError saying why and what to do). Returns what explains a result: the
    setting, thread count, torch version and CPU capability (recorded in model JSONs and MLflow)."""
    import torch

    torch.set_num_threads(int(threads))
    cap = cpu_capability()
    if mode == "portable":
        wrong = {k: os.environ.get(k) for k, v in PORTABLE_ENV.items() if os.environ.get(k) != v}
        expected = "AVX2" if cpu_supports_avx2() else cap  # a CPU without AVX2 cannot run them: recorded as is
        branch = mkl_branch()
        if branch not in (None, PORTABLE_ENV["MKL_CBWR"]) and not wrong and cap == expected:
            raise RuntimeError(f"reproducibility.cpu is 'portable' but MKL runs its {branch} branch although "
                               f"MKL_CBWR={PORTABLE_ENV['MKL_CBWR']}: this MKL does not keep that pin on this CPU "
                               f"({_cpu_model() or platform.processor()}), so its results would differ from other "
                               "CPUs'. Use reproducibility.cpu: native here, and `make verify` to compare results")
        if cap != expected or wrong:
            why = (f"ATen runs {cap} kernels" if cap != expected else
                   "the environment has " + ", ".join(f"{k}={v}" for k, v in wrong.items()))
            raise RuntimeError(
                f"reproducibility.cpu is 'portable' but this process did not start under it ({why}): torch or NumPy "
                "was loaded before kdprune pinned their kernels. Run the stage through `python -m flows <stage>`, "
                "`dvc repro` or `make run` (they pin them first), or restart a long-lived process (`make serve`) "
                "after changing reproducibility.cpu")
        numpy = sys.modules.get("numpy")
        if numpy is not None and _numpy_avx512_on():
            raise RuntimeError("reproducibility.cpu is 'portable' but NumPy was imported before its AVX-512 loops "
                               "were switched off; run the stage through `python -m flows <stage>` or `dvc repro`")
    _CHECKED.update(provenance(mode, threads))
    return dict(_CHECKED)


_CHECKED: dict = {}  # what this process last verified (check): the stage's MLflow tags read it


def checked() -> dict:
    """The setting this process verified last (empty before any :func:`check`)."""
    return dict(_CHECKED)


# mkl_cbwr.h: MKL_CBWR_BRANCH selects the branch in mkl_cbwr_get; the values it returns
_MKL_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX",
                 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}


def mkl_branch() -> str | None:
    """The code branch torch's MKL runs in this process ("COMPATIBLE", "AUTO", ...), as MKL itself reports
    it (``mkl_cbwr_get``, exported by libtorch_cpu as ``mkl_serv_cbwr_get``); None for a torch without MKL."""
    import ctypes

    import torch

    if not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):  # another build layout (e.g. MKL as a shared library of its own)
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    code = get(1) & 0xFFFF  # MKL_CBWR_BRANCH; the STRICT flag (0x10000) masked off
    return _MKL_BRANCHES.get(code, str(code))


def _numpy_avx512_on() -> bool:
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # another NumPy layout: nothing to check
        return False
    return any(__cpu_features__.get(f) for f in __cpu_dispatch__ if f in PORTABLE_ENV["NPY_DISABLE_CPU_FEATURES"].split())


def arithmetic() -> str:
    """A fingerprint of this process's floating-point arithmetic: 16 hex digits of the sha256 of a fixed
    computation through the kernel families the pipeline's results rest on (oneDNN's convolution forward
    and backward, MKL's GEMM, ATen's batch norm, pooling, softmax and reductions, NumPy's float64 exp and
    log, OpenBLAS's GEMM), at this process's settings and threads. Two machines with the same fingerprint
    computed these bits alike; different fingerprints explain different outputs (the evaluate stage
    writes it to reports/compute.json beside the outs; tests/test_lineage.py reads it). Uses its own
    generators: no global RNG is touched."""
    import hashlib

    import numpy as np
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 16, 16, generator=g)
    w1 = torch.randn(16, 3, 3, 3, generator=g).requires_grad_()
    w2 = (torch.randn(10, 16 * 8 * 8, generator=g) * 0.05).requires_grad_()
    y = torch.randint(0, 10, (32,), generator=g)
    with torch.enable_grad():
        h = F.max_pool2d(F.relu(F.batch_norm(F.conv2d(x, w1, padding=1), None, None, training=True)), 2)
        loss = F.cross_entropy(F.linear(h.flatten(1), w2), y)
        loss.backward()
    a = np.random.default_rng(0).standard_normal((64, 64))
    digest = hashlib.sha256()
    for t in (loss.detach().numpy(), w1.grad.numpy(), w2.grad.numpy(), np.exp(a) + np.log1p(np.abs(a)), a @ a.T):
        digest.update(np.ascontiguousarray(t).tobytes())
    return digest.hexdigest()[:16]


def provenance(mode: str, threads: int) -> dict:
    """The setting and the software it ran under, as stored in a model's JSON: no host name, and only
    what is the same wherever the bytes are (the torch release, not its build suffix)."""
    import torch

    return {"reproducibility": mode, "threads": int(threads),
            "torch": torch.__version__.split("+")[0], "cpu_capability": cpu_capability()}


def machine() -> dict:
    """Run-to-run facts for MLflow (never a DVC out): the torch build and the processor."""
    import torch

    return {"torch_build": torch.__version__, "processor": _cpu_model() or platform.processor(),
            "machine": platform.machine(), "cores": os.cpu_count()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_supports_avx2() -> bool:
    """Whether this CPU can run the portable kernels (x86-64 with AVX2 and FMA)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags
