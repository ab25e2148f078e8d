"""Checkpoints: written atomically, and each carries all it needs to rebuild its model and its inputs.

A checkpoint is data, never code: it holds tensors and plain Python values only, and is read with
``torch.load(..., weights_only=True)``, which refuses anything else (a pickled object would run code on load).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import CheckpointError
from ..store import LAYOUT_VERSION, provenance
from ._runs import fold_dir, parse_run_dir, run_dir

__all__ = [
    "run_dir",
    "parse_run_dir",
    "fold_dir",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "model_skeleton",
    "empty_state",
]

CHECKPOINT_FORMAT = 1
_REQUIRED = ("model_name", "model_kwargs", "state_dict", "classes", "in_dim", "encoder", "config")


def save_checkpoint(path: Path, model: nn.Module, **meta: Any) -> Path:
    """Write a checkpoint atomically: ``meta`` (model_name, model_kwargs, classes, in_dim, encoder, config, ...)
    plus the state dict, the package version and the store layout version."""
    from ..files import atomic_path

    payload = {
        "format": CHECKPOINT_FORMAT,
        "package_version": __version__,
        "layout_version": LAYOUT_VERSION,
        "provenance": provenance(),
        **meta,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    # Serialised in memory, then written by Python: a full disk is an OSError naming the file (torch's own
    # writer turns it into a RuntimeError without the path).
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        tmp.write_bytes(buffer.getbuffer())
        tmp.replace(path)
    except OSError as err:
        err.filename = err.filename or str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)  # a full disk must not keep half a checkpoint (it keeps the disk full)
    return path


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by ``train``, or raise ``CheckpointError`` saying what is wrong.

    ``mmap``: the tensors of ``state_dict`` are mapped from the file instead of read into memory: nothing of them
    is read until used, and what is read is the file's pages (shared with the page cache, dropped when the last
    tensor goes), not a private copy.
    """
    path = Path(path)
    wanted = "pass the checkpoint_best.pt (or checkpoint_last.pt) of a train run, e.g. RUN/fold_0/checkpoint_best.pt"
    if path.is_dir():
        found = sorted(path.glob("**/checkpoint_best.pt"))[:2]
        hint = f" such as {found[0]}" if found else ""
        raise CheckpointError(f"{path}: is a folder; pass a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; {wanted}")
    try:
        # Only torch's zip format (torch.save's default since 1.6) can be mapped; an older file is read.
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower():
            raise CheckpointError(f"{path}: not a torch checkpoint ({err.__class__.__name__}); {wanted}") from err
        # weights_only refused an object that is not plain data: a checkpoint of another program or an old one.
        raise CheckpointError(
            f"{path}: holds Python objects beyond tensors and plain values, which are not loaded (loading them "
            f"could run code); {wanted}, written by this version"
        ) from err
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
        # A wrong path is far likelier than a damaged checkpoint: say what the file is not, and what to pass.
        raise CheckpointError(f"{path}: not a torch checkpoint ({err.__class__.__name__}); {wanted}") from err
    missing = [key for key in _REQUIRED if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a wsi-pipeline checkpoint (missing {', '.join(missing)}); {wanted}")
    return ckpt


def _build(ckpt: dict[str, Any], weights: dict[str, torch.Tensor] | None) -> nn.Module:
    """The model a checkpoint describes, with ``weights`` loaded (``None``: its random initial ones); a
    ``CheckpointError`` naming the model when the checkpoint does not fit it."""
    from ..mil import checkpoint_model_kwargs, create_model

    try:
        kwargs = checkpoint_model_kwargs(ckpt["model_name"], ckpt["model_kwargs"], ckpt["state_dict"])
        model = create_model(ckpt["model_name"], **kwargs)
        if weights is not None:
            model.load_state_dict(weights)
    except (ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"checkpoint of model {ckpt['model_name']!r} does not load: {err}") from err
    return model


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    return _build(ckpt, ckpt["state_dict"]).to(device).eval()


def model_skeleton(ckpt: dict[str, Any]) -> nn.Module:
    """The model a checkpoint describes without its weights (eval mode): every tensor of its state dict is on the
    meta device (a shape, no memory) until a state dict is loaded into it with ``assign=True``, which makes that
    state dict's tensors its own (no copy). Its random initial weights are made once, then dropped."""
    model = _build(ckpt, None)
    model.load_state_dict(empty_state(model.state_dict()), assign=True)
    return model.eval()


def empty_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta tensors of the shapes and dtypes of ``state_dict``: loaded with ``assign=True``, a model lets go of
    its weights."""
    return {key: torch.empty_like(value, device="meta") for key, value in state_dict.items()}
