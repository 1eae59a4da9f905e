"""Models and data on the training device: safetensors model directories (no pickle) and the
prepared splits as device tensors. Used by the stages that train or evaluate models."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load, save

from kdprune.data import PreparedSplit
from kdprune.models import build_model
from kdprune.train import DeviceData, seeded
from artifacts.files import IntegrityError, atomic_write_bytes, atomic_write_json, load_json, rebuild_hint


def save_model(directory: Path, model, info: dict) -> None:
    """Weights as safetensors plus model.json (architecture and input shape) in ``directory``."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(Path(directory) / "model.safetensors", save(state))
    atomic_write_json(Path(directory) / "model.json", info)


def state_arrays(model) -> dict:
    """A model's weights as numpy arrays of their own (a task's result: no tensor shares them)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def state_tensors(state: dict) -> dict:
    """Weights as tensors, from :func:`state_arrays` (copied: arrays from Ray's object store are read-only)."""
    import numpy as np
    import torch

    return {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v)) for k, v in state.items()}


def model_from_state(arch: str, in_channels: int, num_classes: int, image_size: int, state: dict):
    """A model of ``arch`` holding ``state`` (tensors or numpy arrays). Built under a fixed seed:
    its throw-away initialisation never draws from torch's global RNG, which a training in another
    thread (the local runner) may be using."""
    with seeded(0):
        model = build_model(arch, in_channels, num_classes, image_size)
    model.load_state_dict(state_tensors(state))
    return model


def load_model(directory: Path, device):
    """Rebuild a model saved by :func:`save_model` (no pickle involved)."""
    directory = Path(directory)
    info = load_json(directory / "model.json")
    try:
        arch = (info["arch"], info["in_channels"], info["num_classes"], info["image_size"])
    except (KeyError, TypeError) as e:
        raise IntegrityError(f"{directory / 'model.json'} is corrupt: no {e} in it; "
                             f"{rebuild_hint(directory / 'model.json')}") from None
    weights = directory / "model.safetensors"
    try:
        state = load(weights.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{weights} is missing; {rebuild_hint(weights)}") from None
    except Exception as e:  # safetensors' SafetensorError: a truncated or corrupt file
        raise IntegrityError(f"{weights} is truncated or corrupt ({e}); {rebuild_hint(weights)}") from None
    model = model_from_state(*arch, state)
    return model.to(device).eval(), info


def device_data(meta: dict, split: PreparedSplit, device) -> DeviceData:
    """A prepared split on ``device``, normalised with the training split's mean and std. Arrays
    read from Ray's object store are read-only; torch gets its own copy of those."""
    x, y = (a if a.flags.writeable else a.copy() for a in (split.x, split.y))
    return DeviceData.from_numpy(x, y, meta["mean"], meta["std"], device)
