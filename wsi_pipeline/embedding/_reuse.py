"""When ``embed`` may reuse a finished ``features/<encoder>`` array: only when the same tiles and the same
settings would make it again (docs/reuse.md).

A features array records ``signature`` (``features_signature``: encoder architecture and preprocessing, the
weights' sha256 or a random init's seed, precision, stored dtype, how tiles are read) and ``fingerprint.tiles``
(the store's tiles fingerprint: which slide file, resolution and tiles). ``features_changes`` lists what differs in
words a user reads: ``weights: random -> efficientnet-lite0-57934424.pth``, ``dtype: float16 -> float32``,
``tiles: the store was re-tiled``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..provenance import changes, weights_identity, weights_label
from ..store import features_attrs, store_fingerprint

__all__ = ["features_changes"]


def _weights_id(weights: dict[str, Any] | None) -> dict[str, Any]:
    return weights_identity(weights, (weights or {}).get("seed"))


def features_changes(
    store: Path, enc_name: str, signature: dict[str, Any], weights: dict[str, Any] | None = None
) -> list[str] | None:
    """What differs between the finished ``features/<enc_name>`` of ``store`` and what embedding it now with
    ``signature`` would make (``weights``: the encoder's ``WeightsInfo`` as a dict, to name them); None when there
    is no finished array, an empty list when it would be the same."""
    attrs = features_attrs(store, enc_name)
    if not attrs or not attrs.get("complete"):
        return None
    old = attrs.get("signature")
    if not isinstance(old, dict):
        made_by = (attrs.get("wsi_pipeline") or {}).get("package_version", "an older version")
        return [f"made by wsi-pipeline {made_by}, which resized tiles differently and recorded no signature"]
    lines = []
    if _weights_id(old.get("weights")) != _weights_id(signature.get("weights")):
        before = {**(attrs.get("weights") or {}), **(old.get("weights") or {})}
        after = {**(weights or {}), **(signature.get("weights") or {})}
        lines.append(f"weights: {weights_label(before)} -> {weights_label(after)}")
    lines += changes(
        {k: v for k, v in old.items() if k != "weights"}, {k: v for k, v in signature.items() if k != "weights"}
    )
    if (attrs.get("fingerprint") or {}).get("tiles") != store_fingerprint(store):
        lines.append("tiles: the store was re-tiled since these embeddings were made")
    return lines
