"""Pure functions: how much of each tile lies in each annotated class, and the tile labels that follow.

Areas are measured by point sampling: every tile is covered by an ``S x S`` grid of sample points (the centres of
its ``S x S`` equal cells, in level-0 pixels) and each point takes the value of the last polygon that contains it
(even-odd rule, so holes and multi-ring polygons need nothing special). The inside test is a scanline: each polygon
edge is intersected with the sample rows, and a point is inside when an odd number of crossings lie to its left.
Only the rows of one tile-grid row are sampled at a time and only the tiles under a polygon's bounding box are
tested, so memory is ``O(S^2 x tiles in a grid row)``, never an image of the slide. A share is exact up to the
sampling: an edge crossing a tile moves its share by at most about ``1 / S`` of the tile side's length fraction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PaintedPolygon", "polygon_edges", "inside", "tile_shares", "labels_from_shares"]


@dataclass(frozen=True)
class PaintedPolygon:
    """A polygon's edges ``(E, 4)`` as ``x1, y1, x2, y2`` (all rings together) and the value it paints."""

    edges: np.ndarray
    value: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        xs, ys = self.edges[:, [0, 2]], self.edges[:, [1, 3]]
        return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def polygon_edges(rings: Sequence[np.ndarray]) -> np.ndarray:
    """All edges ``(E, 4)`` of closed rings (each ``(K, 2)``, last vertex joined to the first)."""
    parts = [np.concatenate([ring, np.roll(ring, -1, axis=0)], axis=1) for ring in rings]
    return np.concatenate(parts).astype(np.float64)


def inside(edges: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Even-odd inside test of the points ``(ys[r], xs[c])``: bool ``(len(ys), len(xs))``; ``ys`` ascending.

    An edge crosses row ``y`` when ``min(y1, y2) <= y < max(y1, y2)`` (half-open, so a vertex on a row counts once
    and horizontal edges never); a point counts the crossings strictly to its left.
    """
    x1, y1, x2, y2 = edges.T
    y_lo, y_hi = np.minimum(y1, y2), np.maximum(y1, y2)
    first = np.searchsorted(ys, y_lo, side="left")  # first row at or below y_lo
    stop = np.searchsorted(ys, y_hi, side="left")  # rows before y_hi
    n_rows = np.maximum(stop - first, 0)
    total = int(n_rows.sum())
    if total == 0:
        return np.zeros((len(ys), len(xs)), dtype=bool)
    edge = np.repeat(np.arange(len(edges)), n_rows)  # (X,) one entry per (edge, row) crossing
    row = np.arange(total) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows) + np.repeat(first, n_rows)  # (X,)
    t = (ys[row] - y1[edge]) / (y2[edge] - y1[edge])
    cross_x = x1[edge] + t * (x2[edge] - x1[edge])  # (X,)
    # One sorted key per crossing, rows kept apart by an offset wider than any x: a single searchsorted then
    # counts, for every point, the crossings of its own row that lie to its left.
    origin = min(float(cross_x.min()), float(xs.min())) - 1.0
    width = max(float(cross_x.max()), float(xs.max())) - origin + 1.0
    keys = np.sort(row * width + (cross_x - origin))  # (X,)
    row_start = np.searchsorted(keys, np.arange(len(ys)) * width)  # (R,) first crossing of each row
    point_keys = np.arange(len(ys))[:, None] * width + (xs[None, :] - origin)  # (R, C)
    left = np.searchsorted(keys, point_keys, side="left") - row_start[:, None]  # (R, C)
    return (left % 2).astype(bool)


def tile_shares(
    coords: np.ndarray,
    tile_size: float,
    polygons: Sequence[PaintedPolygon],
    n_values: int,
    samples: int = 32,
) -> np.ndarray:
    """Share of each tile painted with each value ``0 .. n_values - 1``: float ``(N, n_values)``, rows sum to 1.

    Parameters
    ----------
    coords
        ``(N, 2)`` level-0 ``(x, y)`` top-left corners of the tiles (tile-grid rows share one ``y``).
    tile_size
        Tile side in level-0 pixels (``tiling.tile_size_level0``).
    polygons
        In painting order: where polygons overlap, the later one's value wins; value 0 where none paints.
    n_values
        Number of distinct values (``value < n_values`` for every polygon).
    samples
        ``S``: sample points per tile side.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    shares = np.zeros((len(coords), n_values), dtype=np.float64)
    shares[:, 0] = 1.0
    if not len(coords) or not polygons:
        return shares
    offsets = (np.arange(samples) + 0.5) * (tile_size / samples)  # (S,) sample centres inside a tile
    bounds = np.array([p.bounds for p in polygons])  # (P, 4)
    for y in np.unique(coords[:, 1]):
        band = np.flatnonzero(coords[:, 1] == y)
        band = band[np.argsort(coords[band, 0], kind="stable")]  # tiles of this grid row, by x
        ys = y + offsets  # (S,)
        hit = (bounds[:, 3] >= ys[0]) & (bounds[:, 1] <= ys[-1])
        if not hit.any():
            continue
        xs_tiles = coords[band, 0]
        values = np.zeros((samples, len(band), samples), dtype=np.int16)  # (row, tile, column)
        for p in np.flatnonzero(hit):
            x_min, _, x_max, _ = bounds[p]
            # Tiles whose sample columns can fall inside the polygon's bounding box: a contiguous run.
            lo = int(np.searchsorted(xs_tiles + offsets[-1], x_min, side="left"))
            hi = int(np.searchsorted(xs_tiles + offsets[0], x_max, side="right"))
            if lo >= hi:
                continue
            xs = (xs_tiles[lo:hi, None] + offsets[None, :]).ravel()  # (T' * S,)
            mask = inside(polygons[p].edges, ys, xs).reshape(samples, hi - lo, samples)
            values[:, lo:hi][mask] = polygons[p].value
        counts = np.stack([(values == v).sum(axis=(0, 2)) for v in range(n_values)], axis=1)  # (T, n_values)
        shares[band] = counts / float(samples * samples)
    return shares


def labels_from_shares(
    shares: np.ndarray, *, n_classes: int, threshold: float, negative_max: float = 0.0
) -> np.ndarray:
    """Tile labels (int16: 0 negative, k class k, -1 unknown) from ``tile_shares`` over values
    ``0`` (negative or unannotated), ``1 .. n_classes`` (classes) and ``n_classes + 1`` (unknown regions).

    - class k when its share reaches ``threshold``; when several do (threshold <= 0.5), the largest share wins and
      an exact tie is unknown;
    - else negative (0) when no class and no unknown region covers more than ``negative_max`` of the tile;
    - else unknown (-1): partly annotated below the threshold, or under an unknown region.
    """
    if shares.shape[1] != n_classes + 2:
        raise ValueError(f"shares have {shares.shape[1]} values; expected {n_classes + 2} (negative, classes, unknown)")
    classes = shares[:, 1 : n_classes + 1]  # (N, C)
    best = classes.argmax(axis=1)  # (N,)
    best_share = classes.max(axis=1) if n_classes else np.zeros(len(shares))
    tied = (classes == best_share[:, None]).sum(axis=1) > 1
    labels = np.full(len(shares), -1, dtype=np.int16)
    covered = np.maximum(best_share, shares[:, n_classes + 1])
    labels[covered <= negative_max] = 0
    is_class = best_share >= threshold
    labels[is_class & ~tied] = (best + 1)[is_class & ~tied]
    labels[is_class & tied] = -1
    return labels
