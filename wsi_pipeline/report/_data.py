"""What a report page shows, gathered from a prediction folder: per-slide results (``slides/<id>.json``), the
attention the run wrote into each store (``scores/<name>``), the store's tile grid, the tissue outline ``tile``
wrote beside the stores and the annotation polygons ``annotate`` read. Pure data (JSON-ready dicts); the HTML is
``_pages``."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..predict import NEARLY_UNIFORM_RATIO, colormap_for, relative_attention, scale_scores
from ..store import SCORES, has_array, open_array, read_attrs, read_coords, read_instance_labels_attrs

__all__ = ["slide_inputs", "slide_data", "colour_bar", "scores_of"]

log = logging.getLogger(__name__)

OVERLAY_MAX_PX = 4096  # long side of the attention overlay image (each tile a block of whole pixels)


def scores_of(result: dict[str, Any]) -> tuple[np.ndarray | None, str]:
    """The attention this result wrote into its store, or None and why not. Only scores stamped with the result's
    checkpoint count: another run's scores under the same name are never drawn as this run's."""
    name = result.get("scores_name")
    if not name:
        return None, "this run wrote no attention scores into the stores (write_scores: false)"
    path = Path(result["store"]) / SCORES / name
    if not has_array(path):
        return None, f"{path}: missing (re-run predict with --overwrite)"
    array = open_array(path)
    if array.attrs.get("checkpoint_sha256") != (result.get("checkpoint") or {}).get("sha256"):
        return None, f"{path}: written by another model since (re-run predict to redo this slide)"
    return np.asarray(array[...], dtype=np.float64), ""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha(path: Path | None) -> str | None:
    try:
        return _sha(path.read_bytes()) if path else None
    except OSError:
        return None


def _tissue_geojson(store: Path) -> Path:
    return store.parent / "geojson" / f"{store.name.removesuffix('.zarr')}.geojson"


def _annotation_file(store: Path) -> tuple[Path | None, str | None]:
    attrs = read_instance_labels_attrs(store) or {}
    annotations = attrs.get("annotations") or {}
    path = annotations.get("path")
    return (Path(path) if path else None), annotations.get("sha256")


def slide_inputs(result: dict[str, Any]) -> dict[str, Any]:
    """Everything a slide page is made from, cheaply fingerprinted: the page is rebuilt when any of it changes."""
    store = Path(result["store"])
    scores, _ = scores_of(result)
    annotation, annotation_sha = _annotation_file(store)
    return {
        "result": _sha(json.dumps(result, sort_keys=True).encode()),
        "scores": None if scores is None else _sha(scores.tobytes()),
        "tissue": _file_sha(_tissue_geojson(store)),
        "annotations": annotation_sha if annotation else None,
    }


def _overlay(coords: np.ndarray, tile: float, stride: float, values: np.ndarray) -> dict[str, Any]:
    """The attention as an RGBA PNG, one block of pixels per grid cell (transparent where no tile), and where it
    lies in level-0 pixels."""
    import matplotlib
    from PIL import Image

    x0, y0 = coords.min(axis=0)
    cols = np.rint((coords[:, 0] - x0) / stride).astype(int)
    rows = np.rint((coords[:, 1] - y0) / stride).astype(int)
    n_cols, n_rows = int(cols.max()) + 1, int(rows.max()) + 1
    cell = max(
        1, min(32, OVERLAY_MAX_PX // max(n_cols, n_rows))
    )  # whole blocks: the browser's smoothing blurs edges only
    lut = (matplotlib.colormaps[colormap_for("relative")](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    rgba = np.zeros((n_rows, n_cols, 4), dtype=np.uint8)
    rgba[rows, cols, :3] = lut[np.clip(np.rint(values * 255), 0, 255).astype(int)]
    rgba[rows, cols, 3] = 255
    image = Image.fromarray(rgba, "RGBA").resize((n_cols * cell, n_rows * cell), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return {
        "png": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
        "x": float(x0),
        "y": float(y0),
        # the grid's extent: the last cell ends a stride (not a tile) after its corner, as the blocks are drawn
        "width": float(n_cols * stride),
        "height": float(n_rows * stride),
        "tile": float(tile),
    }


def colour_bar() -> dict[str, Any]:
    """The relative scale as CSS gradient stops and ticks (the same map as the PNG heatmaps)."""
    import matplotlib

    from ..predict import colour_bar_ticks

    cmap = matplotlib.colormaps[colormap_for("relative")]
    stops = [
        f"rgb({int(r * 255)},{int(g * 255)},{int(b * 255)}) {p * 100:.0f}%"
        for p in np.linspace(0, 1, 11)
        for r, g, b, _ in [cmap(p)]
    ]
    positions, labels = colour_bar_ticks(np.ones(1), "relative")
    return {
        "gradient": f"linear-gradient(to right, {', '.join(stops)})",
        "ticks": list(zip(positions.tolist(), labels, strict=True)),
    }


def _rings_of_geojson(path: Path) -> list[list[float]]:
    """Outer rings and holes of every polygon in a GeoJSON file, as flat ``[x0, y0, x1, y1...]`` lists."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    rings: list[list[float]] = []
    for feature in data.get("features", []) if isinstance(data, dict) else []:
        geometry = (feature or {}).get("geometry") or {}
        polygons = geometry.get("coordinates") or []
        if geometry.get("type") == "Polygon":
            polygons = [polygons]
        elif geometry.get("type") != "MultiPolygon":
            continue
        for polygon in polygons:
            for ring in polygon:
                rings.append([round(float(v), 1) for point in ring for v in point[:2]])
    return rings


