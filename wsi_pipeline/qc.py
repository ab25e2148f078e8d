"""QC outputs of the tile stage: ``qc/<slide_id>.png`` (thumbnail | tissue mask | kept tiles) and
``geojson/<slide_id>.geojson`` (tissue outlines in level-0 pixels, QuPath: File > Import objects).

Both are written atomically, and ``qc_paths`` is the one place their names are built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .batch import atomic_path
from .tissue import mask_to_geojson, write_geojson

if TYPE_CHECKING:
    from .slide import Slide
    from .tiling import TileGrid

__all__ = ["qc_paths", "render_qc", "write_qc"]

_MASK_COLOUR = np.array([40, 200, 90], dtype=np.float32)  # RGB
_TILE_COLOUR = (20, 90, 230)  # RGB


def qc_paths(out_dir: str | Path, slide_id: str) -> tuple[Path, Path]:
    """``(png, geojson)`` paths of a slide's QC outputs under ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir / "qc" / f"{slide_id}.png", out_dir / "geojson" / f"{slide_id}.geojson"


def render_qc(thumb: np.ndarray, grid: TileGrid, level0_size: tuple[int, int], title: str = "") -> np.ndarray:
    """Three panels side by side: the thumbnail, the tissue mask over it, and the kept tiles over it (RGB)."""
    th, tw = thumb.shape[:2]
    width, height = level0_size
    mask = cv2.resize(grid.mask.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST).astype(bool)
    overlay = thumb.astype(np.float32)
    overlay[mask] = 0.55 * overlay[mask] + 0.45 * _MASK_COLOUR
    overlay = overlay.astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(overlay, contours, -1, (0, 120, 40), 1)

    tiles = thumb.copy()
    sx, sy = tw / width, th / height
    size0 = grid.tiling["tile_size_level0"]
    x0 = np.floor(grid.coords[:, 0] * sx).astype(int)
    y0 = np.floor(grid.coords[:, 1] * sy).astype(int)
    x1 = np.maximum(x0 + 1, np.ceil((grid.coords[:, 0] + size0) * sx).astype(int) - 1)
    y1 = np.maximum(y0 + 1, np.ceil((grid.coords[:, 1] + size0) * sy).astype(int) - 1)
    fill = tiles.copy()
    for a, b, c, d in zip(x0, y0, x1, y1, strict=True):
        cv2.rectangle(fill, (int(a), int(b)), (int(c), int(d)), _TILE_COLOUR, -1)
    tiles = cv2.addWeighted(tiles, 0.7, fill, 0.3, 0)
    if (size0 * sx) >= 4:  # outlines only where tiles are big enough to see them
        for a, b, c, d in zip(x0, y0, x1, y1, strict=True):
            cv2.rectangle(tiles, (int(a), int(b)), (int(c), int(d)), _TILE_COLOUR, 1)

    gap = np.full((th, 6, 3), 255, dtype=np.uint8)
    panel = np.concatenate([thumb, gap, overlay, gap, tiles], axis=1)
    header = np.full((28, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(header, title, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, panel], axis=0)


def write_qc(
    out_dir: str | Path, slide: Slide, grid: TileGrid, *, thumbnail_size: int = 1024, geojson: bool = True
) -> tuple[Path, Path | None]:
    """Write the QC picture (and GeoJSON) of one tiled slide; returns their paths."""
    png_path, geo_path = qc_paths(out_dir, slide.slide_id)
    thumb, _ = slide.thumbnail(thumbnail_size)
    t = grid.tiling
    title = (
        f"{slide.slide_id}  {slide.dimensions[0]}x{slide.dimensions[1]} px @ {slide.mpp:.3g} um/px  |  "
        f"{t['n_tiles']} tiles of {t['tile_size']} px @ {t['target_mpp']:g} um/px, tissue >= {t['min_tissue']:g}"
    )
    picture = render_qc(thumb, grid, slide.dimensions, title)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise RuntimeError(f"cannot encode the QC picture of {slide.slide_id}")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(png_path)
    tmp.write_bytes(encoded.tobytes())
    tmp.replace(png_path)
    if not geojson:
        return png_path, None
    collection = mask_to_geojson(grid.mask, grid.mask_scale)
    return png_path, write_geojson(geo_path, collection)
