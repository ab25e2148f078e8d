"""Weights: local checkpoints (``.pth``/``.bin``/``.safetensors``) with key remapping, the Hugging Face cache and
hub, and an offline mode that fails with a message saying how to provide the file.

Every path ends in one local file loaded by ``load_checkpoint``, so its sha256 is always known and recorded.
Gated repositories are never assumed to be accessible: a refusal becomes a ``WeightsError`` naming the page where
access is requested and the ``--weights PATH`` alternative.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError
from ..provenance import file_sha256

__all__ = [
    "WeightsInfo",
    "file_sha256",
    "read_state_dict",
    "remap_state_dict",
    "load_checkpoint",
    "hub_file",
    "offline_requested",
    "find_checkpoint_file",
]

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "teacher", "student")
_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "_orig_mod.")
_HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head_drop.", "heads.")


@dataclass(frozen=True)
class WeightsInfo:
    """Where an encoder's weights came from: ``source`` is random, local, hub or hf-cache."""

    source: str
    location: str = ""
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def offline_requested(flag: bool = False) -> bool:
    """True when asked explicitly or by ``HF_HUB_OFFLINE`` (the Hugging Face convention)."""
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(flag) or env in ("1", "true", "yes", "on")


def find_checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or the single checkpoint inside a folder (safetensors preferred)."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise WeightsError(f"{path}: not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)} expected)")
        return path
    if path.is_dir():
        for suffix in CHECKPOINT_SUFFIXES:
            found = sorted(path.glob(f"*{suffix}"))
            if found:
                return found[0]
        raise WeightsError(f"{path}: no checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}) in this folder")
    raise WeightsError(f"{path}: no such weights file; check --weights")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from ``{"state_dict": ...}``/``{"model": ...}`` containers."""
    path = find_checkpoint_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            # weights_only: a checkpoint is data, never code to run.
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decoding failure means an unusable file
        raise WeightsError(f"{path}: cannot read this checkpoint ({err.__class__.__name__}: {err})") from err
    for _ in range(3):
        if isinstance(data, Mapping) and not _is_tensor_dict(data):
            inner = next((data[k] for k in _WRAPPER_KEYS if k in data and isinstance(data[k], Mapping)), None)
            if inner is None:
                break
            data = inner
    if not isinstance(data, Mapping) or not _is_tensor_dict(data):
        raise WeightsError(f"{path}: no state_dict of tensors found in this checkpoint")
    return {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _is_tensor_dict(data: Mapping[str, Any]) -> bool:
    return bool(data) and all(isinstance(v, torch.Tensor) for v in data.values())


def _strip_prefixes(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (``module.``, ``model.``, ``backbone.`` ...) that the model's own keys lack."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if any(k.startswith(prefix) for k in model_keys):
                continue
            hits = [k for k in state if k.startswith(prefix)]
            if hits and len(hits) >= len(state) / 2:
                state = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}
                changed = True
    return state


def _pair_by_order(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    if len(state) != len(target):
        raise WeightsError(
            f"{source}: cannot pair by order, the checkpoint has {len(state)} tensors and the model {len(target)}"
        )
    out = {}
    for (ck, cv), (mk, mv) in zip(state.items(), target.items(), strict=True):
        if tuple(cv.shape) != tuple(mv.shape):
            raise WeightsError(
                f"{source}: cannot pair by order, {ck} {tuple(cv.shape)} meets {mk} {tuple(mv.shape)}; "
                "this checkpoint is for another architecture"
            )
        out[mk] = cv
    return out


def _shapes_line_up(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> bool:
    return len(state) == len(target) and all(
        tuple(a.shape) == tuple(b.shape) for a, b in zip(state.values(), target.values(), strict=True)
    )


def remap_state_dict(
    state: dict[str, torch.Tensor], model: nn.Module, *, remap: str = "auto", source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Checkpoint tensors renamed to the model's keys.

    ``remap="auto"`` strips wrapper prefixes and drops classifier tensors the headless model has no place for;
    ``"by_order"`` pairs tensors one to one in order, checking every shape (for checkpoints whose names differ,
    such as the lukemelas EfficientNet ones); a checkpoint whose names already fit is matched by name.
    """
    target = model.state_dict()
    if remap == "by_order":
        named = _strip_prefixes(dict(state), set(target))
        if set(named) == set(target):  # names already fit (e.g. timm's own file, saved sorted by safetensors)
            return named
        return _pair_by_order(state, target, source)
    if remap != "auto":
        raise WeightsError(f"{source}: weights_remap={remap!r} is not one of auto, by_order")
    state = _strip_prefixes(dict(state), set(target))
    extra = [k for k in state if k not in target]
    dropped = [k for k in extra if k.startswith(_HEAD_PREFIXES)]
    if dropped:
        log.info("%s: dropping %d classifier tensors the encoder does not use", source, len(dropped))
        state = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        hint = (
            "; names differ but shapes line up in order: use weights_remap=by_order (--set weights_remap=by_order)"
            if _shapes_line_up(state, target)
            else "; is it a checkpoint for this encoder?"
        )
        raise WeightsError(
            f"{source}: keys do not match the model ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]}){hint}"
        )
    return state