def _annotations(store: Path) -> list[dict[str, Any]]:
    path, _ = _annotation_file(store)
    if path is None or not path.is_file():
        return []
    from ..annotations import read_annotations

    try:
        polygons = read_annotations(path)
    except Exception as err:  # noqa: BLE001 - a page without outlines beats no page; said in the log
        log.warning("report: annotations %s not drawn: %s", path, err)
        return []
    return [
        {"name": p.name, "rings": [[round(float(v), 1) for v in ring.reshape(-1)] for ring in p.rings]}
        for p in polygons
    ]


def _top_tiles(slide_path: Path | None, coords: np.ndarray, tile: float, scores: np.ndarray, k: int) -> list[dict]:
    """The ``k`` tiles with the most attention, each with a small JPEG read from the slide (none without it)."""
    top = np.argsort(-scores, kind="stable")[:k]
    relative = relative_attention(scores)
    size = int(round(tile))
    tiles = [
        {"rank": r, "x": int(coords[i, 0]), "y": int(coords[i, 1]), "size": size, "relative": float(relative[i])}
        for r, i in enumerate(top, start=1)
    ]
    if slide_path is None:
        return tiles
    from PIL import Image

    from ..slide import Slide

    with Slide(slide_path) as slide:
        level = slide.osr.get_best_level_for_downsample(max(1.0, size / 192))
        down = slide.level_downsamples[level]
        for entry in tiles:
            side = max(1, int(round(size / down)))
            pixels = slide.read_region((entry["x"], entry["y"]), level, (side, side))
            image = Image.fromarray(pixels).resize((160, 160), Image.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
            entry["img"] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    return tiles


def slide_data(result: dict[str, Any], *, slide_path: Path | None, top_k: int, viewer_note: str = "") -> dict[str, Any]:
    """The JSON a slide page embeds: the prediction, the attention overlay, outlines and top tiles (all level-0
    pixels; the page adds its tile source)."""
    store = Path(result["store"])
    attrs = read_attrs(store)
    slide = attrs.get("slide") or {}
    tiling = attrs.get("tiling") or {}
    scores, no_scores = scores_of(result)
    data: dict[str, Any] = {
        "slide_id": result["slide_id"],
        "classes": result["classes"],
        "predicted_class": result["predicted_class"],
        "probabilities": result["probabilities"],
        "label": result.get("label"),
        "source": result.get("source"),
        "folds": result.get("folds") or [],
        "n_tiles": result.get("n_tiles"),
        "localisation": result.get("localisation"),
        "model": result.get("model"),
        "encoder": result.get("encoder"),
        "level0": [slide.get("width"), slide.get("height")],
        "mpp": slide.get("mpp"),
        "viewer_note": viewer_note,
        "overlay": None,
        "overlay_note": no_scores,
        "top_tiles": [],
        "tissue": _rings_of_geojson(_tissue_geojson(store)),
        "annotations": _annotations(store),
    }
    tile = tiling.get("tile_size_level0")
    if scores is not None and tile and len(scores):
        coords = read_coords(store)
        stride = float(tiling.get("stride_level0") or tile)
        relative = relative_attention(scores)
        data["overlay"] = _overlay(coords, float(tile), stride, scale_scores(scores, "relative"))
        spread = float(scores.max() / scores.min()) if scores.min() > 0 else float("inf")
        data["attention"] = {
            "max_relative": float(relative.max()),
            "min_relative": float(relative.min()),
            "spread": spread if np.isfinite(spread) else None,
            "nearly_uniform": bool(spread <= NEARLY_UNIFORM_RATIO),
        }
        data["top_tiles"] = _top_tiles(slide_path, coords, float(tile), scores, top_k)
    elif scores is not None and not tile:
        data["overlay_note"] = f"{store}: no tiling.tile_size_level0 in its attrs"
    return data
