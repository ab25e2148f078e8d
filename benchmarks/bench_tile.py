"""Benchmark of the tile stage on a generated slide of realistic size, side by side with the bare minimum and with
hs2p, the fastest peer we know of.

Generates (once, into a temporary folder or ``--slide-dir``) a tiled JPEG pyramidal TIFF of ``--size`` pixels at
``--mpp`` with real H&E pixels (``tests/slide_factory.py``), then measures in one run, rounds interleaved after one
warm-up round (bytecode and page caches warm for every kind alike):

Whole process (``/usr/bin/time -v``: wall time, CPU time and peak RSS of the whole command, interpreter start and
imports included), each ``--repeat`` times:

- ``python -c pass``: the interpreter alone, the floor of any command;
- ``wsi-pipeline --help``;
- ``bare 1/64``: a script that imports numpy, OpenCV and OpenSlide, opens the slide, reads the level closest to a
  1/64 downsample, masks it (saturation, median blur, Otsu) and computes every grid cell's tissue fraction: the
  least any tiler must do (``--bare``, below; it imports nothing from this package);
- ``bare mask level``: the same, reading the level ``tile`` reads for its mask (the coarsest level at least as fine
  as ``mask_mpp``, shrunk to it), i.e. the bare minimum at this package's mask resolution;
- ``wsi-pipeline tile``: the real command (mask, grid, store, QC picture, GeoJSON, manifest, summary table);
- with ``--hs2p-python PY`` (a Python that has hs2p; never a dependency of this package, e.g. ``python -m venv
  /tmp/hs2p && /tmp/hs2p/bin/pip install 'hs2p[openslide]==6.1.0'``), or when hs2p imports here:
  ``hs2p matched``: hs2p's ``tile_slides`` set up for the same job (Otsu mask at the 1/16 level, tiles of 224 px at
  0.5 um/px, >= 50 % tissue, OpenSlide), coordinates only; ``hs2p matched+previews``: the same with its mask and
  tiling previews (its QC pictures); ``hs2p default mask``: its default segmentation (fixed HSV range at the 1/64
  level), same tiles.

In process (a fresh process per measurement, imports excluded from the time): the two bare minimums,
``tile_slide`` without QC outputs, ``tile_slide`` with the QC picture and GeoJSON (the default), and the hs2p kinds.

Every time is printed as a ratio to the bases (the bare minimum at the mask level, and hs2p matched when it ran),
medians of ``--repeat`` runs, as wall time and as CPU time (user + system): on a shared machine the wall time also
counts waiting for a core, the CPU time does not. Tile counts are printed beside them.

    python benchmarks/bench_tile.py --hs2p-python /tmp/hs2p/bin/python     # 40000 x 30000 px at 0.25 mpp
    python benchmarks/bench_tile.py --size 8000x6000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


HS2P_KINDS = ("hs2p matched", "hs2p matched+previews", "hs2p default mask")


def hs2p_tile(slide_path: str, out_dir: str, kind: str) -> int:
    """hs2p's ``tile_slides`` on one slide for ``kind`` (see ``HS2P_KINDS``); returns the tiles kept."""
    from hs2p import PreviewConfig, SegmentationConfig, SlideSpec, TilingConfig, tile_slides
    from hs2p.configs import MaskSamplingConfig

    tiling = TilingConfig(
        requested_spacing_um=0.5, requested_tile_size_px=224, tolerance=0.05, overlap=0.0, backend="openslide"
    )
    # The package's mask: Otsu on saturation at the 1/16 level (4 um/px here, shrunk to 8); hs2p's default: a fixed
    # HSV range at the 1/64 level.
    segmentation = (
        SegmentationConfig(method="hsv")
        if kind == "hs2p default mask"
        else SegmentationConfig(method="otsu", downsample=16)
    )
    previews = kind == "hs2p matched+previews"
    masks = MaskSamplingConfig(
        pixel_mapping={"background": (0,), "tissue": (1,)},
        colors={"background": None, "tissue": (157, 219, 129)},
        min_coverage={"tissue": 0.5},  # the package's min_tissue
        output_mode="per_annotation",
        strategy="joint",
    )
    artifacts = tile_slides(
        [SlideSpec(sample_id="slide", image_path=Path(slide_path))],
        tiling=tiling,
        segmentation=segmentation,
        masks=masks,
        preview=PreviewConfig(save_mask_preview=previews, save_tiling_preview=previews),
        output_dir=Path(out_dir),
        num_workers=1,
    )
    return int(artifacts[0].num_tiles)


