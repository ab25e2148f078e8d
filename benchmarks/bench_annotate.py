"""Benchmark of the annotate stage's area measurement beside OpenCV rasterisation of the same polygons.

Builds a slide-sized tile grid (``--size`` level-0 pixels, tiles of ``--tile`` level-0 pixels, every tile kept) and
``--regions`` smooth random annotated regions of ``--vertices`` vertices (two classes, some with holes), then
measures, side by side in this run:

- ``sampling``: ``tile_shares`` (the stage's method): ``samples x samples`` points per tile, even-odd scanline test,
  one tile row at a time;
- ``opencv``: ``cv2.fillPoly`` of the same polygons, in the same painting order, into one canvas of
  ``samples x samples`` cells per tile over the whole grid (sub-pixel vertices, ``shift=4``), then per-tile counts.

For each it prints seconds (median of ``--repeat``), peak traced memory (numpy allocations, ``tracemalloc``, in a
separate untimed run), and the error of the class shares
against a reference (``tile_shares`` at 8x the samples; its convergence to exact areas is tested in
tests/test_annotate.py): mean absolute error and mean signed error (bias). OpenCV fills the pixels its edges touch,
so its areas are biased outwards by about half a cell along every boundary.

    python benchmarks/bench_annotate.py
    python benchmarks/bench_annotate.py --size 150000x100000 --regions 20 --samples 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsi_pipeline.annotations import PaintedPolygon, polygon_edges, tile_shares  # noqa: E402


def _blob(rng: np.random.Generator, centre: np.ndarray, radius: float, n: int) -> np.ndarray:
    """A smooth random star-shaped ring of n vertices."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    wobble = sum(rng.uniform(0.05, 0.15) * np.sin(k * angles + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5, 9))
    r = radius * (1 + wobble)
    return np.stack([centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles)], axis=1)


def _regions(rng: np.random.Generator, width: int, height: int, count: int, vertices: int) -> list[tuple[list, int]]:
    regions = []
    for i in range(count):
        radius = rng.uniform(0.04, 0.12) * min(width, height)
        centre = rng.uniform([radius * 1.3, radius * 1.3], [width - radius * 1.3, height - radius * 1.3])
        rings = [_blob(rng, centre, radius, vertices)]
        if i % 3 == 0:
            rings.append(_blob(rng, centre, radius * 0.35, vertices // 4))  # a hole
        regions.append((rings, 1 + i % 2))
    # Painting order of the stage: largest first.
    return sorted(regions, key=lambda region: -abs(_area(region[0][0])))


def _area(ring: np.ndarray) -> float:
    return 0.5 * float(np.dot(ring[:, 0], np.roll(ring[:, 1], -1)) - np.dot(ring[:, 1], np.roll(ring[:, 0], -1)))


def _opencv_shares(regions: list[tuple[list, int]], nx: int, ny: int, tile: float, samples: int) -> np.ndarray:
    scale = samples / tile * 16  # cells per level-0 pixel, with 4 fractional bits
    canvas = np.zeros((ny * samples, nx * samples), dtype=np.uint8)
    for rings, value in regions:
        # One call per polygon: OpenCV fills its rings together with the even-odd rule, so holes stay empty.
        pts = [np.round(ring * scale).astype(np.int32) for ring in rings]
        cv2.fillPoly(canvas, pts, value, lineType=cv2.LINE_8, shift=4)
    cells = canvas.reshape(ny, samples, nx, samples)
    return np.stack([(cells == v).sum(axis=(1, 3)).ravel() for v in range(3)], axis=1) / samples**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="100000x80000", help="slide size WxH in level-0 pixels")
    parser.add_argument("--tile", type=float, default=448.0, help="tile side in level-0 pixels")
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--vertices", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    nx, ny = int(width // args.tile), int(height // args.tile)
    coords = np.array([(x * args.tile, y * args.tile) for y in range(ny) for x in range(nx)])
    rng = np.random.default_rng(0)
    regions = _regions(rng, width, height, args.regions, args.vertices)
    painted = [PaintedPolygon(polygon_edges(rings), value) for rings, value in regions]
    print(
        f"{len(coords)} tiles of {args.tile:g} px, {len(regions)} regions of {args.vertices} vertices, "
        f"{args.samples}^2 samples per tile"
    )

    reference = tile_shares(coords, args.tile, painted, 3, samples=args.samples * 8)
    results = {}
    for name, run in {
        "sampling": lambda: tile_shares(coords, args.tile, painted, 3, samples=args.samples),
        "opencv": lambda: _opencv_shares(regions, nx, ny, args.tile, args.samples),
    }.items():
        times, shares = [], None
        for _ in range(args.repeat):
            start = time.perf_counter()
            shares = run()
            times.append(time.perf_counter() - start)
        tracemalloc.start()
        run()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        error = shares[:, 1:] - reference[:, 1:]
        results[name] = (statistics.median(times), peak, np.abs(error).mean(), error.mean(), np.abs(error).max())
    base = results["sampling"][0]
    header = ("method", "seconds", "ratio", "peak memory", "mean |err|", "bias", "max |err|")
    print("{:10} {:>8} {:>6} {:>14} {:>11} {:>10} {:>10}".format(*header))
    for name, (seconds, peak, mae, bias, worst) in results.items():
        print(
            f"{name:10} {seconds:8.2f} {seconds / base:6.2f} {peak / 2**20:11.1f} MB "
            f"{mae:11.5f} {bias:+10.5f} {worst:10.4f}"
        )


if __name__ == "__main__":
    main()
