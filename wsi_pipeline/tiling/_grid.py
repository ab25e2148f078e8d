"""Pure functions: the tile grid in level-0 pixels and each tile's tissue fraction from a low-res mask; ``TileGrid``,
what the tile stage found for one slide (here, below both the stage and its QC pictures, which draw it).

The fraction comes from a summed-area table of the mask evaluated at fractional positions (bilinear interpolation
of the table is exact for a piecewise-constant mask), so it is the true covered area, vectorised over all tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = ["grid_positions", "tissue_fractions", "select_tiles", "TileGrid"]


@dataclass
class TileGrid:
    """What ``compute_tile_grid`` found for one slide: the kept tiles, the mask, and how to read the tiles."""

    coords: np.ndarray
    fractions: np.ndarray
    mask: np.ndarray
    mask_scale: tuple[float, float]
    mask_info: dict[str, Any]
    overview: np.ndarray
    tiling: dict[str, Any]


def grid_positions(length: int, size0: float, step0: float, edge: str = "drop") -> np.ndarray:
    """Level-0 starts of tiles along one axis of ``length`` pixels (``int64``, ascending).

    ``drop`` keeps tiles wholly inside ``[0, length)``; ``pad`` adds tiles crossing the far edge until it is
    covered. Starts are ``round(i * step0)``, so a non-integer level-0 step does not drift.
    """
    if edge not in ("drop", "pad"):
        raise ValueError(f"edge {edge!r}: expected 'drop' or 'pad'")
    if edge == "drop":
        if length < size0:
            return np.zeros(0, dtype=np.int64)
        count = math.floor((length - size0) / step0 + 1e-9) + 1
    else:
        count = max(1, math.ceil((length - size0) / step0 - 1e-9) + 1)
    return np.round(np.arange(count) * step0).astype(np.int64)


def _interp_axis(table: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``table`` along ``axis`` at fractional positions ``pos`` (clipped to the table)."""
    limit = table.shape[axis] - 1
    pos = np.clip(pos, 0, limit)
    lo = np.minimum(np.floor(pos).astype(np.int64), max(limit - 1, 0))
    frac = pos - lo
    hi = np.minimum(lo + 1, limit)
    a, b = np.take(table, lo, axis=axis), np.take(table, hi, axis=axis)
    shape = [1, 1]
    shape[axis] = -1
    return a + (b - a) * frac.reshape(shape)


def tissue_fractions(
    mask: np.ndarray, xs: np.ndarray, ys: np.ndarray, size0: float, scale: tuple[float, float]
) -> np.ndarray:
    """Fraction of each tile ``[x, x+size0) x [y, y+size0)`` covered by ``mask``; shape ``(len(ys), len(xs))``.

    Parameters
    ----------
    mask
        ``bool`` (h, w) tissue mask of the whole slide.
    xs, ys
        Level-0 tile starts along x and y (the grid is their outer product).
    size0
        Tile side in level-0 pixels.
    scale
        ``(sx, sy)`` level-0 pixels per mask pixel.

    Parts of a tile outside the slide count as background.
    """
    sx, sy = scale
    h, w = mask.shape
    # (h + 1, w + 1) float64, zero first row and column; exact for a 0/1 mask, ~40x faster than two numpy cumsums.
    table = cv2.integral(np.ascontiguousarray(mask, dtype=np.uint8), sdepth=cv2.CV_64F)
    x0, x1 = xs / sx, (xs + size0) / sx
    y0, y1 = ys / sy, (ys + size0) / sy
    cols = np.concatenate([x0, x1])
    at_x = _interp_axis(table, cols, axis=1)  # (h+1, 2*nx)
    at = _interp_axis(at_x, np.concatenate([y0, y1]), axis=0)  # (2*ny, 2*nx)
    nx, ny = len(xs), len(ys)
    s00, s01 = at[:ny, :nx], at[:ny, nx:]
    s10, s11 = at[ny:, :nx], at[ny:, nx:]
    area = size0 * size0 / (sx * sy)
    return np.clip((s11 - s01 - s10 + s00) / area, 0.0, 1.0)


def select_tiles(
    fractions: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    min_tissue: float,
    *,
    max_tiles: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Tiles with ``fraction >= min_tissue`` as ``(coords (N, 2) int64, fractions (N,) float32)``, row-major.

    With ``max_tiles``, a random subset (``seed``) is kept, still in row-major order.
    """
    # A hair of tolerance: a tile exactly on the threshold must not flip with float rounding.
    rows, cols = np.nonzero(fractions >= min_tissue - 1e-6)
    if max_tiles is not None and len(rows) > max_tiles:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_tiles, replace=False))
        rows, cols = rows[keep], cols[keep]
    coords = np.stack([xs[cols], ys[rows]], axis=1).astype(np.int64).reshape(-1, 2)
    return coords, fractions[rows, cols].astype(np.float32)
