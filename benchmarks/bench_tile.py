"""Benchmark of the tile stage on a generated slide of realistic size, side by side with the bare minimum.

Generates (once, into a temporary folder or ``--slide-dir``) a tiled JPEG pyramidal TIFF of ``--size`` pixels at
``--mpp`` with real H&E pixels (``tests/slide_factory.py``), then measures in one run:

Whole process (``/usr/bin/time -v``: wall time and peak RSS of the whole command, interpreter start and imports
included), each ``--repeat`` times:

- ``python -c pass``: the interpreter alone, the floor of any command;
- ``wsi-pipeline --help``;
- ``bare 1/64``: a script that imports numpy, OpenCV and OpenSlide, opens the slide, reads the level closest to a
  1/64 downsample, masks it (saturation, median blur, Otsu) and computes every grid cell's tissue fraction: the
  least any tiler must do (``--bare``, below; it imports nothing from this package);
- ``bare mask level``: the same, reading the level ``tile`` reads for its mask (the coarsest level at least as fine
  as ``mask_mpp``, shrunk to it), i.e. the bare minimum at this package's mask resolution;
- ``wsi-pipeline tile``: the real command (mask, grid, store, QC picture, GeoJSON, manifest, summary table).

In process (a fresh process per measurement, imports excluded from the time): the two bare minimums,
``tile_slide`` without QC outputs, and ``tile_slide`` with the QC picture and GeoJSON (the default).

Every time is printed as a ratio to both bare minimums, medians of ``--repeat`` runs, as wall time and as CPU time
(user + system): on a shared machine the wall time also counts waiting for a core, the CPU time does not.

    python benchmarks/bench_tile.py                      # 40000 x 30000 px at 0.25 mpp (generation takes ~1 min)
    python benchmarks/bench_tile.py --size 8000x6000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIME = Path("/usr/bin/time")
MASK_MPP = 8.0  # TileConfig().mask_mpp, repeated so that --bare imports nothing from the package
TILE_UM = 224 * 0.5  # a default tile: 224 px at 0.5 um/px


def bare_minimum(slide_path: str, which: str) -> int:
    """Open, read one low-resolution level, mask it, tissue fraction per grid cell; returns the cells kept.

    ``which``: ``"1/64"`` (the level whose downsample is closest to 64) or ``"mask"`` (the level ``tile`` reads for
    its mask, shrunk to ``MASK_MPP``).
    """
    import cv2
    import numpy as np
    import openslide

    osr = openslide.OpenSlide(slide_path)
    mpp = float(osr.properties["openslide.mpp-x"])
    downs = [float(d) for d in osr.level_downsamples]
    if which == "1/64":
        level = min(range(len(downs)), key=lambda k: abs(np.log(downs[k] / 64)))
    else:
        level = max(k for k in range(len(downs)) if mpp * downs[k] <= MASK_MPP * 1.001)
    w, h = osr.level_dimensions[level]
    rgb = np.ascontiguousarray(np.asarray(osr.read_region((0, 0), level, (w, h)))[..., :3])
    pixel_mpp = mpp * downs[level]
    if which == "mask" and pixel_mpp < MASK_MPP * 0.999:
        factor = MASK_MPP / pixel_mpp
        rgb = cv2.resize(rgb, (round(w / factor), round(h / factor)), interpolation=cv2.INTER_AREA)
        pixel_mpp = MASK_MPP
    sat = cv2.medianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1], 5)
    _, mask = cv2.threshold(sat, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    table = cv2.integral(mask)  # summed-area table: the tissue fraction of every cell at once
    cell = TILE_UM / pixel_mpp
    x0 = np.round(np.arange(0, mask.shape[1] - cell, cell)).astype(int)
    y0 = np.round(np.arange(0, mask.shape[0] - cell, cell)).astype(int)
    x1, y1 = x0 + round(cell), y0 + round(cell)
    area = table[y1][:, x1] - table[y0][:, x1] - table[y1][:, x0] + table[y0][:, x0]
    fraction = area / ((y1 - y0)[:, None] * (x1 - x0)[None, :])
    osr.close()
    return int((fraction >= 0.5).sum())


# ------------------------------------------------------------------------------------------- in-process work
def _worker(kind: str, slide_path: str, out_dir: str) -> dict:
    """One in-process measurement in this (fresh) process, imports done before the clock starts."""
    if kind.startswith("bare"):
        import cv2  # noqa: F401 - imported before timing, like the package's imports below
        import numpy  # noqa: F401
        import openslide  # noqa: F401

        start, cpu = time.perf_counter(), time.process_time()
        n_tiles = bare_minimum(slide_path, "1/64" if kind == "bare 1/64" else "mask")
        return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "n_tiles": n_tiles}
    import zarr

    from wsi_pipeline.slide import Slide
    from wsi_pipeline.tiling import TileConfig, tile_slide

    config = TileConfig()
    config.qc.enabled = kind == "tile_slide + QC"
    start, cpu = time.perf_counter(), time.process_time()
    store = tile_slide(Slide(slide_path), out_dir, config=config)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    n_tiles = int(zarr.open_group(str(store), mode="r").attrs["tiling"]["n_tiles"])
    return {"seconds": seconds, "cpu": cpu, "n_tiles": n_tiles}


def _in_process(kind: str, slide: Path, out_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, str(slide), str(out_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- whole process
def _whole_process(cmd: list[str]) -> dict:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MiB) of ``cmd`` as ``/usr/bin/time -v`` reports
    them."""
    proc = subprocess.run([str(TIME), "-v", *cmd], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    cpu = [float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr)]
    if not wall or not rss or len(cpu) != 2:
        raise RuntimeError(f"cannot read /usr/bin/time -v output:\n{proc.stderr[-1000:]}")
    hours, minutes, seconds = wall.groups()
    wall_seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
    return {"seconds": wall_seconds, "cpu": sum(cpu), "rss_mb": int(rss[1]) / 1024}


