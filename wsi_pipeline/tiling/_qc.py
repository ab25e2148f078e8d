"""QC outputs of the tile stage: ``qc/<slide_id>.jpg`` (thumbnail | tissue mask | kept tiles) and
``geojson/<slide_id>.geojson`` (tissue outlines in level-0 pixels, QuPath: File > Import objects).

Both are written atomically, and ``qc_paths`` is the one place their names are built. The picture is a JPEG of
quality 90: a tenth of the time and a seventh of the bytes of the same picture as PNG (0.006 s and 0.5 MB against
0.058 s and 3.1 MB for a 40000 x 30000 px slide; benchmarks/bench_tile.py), and H&E texture is what lossless
compression cannot shrink.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..files import atomic_write_bytes
from ..tissue import mask_to_geojson, write_geojson

if TYPE_CHECKING:
    from ..slide import Slide
    from ._grid import TileGrid

__all__ = ["qc_paths", "render_qc", "qc_thumbnail", "write_qc"]

_MASK_COLOUR = np.array([40, 200, 90], dtype=np.float32)  # RGB
_TILE_COLOUR = (20, 90, 230)  # RGB


def qc_paths(out_dir: str | Path, slide_id: str) -> tuple[Path, Path]:
    """``(picture, geojson)`` paths of a slide's QC outputs under ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir / "qc" / f"{slide_id}.jpg", out_dir / "geojson" / f"{slide_id}.geojson"


def _tile_boxes(grid: TileGrid, level0_size: tuple[int, int], shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Each kept tile as inclusive pixel boxes ``(x0, y0, x1, y1)`` of a picture of ``shape`` (h, w)."""
    th, tw = shape
    sx, sy = tw / level0_size[0], th / level0_size[1]
    size0 = grid.tiling["tile_size_level0"]
    x0 = np.floor(grid.coords[:, 0] * sx).astype(np.int64)
    y0 = np.floor(grid.coords[:, 1] * sy).astype(np.int64)
    x1 = np.maximum(x0 + 1, np.ceil((grid.coords[:, 0] + size0) * sx).astype(np.int64) - 1)
    y1 = np.maximum(y0 + 1, np.ceil((grid.coords[:, 1] + size0) * sy).astype(np.int64) - 1)
    return x0, y0, x1, y1


def _box_counts(shape: tuple[int, int], x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """How many of the inclusive boxes cover each pixel: one pass for thousands of tiles (a 2-D difference array
    summed along both axes), instead of drawing them one by one."""
    h, w = shape
    keep = (x1 >= x0) & (y1 >= y0)
    x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep] + 1, y1[keep] + 1
    # Boxes may cross the right/bottom edge (edge="pad"): count on a canvas big enough, then crop.
    diff = np.zeros((max(h, int(y1.max(initial=0))) + 1, max(w, int(x1.max(initial=0))) + 1), dtype=np.int32)
    np.add.at(diff, (y0, x0), 1)
    np.add.at(diff, (y0, x1), -1)
    np.add.at(diff, (y1, x0), -1)
    np.add.at(diff, (y1, x1), 1)
    # The sums of the difference array over both axes: cv2.integral in float64 (exact for these small integers) is
    # several times faster than two numpy cumsums; its first row and column are zeros.
    return cv2.integral(diff.astype(np.float64), sdepth=cv2.CV_64F)[1 : h + 1, 1 : w + 1].astype(np.int32)


def render_qc(thumb: np.ndarray, grid: TileGrid, level0_size: tuple[int, int], title: str = "") -> np.ndarray:
    """Three panels side by side: the thumbnail, the tissue mask over it, and the kept tiles over it (RGB)."""
    th, tw = thumb.shape[:2]
    mask = cv2.resize(grid.mask.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST).astype(bool)
    # 55 % picture + 45 % mask colour on tissue, through a 256-entry table per channel (no float copy of the picture).
    blend = (0.55 * np.arange(256, dtype=np.float32)[:, None] + 0.45 * _MASK_COLOUR).astype(np.uint8)  # (256, 3)
    overlay = thumb.copy()
    cv2.copyTo(cv2.LUT(thumb, blend.reshape(256, 1, 3)), mask.view(np.uint8), overlay)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(overlay, contours, -1, (0, 120, 40), 1)

    # Kept tiles: filled at 30 % opacity, outlined where tiles are big enough to see them.
    x0, y0, x1, y1 = _tile_boxes(grid, level0_size, (th, tw))
    covered = _box_counts((th, tw), x0, y0, x1, y1)
    fill = thumb.copy()
    fill[covered > 0] = _TILE_COLOUR
    tiles = cv2.addWeighted(thumb, 0.7, fill, 0.3, 0)
    if grid.tiling["tile_size_level0"] * tw / level0_size[0] >= 4:
        # A pixel is on an outline when some box covers it but that box's interior (1 px in) does not.
        interior = _box_counts((th, tw), x0 + 1, y0 + 1, x1 - 1, y1 - 1)
        tiles[covered > interior] = _TILE_COLOUR

    gap = np.full((th, 6, 3), 255, dtype=np.uint8)
    panel = np.concatenate([thumb, gap, overlay, gap, tiles], axis=1)
    header = np.full((28, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(header, title, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, panel], axis=0)


def qc_thumbnail(slide: Slide, grid: TileGrid, thumbnail_size: int) -> np.ndarray:
    """The QC picture of the whole slide, from the mask picture already in memory (``grid.overview``): shrunk to
    ``thumbnail_size`` when larger. Only a slide so small that this picture is under half of ``thumbnail_size`` (a
    few mm at the default 8 um/px) is read again, sharper, from the slide, which is cheap at that size."""
    overview = grid.overview
    longest = max(overview.shape[:2])
    if longest < thumbnail_size // 2:
        return slide.thumbnail(thumbnail_size)[0]
    if longest <= thumbnail_size:
        return overview
    factor = thumbnail_size / longest
    size = (max(1, round(overview.shape[1] * factor)), max(1, round(overview.shape[0] * factor)))
    return cv2.resize(overview, size, interpolation=cv2.INTER_AREA)


def write_qc(
    out_dir: str | Path, slide: Slide, grid: TileGrid, *, thumbnail_size: int = 1024, geojson: bool = True
) -> tuple[Path, Path | None]:
    """Write the QC picture (and GeoJSON) of one tiled slide from the pictures ``grid`` holds; returns their paths."""
    picture_path, geo_path = qc_paths(out_dir, slide.slide_id)
    thumb = qc_thumbnail(slide, grid, thumbnail_size)
    t = grid.tiling
    title = (
        f"{slide.slide_id}  {slide.dimensions[0]}x{slide.dimensions[1]} px @ {slide.mpp:.3g} um/px  |  "
        f"{t['n_tiles']} tiles of {t['tile_size']} px @ {t['target_mpp']:g} um/px, tissue >= {t['min_tissue']:g}"
    )
    picture = render_qc(thumb, grid, slide.dimensions, title)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise RuntimeError(f"cannot encode the QC picture of {slide.slide_id}")
    atomic_write_bytes(picture_path, encoded.tobytes())  # a full disk names the file and keeps no half picture
    picture_path.with_suffix(".png").unlink(missing_ok=True)  # the PNG that earlier versions wrote, now out of date
    if not geojson:
        return picture_path, None
    collection = mask_to_geojson(grid.mask, grid.mask_scale)
    return picture_path, write_geojson(geo_path, collection)
