"""Device resolution: ``auto`` picks CUDA when present, else CPU."""
from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} was asked for but CUDA is not available on this machine; "
            "set device: auto or device: cpu in params.yaml"
        )
    return torch.device(name)


def device_count(name: str = "auto") -> int:
    """How many training devices the stage may use concurrently."""
    dev = resolve_device(name)
    if dev.type == "cuda":
        return 1 if dev.index is not None else torch.cuda.device_count()
    return 1
