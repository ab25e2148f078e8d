"""The torch device of a stage (embed, train, predict, the benchmarks): one rule and one error for all of them."""

from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an explicit CUDA device on a machine without one fails here, in
    one line, before any work (not deep inside the first forward pass)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available here; use --device cpu or auto")
    return dev
