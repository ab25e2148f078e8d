"""Benchmark of the tile stage on a generated slide of realistic size, beside the bare minimum work.

Generates (once, into a temporary folder or ``--slide-dir``) a tiled JPEG pyramidal TIFF of ``--size`` pixels at
``--mpp`` with real H&E pixels (``tests/slide_factory.py``), then measures, each in a fresh subprocess so peak memory
is that work's own:

- ``baseline``: open the slide with OpenSlide and read the mask's pyramid level once (the least any tiler must do);
- ``tile``: ``tile_slide`` without QC outputs (mask + grid + store);
- ``tile+qc``: ``tile_slide`` with the QC picture and GeoJSON (the default).

It prints seconds (median of ``--repeat``), tiles/s, peak RSS, and each time as a ratio to the baseline.

    python benchmarks/bench_tile.py                      # 40000 x 30000 px at 0.25 mpp (generation takes ~1 min)
    python benchmarks/bench_tile.py --size 8000x6000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _worker(kind: str, slide_path: str, out_dir: str) -> dict:
    """One measurement in this (fresh) process."""
    from wsi_pipeline.slide import Slide
    from wsi_pipeline.tiling import TileConfig, tile_slide

    config = TileConfig()
    rss_imports = _peak_rss_mb()
    start = time.perf_counter()
    n_tiles = 0
    if kind == "baseline":
        import openslide

        with Slide(slide_path) as probe:
            level = probe.best_level_for_mpp(config.mask_mpp)
            size = probe.level_dimensions[level]
        start = time.perf_counter()
        osr = openslide.OpenSlide(slide_path)
        osr.read_region((0, 0), level, size)
        osr.close()
    else:
        config.qc.enabled = kind == "tile+qc"
        store = tile_slide(Slide(slide_path), out_dir, config=config)
        import zarr

        n_tiles = int(zarr.open_group(str(store), mode="r").attrs["tiling"]["n_tiles"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "n_tiles": n_tiles, "peak_rss_mb": _peak_rss_mb(), "rss_after_imports_mb": rss_imports}


def _measure(kind: str, slide: Path, out_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, str(slide), str(out_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="40000x30000", help="level-0 WIDTHxHEIGHT of the generated slide")
    parser.add_argument("--mpp", type=float, default=0.25, help="level-0 microns per pixel")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per kind (median reported)")
    parser.add_argument("--slide-dir", type=Path, default=None, help="keep/reuse the generated slide here")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "SLIDE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(*args.worker)))
        return

    sys.path.insert(0, str(ROOT))
    from tests.slide_factory import make_pyramid_slide

    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench_tile_") as tmp:
        folder = args.slide_dir or Path(tmp)
        slide = folder / f"bench_{width}x{height}_{args.mpp}.svs"
        if not slide.exists():
            start = time.perf_counter()
            made = make_pyramid_slide(slide, width=width, height=height, mpp=args.mpp, tile=256, jpeg=True)
            print(
                f"generated {slide.name}: {width}x{height} px at {args.mpp} um/px, levels {made.level_downsamples}, "
                f"{made.source} H&E, {slide.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - start:.0f} s"
            )
        results: dict[str, dict] = {}
        for kind in ("baseline", "tile", "tile+qc"):
            runs = [_measure(kind, slide, Path(tmp) / f"out-{kind}-{i}") for i in range(args.repeat)]
            results[kind] = {
                "seconds": statistics.median(r["seconds"] for r in runs),
                "n_tiles": runs[0]["n_tiles"],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "rss_after_imports_mb": max(r["rss_after_imports_mb"] for r in runs),
            }
    base = results["baseline"]["seconds"]
    print(f"\n{'work':<10} {'seconds':>8} {'tiles':>7} {'tiles/s':>9} {'peak RSS MiB':>13} {'x baseline':>11}")
    for kind, r in results.items():
        rate = f"{r['n_tiles'] / r['seconds']:.0f}" if r["n_tiles"] else "-"
        n_tiles = r["n_tiles"] or "-"
        print(
            f"{kind:<10} {r['seconds']:>8.3f} {n_tiles:>7} {rate:>9} {r['peak_rss_mb']:>13.0f} "
            f"{r['seconds'] / base:>11.2f}"
        )
    print(f"(RSS after imports alone: {results['tile']['rss_after_imports_mb']:.0f} MiB; median of {args.repeat} runs)")


if __name__ == "__main__":
    main()
