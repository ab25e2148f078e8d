"""Fingerprints: what made each artifact, so that a stage reuses a result only when the same things would make it
again, and otherwise says what changed.

One chain runs through the pipeline (docs/reuse.md has the table):

* a **slide** is known by cheap, path-independent facts (``slide_identity``): its size in bytes, dimensions, vendor,
  a hash of its properties and of the first and last 64 KiB of the file. A moved slide is the same slide, a
  replaced one is not.
* a **tile store** records the slide's identity and ``tiles_fingerprint``: the slide, the resolution used and the
  tiles themselves (coordinates, read level and size), i.e. exactly what an encoder will read.
* a **features array** records ``features_fingerprint``: its store's tiles fingerprint, the settings that change
  embeddings (encoder, weights' sha256, preprocessing, precision, stored dtype) and the sha256 of the embeddings.
* a **training run** records the result-changing settings, the labels, the slide set and every bag's features
  fingerprint; a **prediction** records the model's sha256 and the features fingerprint it read.

This module is pure (standard library only): hashing, canonical JSON and one-line descriptions of what changed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "HEAD_TAIL_BYTES",
    "fingerprint",
    "file_sha256",
    "head_tail_sha256",
    "changes",
    "flatten",
    "short",
    "slide_changes",
    "tiles_fingerprint",
    "features_fingerprint",
    "weights_label",
    "weights_identity",
]

HEAD_TAIL_BYTES = 64 * 1024  # read from each end of a slide file for its identity: cheap on any file system


def _plain(value: Any) -> Any:
    """JSON-safe and canonical: tuples are lists, floats that are integers stay floats, NaN is a string."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    return value


def fingerprint(data: Any) -> str:
    """The sha256 (hex) of ``data`` as canonical JSON (sorted keys): equal data, equal fingerprint."""
    text = json.dumps(_plain(data), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 (hex) of a whole file, read in 1 MiB blocks (weights, checkpoints)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def head_tail_sha256(path: str | Path, n_bytes: int = HEAD_TAIL_BYTES) -> str:
    """The sha256 of the first and last ``n_bytes`` of a file (all of it when it is smaller): two small reads,
    whatever the file's size, that differ for any other slide (headers, tile offsets and the last tiles)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        digest.update(handle.read(n_bytes))
        size = handle.seek(0, 2)
        if size > n_bytes:
            handle.seek(max(n_bytes, size - n_bytes))
            digest.update(handle.read(n_bytes))
    return digest.hexdigest()


def short(value: Any, width: int = 40) -> str:
    """A value as a user reads it in a one-line message: sha256s shortened, long lists and mappings elided."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    if isinstance(value, float):
        return f"{value:g}"
    text = json.dumps(_plain(value), separators=(",", ":"), default=str) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 3] + "..."


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changes(old: Mapping[str, Any] | None, new: Mapping[str, Any], *, limit: int = 6) -> list[str]:
    """``key: old -> new`` for each (dotted) key whose value differs, at most ``limit`` lines (then ``+N more``)."""
    before, after = flatten(_plain(old or {})), flatten(_plain(new))
    lines = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, "(none)"), after.get(key, "(none)")
        if a != b:
            lines.append(f"{key}: {short(a)} -> {short(b)}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"+{len(lines) - limit} more"]
    return lines


def slide_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What differs between two ``slide_identity`` records, most telling first (``slide size 2220x2967 ->
    16x16``); empty when they describe the same slide."""
    if not old:
        return ["the store records no slide identity (made by an older wsi-pipeline)"]
    lines = []
    if (old.get("width"), old.get("height")) != (new.get("width"), new.get("height")):
        lines.append(f"slide size {old.get('width')}x{old.get('height')} -> {new.get('width')}x{new.get('height')}")
    if old.get("vendor") != new.get("vendor"):
        lines.append(f"vendor {old.get('vendor')} -> {new.get('vendor')}")
    if old.get("bytes") != new.get("bytes"):
        lines.append(f"file size {old.get('bytes')} -> {new.get('bytes')} bytes")
    if not lines and fingerprint(old) != fingerprint(new):
        lines.append("file content changed (same size and dimensions)")
    return lines


def tiles_fingerprint(
    slide_identity: Mapping[str, Any] | None, mpp: float | None, coords_sha256: str, read: Mapping[str, Any]
) -> str:
    """What an encoder reads from a store: which slide, at which resolution, which tiles and how they are read
    (``read``: tile_size, target_mpp, read_level, read_size). Equal fingerprints, equal tiles."""
    return fingerprint({"slide": slide_identity, "mpp": mpp, "coords": coords_sha256, "read": dict(read)})


def features_fingerprint(tiles: str | None, settings: Mapping[str, Any], content_sha256: str) -> str:
    """A features array's fingerprint: its tiles, the settings that change embeddings, and the embeddings' bytes."""
    return fingerprint({"tiles": tiles, "settings": dict(settings), "content": content_sha256})


def weights_identity(weights: Mapping[str, Any] | None, seed: int | None = None) -> dict[str, Any]:
    """What makes encoder weights the same: their sha256 (a random init: its seed)."""
    weights = weights or {}
    if weights.get("source") == "random" or not weights.get("sha256"):
        return {"source": "random", "seed": seed}
    return {"sha256": weights["sha256"]}


def weights_label(weights: Mapping[str, Any] | None) -> str:
    """Weights as a user names them: the file name, the hub repository, or ``random``."""
    weights = weights or {}
    source = str(weights.get("source") or "")
    if source == "random" or not weights.get("sha256"):
        return "random" if weights.get("seed") is None else f"random (seed {weights['seed']})"
    if source.startswith("hf-hub:"):
        return source
    return Path(str(weights.get("location") or "")).name or f"sha256 {str(weights['sha256'])[:12]}"


def describe_list(names: Iterable[str], limit: int = 3) -> str:
    """``a, b, c +4 more``."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" +{len(names) - limit} more" if len(names) > limit else "")


__all__ += ["describe_list"]
