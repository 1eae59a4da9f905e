"""What a piece of work costs: wall seconds and peak extra memory (the selection cost the report puts
beside accuracy). Figures that differ from run to run: they go to MLflow and the run records
(telemetry/runlog.py), never into a DVC output."""
from __future__ import annotations

import contextlib
import threading
import time
import tracemalloc

import torch


@contextlib.contextmanager
def measure_cost():
    """Wall seconds and peak extra memory (max of process RSS growth, traced Python/NumPy peak, CUDA peak)."""
    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], proc.memory_info().rss)

    th = threading.Thread(target=poll, daemon=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    tracemalloc.start()
    th.start()
    out: dict = {}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - t0
        stop.set()
        th.join()
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peak[0] = max(peak[0], proc.memory_info().rss)
        cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        out["peak_mem_mb"] = max(peak[0] - base, traced, cuda) / 2**20
