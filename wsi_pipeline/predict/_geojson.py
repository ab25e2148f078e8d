"""Per-tile attention as QuPath detection objects (GeoJSON), to review a prediction over the slide in QuPath.

Each tile is a square ``Polygon`` in level-0 pixels with ``objectType: detection`` and numeric ``measurements``
(the form QuPath 0.4+ writes and reads): the tile's attention, its rank among the slide's tiles (0 lowest .. 1
highest, what the heatmap colours), and the slide's class probabilities. In QuPath: File > Import objects, then
Measure > Show measurement maps > ``attention rank``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path
from ._heatmap import scale_scores

__all__ = ["attention_geojson", "write_attention_geojson"]


def _features(
    coords: np.ndarray,
    tile_size_level0: float,
    attention: np.ndarray,
    probabilities: Mapping[str, float],
    tissue_fraction: np.ndarray | None,
) -> Iterator[dict[str, Any]]:
    coords = np.asarray(coords, dtype=np.float64)
    attention = np.asarray(attention, dtype=np.float64).reshape(-1)
    if len(coords) != len(attention):
        raise ValueError(f"{len(coords)} tiles but {len(attention)} attention values")
    ranks = scale_scores(attention, "rank")
    size = float(tile_size_level0)
    slide_measurements = {f"slide prob {name}": round(float(p), 6) for name, p in probabilities.items()}
    for i, ((x, y), value, rank) in enumerate(zip(coords, attention, ranks, strict=True)):
        x0, y0, x1, y1 = (round(float(v), 2) for v in (x, y, x + size, y + size))
        measurements = {"attention": float(value), "attention rank": round(float(rank), 6), **slide_measurements}
        if tissue_fraction is not None:
            measurements["tissue fraction"] = round(float(tissue_fraction[i]), 4)
        yield {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
            "properties": {"objectType": "detection", "measurements": measurements},
        }


def attention_geojson(
    coords: np.ndarray,
    tile_size_level0: float,
    attention: np.ndarray,
    probabilities: Mapping[str, float],
    *,
    tissue_fraction: np.ndarray | None = None,
) -> dict[str, Any]:
    """A ``FeatureCollection`` with one detection per tile (``coords`` are level-0 top-left corners)."""
    features = list(_features(coords, tile_size_level0, attention, probabilities, tissue_fraction))
    return {"type": "FeatureCollection", "features": features}


def write_attention_geojson(
    path: Path,
    coords: np.ndarray,
    tile_size_level0: float,
    attention: np.ndarray,
    probabilities: Mapping[str, float],
    *,
    tissue_fraction: np.ndarray | None = None,
) -> Path:
    """Write ``attention_geojson(...)`` to ``path``, one feature at a time (a slide may have 100 000 tiles), under a
    temporary name renamed when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        with tmp.open("w") as handle:
            handle.write('{"type":"FeatureCollection","features":[')
            for i, feature in enumerate(_features(coords, tile_size_level0, attention, probabilities, tissue_fraction)):
                handle.write(("," if i else "") + json.dumps(feature, separators=(",", ":")))
            handle.write("]}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