def load_checkpoint(model: nn.Module, path: str | Path, *, remap: str = "auto") -> WeightsInfo:
    """Load a local checkpoint into ``model`` (strictly, after remapping) and return its provenance."""
    file = find_checkpoint_file(path)
    state = remap_state_dict(read_state_dict(file), model, remap=remap, source=str(file))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0:2]
        raise WeightsError(f"{file}: does not fit the model ({' '.join(first)})") from err
    return WeightsInfo(source="local", location=str(file.resolve()), sha256=file_sha256(file))


def _how_to_provide(repo: str) -> str:
    return (
        f"download it where there is internet (`hf download {repo}` after accepting its terms at "
        f"https://huggingface.co/{repo} and `hf auth login`) and copy the Hugging Face cache (HF_HOME) here, "
        "or pass the file with --weights PATH"
    )


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (one DNS lookup and TCP connect, 5 s at most), or None.

    Without it, huggingface_hub retries a dead network with backoff for tens of seconds per file before failing.
    Behind a proxy only a real request can tell, so nothing is probed then.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=5):
            return None
    except OSError as err:
        return f"{host}:{port} cannot be reached ({err.strerror or err.__class__.__name__})"


def hub_file(repo: str, filenames: Sequence[str], *, offline: bool = False, what: str = "weights") -> Path:
    """The first of ``filenames`` in the Hugging Face repository ``repo``: from the cache, else downloaded.

    Offline (``offline=True`` or ``HF_HUB_OFFLINE=1``) only the cache is used. Online, the cache is tried first and
    an unreachable hub fails at once, with the same advice as offline.
    """
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise WeightsError(f"{what}: huggingface_hub is not installed; pass --weights PATH instead") from err
    offline = offline_requested(offline)
    files = "/".join(filenames)
    errors: list[Exception] = []

    def first_found(local_only: bool) -> Path | None:
        for filename in filenames:
            try:
                return Path(hf_hub_download(repo, filename, local_files_only=local_only))
            except GatedRepoError as err:
                raise WeightsError(
                    f"{what}: https://huggingface.co/{repo} is gated and this account has no access; request access "
                    f"there and run `hf auth login`, or pass the file with --weights PATH"
                ) from err
            except RepositoryNotFoundError as err:
                raise WeightsError(
                    f"{what}: Hugging Face repository {repo} not found (or private); check the name, log in with "
                    "`hf auth login`, or pass --weights PATH"
                ) from err
            except Exception as err:  # noqa: BLE001 - cache misses, missing entries and network errors alike
                errors.append(err)
        return None

    found = first_found(local_only=True)  # the cache first: never a request for a file already here
    if found is None and not offline:
        unreachable = _hub_unreachable()
        if unreachable:
            raise WeightsError(
                f"{what}: {files} of {repo}: not in the Hugging Face cache, and {unreachable}: no network here?; "
                f"{_how_to_provide(repo)}"
            )
        found = first_found(local_only=False)
    if found is not None:
        return found
    mode = "offline, and it is not in the Hugging Face cache" if offline else "it could not be downloaded"
    reason = f" ({errors[-1].__class__.__name__})" if errors else ""
    raise WeightsError(f"{what}: {files} of {repo}: {mode}{reason}; {_how_to_provide(repo)}")