def _entry_point() -> list[str]:
    script = Path(sys.executable).with_name("wsi-pipeline")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wsi_pipeline"]


def _median(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _print(title: str, rows: dict[str, dict], bases: tuple[str, str]) -> None:
    print(f"\n{title}")
    head = f"{'work':<22} {'seconds':>8} {'CPU s':>7} {'peak RSS MiB':>13} {'tiles':>6}"
    print(f"{head}   x {bases[0]} (wall, CPU)   x {bases[1]} (wall, CPU)")
    for name, row in rows.items():
        rss = f"{row['rss_mb']:.0f}" if "rss_mb" in row else "-"
        tiles = f"{row['n_tiles']:.0f}" if row.get("n_tiles") else "-"
        ratios = "   ".join(
            f"{row['seconds'] / rows[b]['seconds']:>10.2f} {row['cpu'] / rows[b]['cpu']:>5.2f}     " for b in bases
        )
        print(f"{name:<22} {row['seconds']:>8.3f} {row['cpu']:>7.3f} {rss:>13} {tiles:>6}   {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="40000x30000", help="level-0 WIDTHxHEIGHT of the generated slide")
    parser.add_argument("--mpp", type=float, default=0.25, help="level-0 microns per pixel")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per kind (median reported)")
    parser.add_argument("--slide-dir", type=Path, default=None, help="keep/reuse the generated slide here")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "SLIDE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--bare", nargs=2, metavar=("SLIDE", "WHICH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        print(bare_minimum(*args.bare))
        return
    if args.worker:
        print(json.dumps(_worker(*args.worker)))
        return
    if not TIME.exists():
        sys.exit(f"{TIME} not found: install GNU time (Debian: apt-get install time)")

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
        out = Path(tmp) / "out"
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "wsi-pipeline --help": [*_entry_point(), "--help"],
            "bare 1/64": [sys.executable, __file__, "--bare", str(slide), "1/64"],
            "bare mask level": [sys.executable, __file__, "--bare", str(slide), "mask"],
            "wsi-pipeline tile": [*_entry_point(), "tile", str(slide), "--out", str(out), "--overwrite"],
        }
        # Interleaved rounds, so a busy moment of a shared machine spreads over every kind alike.
        whole: dict[str, list[dict]] = {name: [] for name in commands}
        inproc: dict[str, list[dict]] = {
            k: [] for k in ("bare 1/64", "bare mask level", "tile_slide", "tile_slide + QC")
        }
        for i in range(args.repeat):
            for name, cmd in commands.items():
                whole[name].append(_whole_process(cmd))
            for kind in inproc:
                inproc[kind].append(_in_process(kind, slide, Path(tmp) / f"in-{i}-{kind.replace(' ', '_')}"))
    bases = ("bare 1/64", "bare mask level")
    _print(
        f"Whole process (/usr/bin/time -v), median of {args.repeat}:", {k: _median(v) for k, v in whole.items()}, bases
    )
    _print(
        f"In process (imports excluded), median of {args.repeat}:", {k: _median(v) for k, v in inproc.items()}, bases
    )


if __name__ == "__main__":
    main()
