"""When ``embed`` may reuse a finished ``features/<encoder>`` array: only when the same tiles and the same
settings would make it again (docs/reuse.md).

A features array records ``signature`` (what changes the embeddings: encoder architecture and preprocessing, the
weights' sha256 (or a random init's seed), precision, stored dtype) and ``fingerprint.tiles`` (the store's tiles
fingerprint). ``features_changes`` lists what differs, in words a user reads: ``weights: random ->
efficientnet-lite0-57934424.pth``, ``dtype: float16 -> float32``, ``tiles: the store was re-tiled``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..provenance import changes, weights_identity, weights_label
from ..store import features_attrs, store_fingerprint

__all__ = ["features_signature", "features_changes", "SIGNATURE_KEYS"]

SIGNATURE_KEYS = (
    "encoder",
    "timm_name",
    "timm_kwargs",
    "dim",
    "pooling",
    "input_size",
    "resize_size",
    "interpolation",
    "mean",
    "std",
)


def features_signature(encoder_attrs: dict[str, Any], *, precision: str, dtype: str, seed: int) -> dict[str, Any]:
    """What makes the content of ``features/<encoder>``: equal signatures give the same embeddings of the same
    tiles. Device, batch size and worker counts are left out (they change nothing beyond rounding)."""
    signature = {key: encoder_attrs.get(key) for key in SIGNATURE_KEYS}
    weights = dict(encoder_attrs.get("weights") or {})
    signature["weights"] = {"source": weights.get("source"), **weights_identity(weights, seed)}
    signature.update(precision=precision, dtype=dtype)
    return json.loads(json.dumps(signature))  # as stored: tuples become lists


def features_changes(
    store: Path, enc_name: str, signature: dict[str, Any], weights: dict[str, Any] | None = None
) -> list[str] | None:
    """What differs between the finished ``features/<enc_name>`` of ``store`` and what embedding it now with
    ``signature`` (and ``weights``, the encoder's ``WeightsInfo`` as a dict, to name them) would make; None when
    there is no finished array, empty when it would be the same."""
    attrs = features_attrs(store, enc_name)
    if not attrs or not attrs.get("complete"):
        return None
    old = attrs.get("signature")
    if not isinstance(old, dict):
        made_by = (attrs.get("wsi_pipeline") or {}).get("package_version", "an older version")
        return [f"made by wsi-pipeline {made_by}, which recorded no signature"]
    lines = []
    old_w, new_w = old.get("weights") or {}, signature.get("weights") or {}
    if weights_identity(old_w, old_w.get("seed")) != weights_identity(new_w, new_w.get("seed")):
        lines.append(f"weights: {weights_label(attrs.get('weights'))} -> {weights_label(weights or new_w)}")
    rest = {k: v for k, v in old.items() if k != "weights"}
    lines += changes(rest, {k: v for k, v in signature.items() if k != "weights"})
    tiles = (attrs.get("fingerprint") or {}).get("tiles")
    if tiles != store_fingerprint(store):
        lines.append("tiles: the store was re-tiled since these embeddings were made")
    return lines
