"""Tissue outlines as GeoJSON in level-0 pixel coordinates, the way QuPath imports annotations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["mask_to_geojson", "write_geojson"]


def _ring(contour: np.ndarray, scale_x: float, scale_y: float) -> list[list[float]]:
    # Mask pixel (i, j) covers [i, i+1) x [j, j+1); contour points are pixel corners after the +0.5 shift below.
    pts = contour.reshape(-1, 2).astype(np.float64)
    ring = [[round(float(x) * scale_x, 2), round(float(y) * scale_y, 2)] for x, y in pts]
    ring.append(ring[0])  # GeoJSON rings are closed
    return ring


def mask_to_geojson(
    mask: np.ndarray,
    scale: float | tuple[float, float],
    *,
    name: str = "Tissue",
    min_points: int = 3,
    simplify_px: float = 0.75,
) -> dict[str, Any]:
    """Outline a tissue mask as a GeoJSON ``FeatureCollection`` of polygons (with holes) in level-0 pixels.

    Parameters
    ----------
    mask
        ``bool`` (h, w) tissue mask.
    scale
        Level-0 pixels per mask pixel (``(sx, sy)`` or one number).
    name
        QuPath classification name of every polygon.
    simplify_px
        Douglas-Peucker tolerance in mask pixels (keeps files small; 0 keeps every corner).

    Returns
    -------
    dict
        One feature per tissue piece, ``properties.objectType = "annotation"`` and
        ``classification = {"name": "Tissue", ...}``, which QuPath (File > Import objects) reads as annotations.
    """
    sx, sy = (scale, scale) if np.isscalar(scale) else scale  # type: ignore[misc]
    binary = np.ascontiguousarray(mask.astype(np.uint8))
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    features: list[dict[str, Any]] = []
    if hierarchy is None:
        return {"type": "FeatureCollection", "features": features}
    hierarchy = hierarchy[0]
    # RETR_CCOMP: top-level contours are outer boundaries; their children (via first_child/next) are holes.
    for i, contour in enumerate(contours):
        if hierarchy[i][3] != -1:
            continue
        rings = [_simplified(contour, simplify_px)]
        child = hierarchy[i][2]
        while child != -1:
            rings.append(_simplified(contours[child], simplify_px))
            child = hierarchy[child][0]
        if len(rings[0]) < min_points:
            continue
        rings = [rings[0]] + [r for r in rings[1:] if len(r) >= min_points]
        coords = [_ring(r + 0.5, sx, sy) for r in rings]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": coords},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": [0, 160, 60]},
                    "isLocked": False,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _simplified(contour: np.ndarray, tol: float) -> np.ndarray:
    if tol > 0 and len(contour) > 8:
        contour = cv2.approxPolyDP(contour, tol, True)
    return contour.reshape(-1, 2)


def write_geojson(path: str | Path, collection: dict[str, Any]) -> Path:
    """Write a GeoJSON file atomically."""
    from ..files import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(collection, separators=(",", ":")))
    return path