def _hs2p_worker(kind: str, slide_path: str, out_dir: str) -> dict:
    """One in-process hs2p measurement, its imports done before the clock starts."""
    import hs2p  # noqa: F401
    import hs2p.configs  # noqa: F401

    n_tiles, row = _timed(lambda: hs2p_tile(slide_path, out_dir, kind))
    return {**row, "n_tiles": n_tiles}


def _hs2p_version(python: str) -> str | None:
    proc = subprocess.run([python, "-c", "import hs2p; print(hs2p.__version__)"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


# ------------------------------------------------------------------------------------------- in-process work
def _worker(kind: str, slide_path: str, out_dir: str) -> dict:
    """One in-process measurement in this (fresh) process, imports done before the clock starts."""
    if kind.startswith("bare"):
        import cv2  # noqa: F401 - imported before timing, like the package's imports below
        import numpy  # noqa: F401
        import openslide  # noqa: F401

        n_tiles, row = _timed(lambda: bare_minimum(slide_path, "1/64" if kind == "bare 1/64" else "mask"))
        return {**row, "n_tiles": n_tiles}
    import wsi_pipeline.tiling._qc  # noqa: F401 - the QC module is imported when first used; not timed either
    from wsi_pipeline.slide import Slide
    from wsi_pipeline.store import read_attrs
    from wsi_pipeline.tiling import TileConfig, tile_slide

    config = TileConfig()
    config.qc.enabled = kind == "tile_slide + QC"
    store, row = _timed(lambda: tile_slide(Slide(slide_path), out_dir, config=config))
    return {**row, "n_tiles": int(read_attrs(store)["tiling"]["n_tiles"])}


def _timed(run: Callable[[], Any]) -> tuple[Any, dict]:
    """``run()``'s result, and the wall and CPU seconds it took in this process."""
    start, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}


def _in_process(kind: str, slide: Path, out_dir: Path, hs2p_python: str | None) -> dict:
    python, flag = (hs2p_python, "--hs2p-worker") if kind in HS2P_KINDS else (sys.executable, "--worker")
    cmd = [python, __file__, flag, kind, str(slide), str(out_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=_ENV)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- whole process
def _whole_process(cmd: list[str]) -> dict:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MiB) of ``cmd`` as ``/usr/bin/time -v`` reports
    them."""
    proc = subprocess.run([str(TIME), "-v", *cmd], capture_output=True, text=True, cwd=ROOT, env=_ENV)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    cpu = [float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr)]
    if not wall or not rss or len(cpu) != 2:
        raise RuntimeError(f"cannot read /usr/bin/time -v output:\n{proc.stderr[-1000:]}")
    hours, minutes, seconds = wall.groups()
    wall_seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
    tiles = re.search(r"^tiles (\d+)$", proc.stdout, re.MULTILINE)  # printed by the --bare and --hs2p kinds
    row = {"seconds": wall_seconds, "cpu": sum(cpu), "rss_mb": int(rss[1]) / 1024}
    return {**row, "n_tiles": int(tiles[1])} if tiles else row


# Measured commands write their bytecode caches (the warm-up round fills them), as an installed package has them.
_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def _entry_point() -> list[str]:
    script = Path(sys.executable).with_name("wsi-pipeline")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wsi_pipeline"]


def _median(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _print(title: str, rows: dict[str, dict], bases: tuple[str, ...]) -> None:
    print(f"\n{title}")
    head = f"{'work':<24} {'seconds':>8} {'CPU s':>7} {'peak RSS MiB':>13} {'tiles':>6}"
    print(head + "".join(f"   x {b} (wall, CPU)" for b in bases))
    for name, row in rows.items():
        rss = f"{row['rss_mb']:.0f}" if "rss_mb" in row else "-"
        tiles = f"{row['n_tiles']:.0f}" if row.get("n_tiles") else "-"
        ratios = "".join(
            f"   {row['seconds'] / rows[b]['seconds']:>{len(b) - 2}.2f} {row['cpu'] / rows[b]['cpu']:>11.2f}"
            for b in bases
        )
        print(f"{name:<24} {row['seconds']:>8.3f} {row['cpu']:>7.3f} {rss:>13} {tiles:>6}{ratios}")


def _hs2p_python(asked: str | None) -> tuple[str | None, str | None]:
    """The Python that runs hs2p (``--hs2p-python``, else this one when hs2p imports here) and hs2p's version."""
    for python in filter(None, (asked, sys.executable)):
        version = _hs2p_version(python)
        if version:
            return python, version
    if asked:
        sys.exit(f"{asked}: cannot import hs2p; install it there: {asked} -m pip install 'hs2p[openslide]==6.1.0'")
    return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="40000x30000", help="level-0 WIDTHxHEIGHT of the generated slide")
    parser.add_argument("--mpp", type=float, default=0.25, help="level-0 microns per pixel")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per kind (median reported)")
    parser.add_argument("--slide-dir", type=Path, default=None, help="keep/reuse the generated slide here")
    parser.add_argument("--hs2p-python", default=None, help="a Python with hs2p installed (the peer; optional)")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "SLIDE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--hs2p-worker", nargs=3, metavar=("KIND", "SLIDE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--bare", nargs=2, metavar=("SLIDE", "WHICH"), help=argparse.SUPPRESS)
    parser.add_argument("--hs2p", nargs=3, metavar=("KIND", "SLIDE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        print(f"tiles {bare_minimum(*args.bare)}")
        return
    if args.hs2p:
        print(f"tiles {hs2p_tile(args.hs2p[1], args.hs2p[2], args.hs2p[0])}")
        return
    if args.worker:
        print(json.dumps(_worker(*args.worker)))
        return
    if args.hs2p_worker:
        print(json.dumps(_hs2p_worker(*args.hs2p_worker)))
        return
    if not TIME.exists():
        sys.exit(f"{TIME} not found: install GNU time (Debian: apt-get install time)")
    hs2p_python, hs2p_version = _hs2p_python(args.hs2p_python)

    sys.path.insert(0, str(ROOT))
    from tests.slide_factory import make_pyramid_slide
    from wsi_pipeline import __version__

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
        inproc_kinds = ["bare 1/64", "bare mask level", "tile_slide", "tile_slide + QC"]
        if hs2p_python:
            for kind in HS2P_KINDS:
                commands[kind] = [hs2p_python, __file__, "--hs2p", kind, str(slide), str(Path(tmp) / "hs2p")]
            inproc_kinds += HS2P_KINDS
        whole: dict[str, list[dict]] = {name: [] for name in commands}
        inproc: dict[str, list[dict]] = {kind: [] for kind in inproc_kinds}
        # Interleaved rounds, so a busy moment of a shared machine spreads over every kind alike; round 0 warms up.
        for i in range(args.repeat + 1):
            for name, cmd in commands.items():
                shutil.rmtree(Path(tmp) / "hs2p", ignore_errors=True)
                run = _whole_process(cmd)
                if i:
                    whole[name].append(run)
            for kind in inproc:
                run = _in_process(kind, slide, Path(tmp) / f"in-{i}-{kind.replace(' ', '_')}", hs2p_python)
                if i:
                    inproc[kind].append(run)
    peers = f"hs2p {hs2p_version} ({hs2p_python})" if hs2p_python else "hs2p: not measured (--hs2p-python)"
    print(f"\nwsi_pipeline {__version__}; {peers}; load average {os.getloadavg()[0]:.1f}")
    bases = ("bare mask level", "hs2p matched") if hs2p_python else ("bare 1/64", "bare mask level")
    _print(
        f"Whole process (/usr/bin/time -v), median of {args.repeat}:", {k: _median(v) for k, v in whole.items()}, bases
    )
    _print(
        f"In process (imports excluded), median of {args.repeat}:", {k: _median(v) for k, v in inproc.items()}, bases
    )


if __name__ == "__main__":
    main()
