"""Models and data on the training device: safetensors model directories (no pickle) and the
prepared splits as device tensors. Used by the stages that train or evaluate models."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from safetensors.torch import load, save

from kdprune.data import PreparedSplit
from kdprune.data.stream import StreamDataset, StreamSpec, default_workers
from kdprune.models import build_model
from kdprune.train import DeviceData, seeded
from kdprune.train.stream import StreamData
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


def device_data(meta: dict, split: PreparedSplit, device, params: Optional[dict] = None) -> "DeviceData | StreamData":
    """A prepared split as the trainer's data source, normalised with the training split's mean and std:
    on ``device`` as one tensor, or, for a streamed dataset, read from ``params``' data.root by
    data.workers processes in batches (``params`` required then). Arrays read from Ray's object store
    are read-only; torch gets its own copy of those."""
    if split.streamed:
        return stream_data(meta, split, device, params)
    x, y = (a if a.flags.writeable else a.copy() for a in (split.x, split.y))
    return DeviceData.from_numpy(x, y, meta["mean"], meta["std"], device)


def stream_data(meta: dict, split: PreparedSplit, device, params: Optional[dict]) -> StreamData:
    """A streamed split (its index from the prepare stage) read from data.root with data.workers processes."""
    if params is None:
        raise ValueError(f"{meta['dataset']} is streamed from files: device_data needs the params (data.root, "
                         "data.workers)")
    dp = params.data
    if dp.root is None:
        raise ValueError(f"{meta['dataset']} is streamed from files: data.root must name their directory")
    workers = default_workers() if dp.workers is None else dp.workers
    files, sizes, ids, y = (a if a.flags.writeable else a.copy() for a in (split.files, split.sizes, split.ids, split.y))
    dataset = StreamDataset(Path(dp.root).expanduser(), files, sizes, ids, StreamSpec.from_meta(meta["stream"]))
    return StreamData(dataset, y, meta["mean"], meta["std"], device, workers)
