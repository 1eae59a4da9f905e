"""The teacher as an MLflow model in the Model Registry."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from artifacts.files import atomic_write_json


def teacher_model_name(dataset: str) -> str:
    return f"kdprune-teacher-{dataset}"


def _fmt(x, spec: str) -> str:
    try:
        return format(x, spec)
    except (TypeError, ValueError):
        return "?"


def teacher_description(info: dict, meta: dict, metrics: dict, test_acc: Optional[float] = None) -> str:
    """The registered version's description (markdown, shown on its page in the Model Registry)."""
    c, h, w = meta["shape"]
    n_test = (meta.get("sizes") or {}).get("test")
    acc = (f"**test accuracy {100 * test_acc:.2f}%** ({_fmt(n_test, ',')} test images, measured by the evaluate "
           "stage); " if test_acc is not None else "test accuracy: added when the evaluate stage runs; ")
    val = metrics.get("val_acc")
    return (f"kdprune teacher `{info.get('arch', '?')}` for **{meta['dataset']}** ({meta['num_classes']} classes, "
            f"{c}x{h}x{w} images), {_fmt(info.get('n_params'), ',')} parameters, trained on the full pool of "
            f"{_fmt(metrics.get('n_train'), ',')} examples. {acc}validation accuracy "
            f"{_fmt(100 * val if val is not None else None, '.2f')}% at its best epoch "
            f"({metrics.get('best_epoch', '?')}). It scores the examples and is the students' distillation teacher."
            f"\n\nLoad it: `mlflow.pyfunc.load_model(\"models:/{teacher_model_name(meta['dataset'])}/<version>\")`; "
            f"`predict` takes uint8 images [N, {c}, {h}, {w}] and returns float32 logits [N, {meta['num_classes']}]. "
            "Weights: safetensors; code: the kdprune package (no pickle).")


def teacher_tags(info: dict, meta: dict, metrics: dict) -> dict:
    return {"dataset": meta["dataset"], "arch": info.get("arch", ""),
            "n_params": info.get("n_params", ""), "n_train": metrics.get("n_train", ""),
            "val_acc": _fmt(metrics.get("val_acc"), ".4f"), "best_epoch": metrics.get("best_epoch", "")}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def register_teacher(root: Path, tr, run_id: str, model_dir: Path, meta: dict) -> None:
    """The teacher as an MLflow model in the Model Registry (``kdprune-teacher-<dataset>``, one version
    per retrain): a pyfunc model from code (tracking/teacher_model.py) with the safetensors weights as an
    artifact, so nothing is pickled; the core package travels as its code. The version carries a
    description and tags (architecture, dataset, validation accuracy); the evaluate stage's test
    accuracy is added by :func:`describe_teacher_version`."""
    import importlib.metadata as md

    import kdprune

    norm = root / ".kdprune" / "mlflow" / run_id / "input.json"  # read by the writer process, later
    atomic_write_json(norm, {"mean": list(map(float, meta["mean"])), "std": list(map(float, meta["std"]))})
    c, h, w = meta["shape"]
    signature = {"inputs": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, c, h, w]}}]),
                 "outputs": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float32",
                                                                           "shape": [-1, meta["num_classes"]]}}])}
    info, metrics = _read(model_dir / "model.json"), _read(model_dir / "metrics.json")
    tr.log_model(run_id, "teacher", teacher_model_name(meta["dataset"]), Path(__file__).with_name("teacher_model.py"),
                 {"weights": model_dir / "model.safetensors", "model_json": model_dir / "model.json", "input": norm},
                 [Path(kdprune.__file__).parent],
                 [f"{p}=={md.version(p)}" for p in ("mlflow", "torch", "safetensors", "numpy")], signature,
                 teacher_description(info, meta, metrics), teacher_tags(info, meta, metrics))


def describe_teacher_version(root: Path, tr, teacher_run_id: str, meta: dict, test_acc: float) -> None:
    """Add the evaluate stage's test accuracy to the teacher's registered version (description and tag)."""
    model_dir = root / "models" / "teacher"
    info, metrics = _read(model_dir / "model.json"), _read(model_dir / "metrics.json")
    tr.describe_model_version(teacher_model_name(meta["dataset"]), teacher_run_id,
                              teacher_description(info, meta, metrics, test_acc),
                              {**teacher_tags(info, meta, metrics), "test_acc": f"{test_acc:.4f}"})
