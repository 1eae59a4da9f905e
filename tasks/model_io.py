"""Models and data on the training device: safetensors model directories (no pickle) and the
prepared splits as device tensors. Used by the stages that train or evaluate models."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load, save

from kdprune.data import PreparedSplit
from kdprune.models import build_model
from kdprune.train import DeviceData
from tasks.common import atomic_write_bytes, atomic_write_json


def save_model(directory: Path, model, info: dict) -> None:
    """Weights as safetensors plus model.json (architecture and input shape) in ``directory``."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(Path(directory) / "model.safetensors", save(state))
    atomic_write_json(Path(directory) / "model.json", info)


def load_model(directory: Path, device):
    """Rebuild a model saved by :func:`save_model` (no pickle involved)."""
    directory = Path(directory)
    info = json.loads((directory / "model.json").read_text())
    model = build_model(info["arch"], info["in_channels"], info["num_classes"], info["image_size"])
    model.load_state_dict(load((directory / "model.safetensors").read_bytes()))
    return model.to(device).eval(), info


def device_data(meta: dict, split: PreparedSplit, device) -> DeviceData:
    """A prepared split on ``device``, normalised with the training split's mean and std."""
    return DeviceData.from_numpy(split.x, split.y, meta["mean"], meta["std"], device)
