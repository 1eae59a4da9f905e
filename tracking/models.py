"""The teacher as an MLflow model in the Model Registry."""
from __future__ import annotations

import json
from pathlib import Path

from artifacts.files import atomic_write_json


def register_teacher(root: Path, tr, run_id: str, model_dir: Path, meta: dict) -> None:
    """The teacher as an MLflow model in the Model Registry (``kdprune-teacher-<dataset>``, one version
    per retrain): a pyfunc model from code (tracking/teacher_model.py) with the safetensors weights as an
    artifact, so nothing is pickled; the core package travels as its code."""
    import importlib.metadata as md

    import kdprune

    norm = root / ".kdprune" / "mlflow" / run_id / "input.json"  # read by the writer process, later
    atomic_write_json(norm, {"mean": list(map(float, meta["mean"])), "std": list(map(float, meta["std"]))})
    c, h, w = meta["shape"]
    signature = {"inputs": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, c, h, w]}}]),
                 "outputs": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float32",
                                                                           "shape": [-1, meta["num_classes"]]}}])}
    tr.log_model(run_id, "teacher", f"kdprune-teacher-{meta['dataset']}", Path(__file__).with_name("teacher_model.py"),
                 {"weights": model_dir / "model.safetensors", "model_json": model_dir / "model.json", "input": norm},
                 [Path(kdprune.__file__).parent],
                 [f"{p}=={md.version(p)}" for p in ("mlflow", "torch", "safetensors", "numpy")], signature)
