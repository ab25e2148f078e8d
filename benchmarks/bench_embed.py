"""Benchmark of the embed stage on large slides and on a cohort of small ones, side by side in one run.

For each case, on the same tiles:

(a) the encoder alone on tiles already decoded in memory (normalisation on the device included),
(b) reading alone: plain loops that open each slide with OpenSlide and read its tiles as the encoder sees them
    (``read_tile`` with the encoder's view), in as many processes as the pipeline has readers,
(c) the full pipeline: ``embed_stores`` on the folder of stores (skip checks, locks, manifest, writing included),
(d) cohort only: one pipeline per slide (``embed_slide`` in a loop: readers started for every slide, as 0.x did).

It prints tiles/s and ``(c) / min(a, b)``: close to 1 means the pipeline runs at the speed of its slowest part,
which needs the parts to run on cores of their own. It also prints the CPU time per tile of each part (the process
and its readers) and ``CPU (c) / ((a) + (b))``: close to 1 means the pipeline does no work beyond reading and
encoding, whatever else the machine runs (on a shared machine, where the parts cannot each have a free core, this
is the figure that does not move with the load of other jobs).
The cases:

- ``large``: ``--large-slides`` stores of ``--large-tiles`` tiles each over CMU-1-Small-Region.svs (a dense,
  overlapping grid, so any count fits);
- ``cohort``: ``--cohort-slides`` small slides of 40-200 tiles (biopsy-sized), made from real H&E pixels of
  CMU-1-Small-Region.svs with ``tests/slide_factory.py``: ``--distinct`` different slide files, each slide a
  link of its own name to one of them (so every slide is opened separately), with its own seeded tile subset.

On CPU the readers and the encoder share the cores, so (a) runs with the threads the pipeline leaves to the encoder
(``available_cpus() - num_workers``). ``--repeat N`` measures every part N times, interleaving the cases (and
alternating the order of (b) and (c)); each round gives its own ratio, measured minutes apart at most, and the
report gives the median tiles/s and the median and range of the per-round ratios (on a shared machine the load of
other jobs moves absolute figures a lot; ratios measured side by side move less).

Usage::

    python benchmarks/bench_embed.py                                          # tiny_test: reading-bound, CPU
    python benchmarks/bench_embed.py --encoder efficientnet_lite0 --large-tiles 512 --cohort-slides 12
    python benchmarks/bench_embed.py --encoder timm:vit_large_patch16_224 --weights random --device cuda \\
        --precision bf16 --num-workers 16 --batch-size 256 --large-tiles 16384 --cohort-slides 400
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.slide_factory

from wsi_pipeline.batch import available_cpus  # noqa: E402
from wsi_pipeline.embedding import (  # noqa: E402
    EmbedConfig,
    EmbedRuntime,
    embed_slide,
    embed_stores,
    encoder_view,
    load_encoder,
)
from wsi_pipeline.slide import Slide  # noqa: E402
from wsi_pipeline.store import list_stores, read_attrs, read_coords, store_path, write_tile_store  # noqa: E402
from wsi_pipeline.tiling import TileView, read_tile  # noqa: E402

SHARED = Path(os.environ.get("WSI_PIPELINE_SHARED_DATA", ROOT.parent / "shared" / "data"))
TILE = 224


# --------------------------------------------------------------------------------------------- data
def _store(out: Path, slide_id: str, slide_path: Path, coords: np.ndarray) -> Path:
    with Slide(slide_path, slide_id=slide_id) as slide:
        info = slide.info()
    info["path"] = str(slide_path)  # the link's own name, not the file it points to
    tiling = {"read_level": 0, "read_size": TILE, "tile_size": TILE, "target_mpp": 0.5}
    return write_tile_store(store_path(out, slide_id), coords, np.ones(len(coords)), {"slide": info, "tiling": tiling})


def make_large(slide_path: Path, out: Path, n_slides: int, n_tiles: int) -> Path:
    """``n_slides`` stores of ``n_tiles`` level-0 tiles each over the slide (a dense, overlapping grid)."""
    with Slide(slide_path) as slide:
        width, height = slide.dimensions
    step = max(16, int(np.sqrt((width - TILE) * (height - TILE) / n_tiles)))
    xs, ys = np.meshgrid(np.arange(0, width - TILE, step), np.arange(0, height - TILE, step))
    coords = np.resize(np.stack([xs.ravel(), ys.ravel()], axis=1), (n_tiles, 2))  # repeat the grid if needed
    for i in range(n_slides):
        _store(out, f"large-{i:02d}", slide_path, coords)
    return out


def make_cohort(work: Path, out: Path, n_slides: int, n_distinct: int, lo: int, hi: int, seed: int = 0) -> Path:
    """``n_slides`` small slides of ``lo``-``hi`` tiles, real H&E pixels, each opened under its own name."""
    from tests.slide_factory import make_pyramid_slide

    side = int(np.ceil(np.sqrt(hi))) * TILE
    files = []
    for i in range(n_distinct):
        path = work / "files" / f"biopsy-{i:02d}.svs"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_pyramid_slide(path, width=side, height=side, mpp=0.5, tissue_boxes=[(0, 0, side, side)], seed=i)
        files.append(path)
    grid = np.array([(x, y) for y in range(0, side, TILE) for x in range(0, side, TILE)], dtype=np.int64)
    rng = np.random.default_rng(seed)
    for i in range(n_slides):
        link = work / "slides" / f"slide-{i:03d}.svs"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(files[i % n_distinct])
        rows = np.sort(rng.choice(len(grid), size=int(rng.integers(lo, hi + 1)), replace=False))
        _store(out, f"slide-{i:03d}", link, grid[rows])
    return out


# --------------------------------------------------------------------------------------------- clocks
class Clock:
    """Wall time and CPU time (this process's threads plus its finished child processes: the readers)."""

    @staticmethod
    def _cpu() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, self._cpu() - self.cpu


# --------------------------------------------------------------------------------------------- (b) reading alone
_VIEW: TileView | None = None
_OPEN: dict[str, Slide] = {}


def _read_unit(unit: tuple[str, dict, np.ndarray]) -> int:
    """Read tiles of one slide in a plain loop (handles kept per process, as a reader would)."""
    path, tiling, coords = unit
    slide = _OPEN.get(path) or _OPEN.setdefault(path, Slide(path).open())
    for x, y in coords:
        read_tile(slide, (int(x), int(y)), tiling, _VIEW)
    if len(_OPEN) > 4:
        for other in [p for p in _OPEN if p != path]:
            _OPEN.pop(other).close()
    return len(coords)


def _init_reader(view: TileView) -> None:
    global _VIEW
    _VIEW = view
    torch.set_num_threads(1)


def read_alone(stores: list[Path], view: TileView, workers: int, chunk: int = 256) -> tuple[int, float, float]:
    units = []
    for store in stores:
        attrs = read_attrs(store)
        coords = read_coords(store)
        path, tiling = attrs["slide"]["path"], attrs["tiling"]
        units += [(path, tiling, coords[i : i + chunk]) for i in range(0, len(coords), chunk)]
    clock = Clock()
    if workers == 0:
        _init_reader(view)
        n = sum(_read_unit(unit) for unit in units)
        for slide in _OPEN.values():
            slide.close()
        _OPEN.clear()
    else:
        pool = multiprocessing.get_context("fork").Pool(workers, _init_reader, (view,))
        n = sum(pool.imap(_read_unit, units))
        pool.close()
        pool.join()  # reaped: their CPU time is counted
    return n, *clock.stop()


# --------------------------------------------------------------------------------------------- (a) encoder alone
def encoder_alone(
    runtime: EmbedRuntime, stores: list[Path], batch_size: int, min_seconds: float
) -> tuple[int, float, float]:
    view = encoder_view(runtime.encoder.config)
    tiles = []
    for store in stores:  # up to 1024 real tiles, decoded once
        attrs = read_attrs(store)
        with Slide(attrs["slide"]["path"]) as slide:
            tiles += [torch.from_numpy(read_tile(slide, xy, attrs["tiling"], view)) for xy in read_coords(store)[:256]]
        if len(tiles) >= 1024:
            break
    batch = torch.stack(tiles)
    batches = [batch[i : i + batch_size] for i in range(0, len(batch), batch_size)]
    batches = [b for b in batches if len(b) == batch_size] or batches
    if runtime.device.type == "cuda":
        batches = [b.pin_memory() for b in batches]
    runtime.forward(batches[0])  # warm-up (and compilation)
    _sync(runtime.device)
    n, clock = 0, Clock()
    while time.perf_counter() - clock.wall < min_seconds or n == 0:
        for b in batches:
            runtime.forward(b)
            n += len(b)
        _sync(runtime.device)
    return n, *clock.stop()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------- (c), (d)
def pipeline(folder: Path, config: EmbedConfig, runtime: EmbedRuntime) -> tuple[int, float, float]:
    clock = Clock()
    result = embed_stores(folder, config=config, encoder=runtime.encoder, overwrite=True)
    wall, cpu = clock.stop()
    assert not result.failed, result.failed
    return sum(r.n_tiles or 0 for r in result.records), wall, cpu


def per_slide(folder: Path, runtime: EmbedRuntime) -> tuple[int, float, float]:
    clock = Clock()
    n = sum(embed_slide(store, runtime) for store in list_stores(folder))
    return n, *clock.stop()


# --------------------------------------------------------------------------------------------- main
def bench(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        cases = {
            "large": make_large(Path(args.slide), work / "large", args.large_slides, args.large_tiles),
            "cohort": make_cohort(work, work / "cohort", args.cohort_slides, args.distinct, 40, 200),
        }
        config = EmbedConfig(
            encoder=args.encoder,
            weights=args.weights,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            compile=args.compile,
        )
        encoder = load_encoder(config)
        runtime = EmbedRuntime.create(encoder, config)
        # The runtime keeps its own config; (c) builds a fresh one from the same config and encoder.
        view = encoder_view(encoder.config)
        speed: dict[str, dict[str, list[float]]] = {case: {} for case in cases}  # tiles/s per round
        cpu: dict[str, dict[str, list[float]]] = {case: {} for case in cases}  # CPU ms per tile per round
        tiles: dict[str, int] = {}

        def measure(case: str, part: str, fn: Callable[[], tuple[int, float, float]]) -> None:
            n, wall, cpu_s = fn()
            if part != "a":
                tiles[case] = n
            speed[case].setdefault(part, []).append(n / wall)
            cpu[case].setdefault(part, []).append(1000 * cpu_s / n)

        for round_ in range(args.repeat):
            for case, folder in cases.items():
                stores = list_stores(folder)
                with runtime.cpu_threads() as threads:
                    measure(
                        case,
                        "a",
                        lambda stores=stores: encoder_alone(runtime, stores, args.batch_size, args.min_seconds),
                    )
                parts = {
                    "b": lambda stores=stores: read_alone(stores, view, runtime.num_workers),
                    "c": lambda folder=folder: pipeline(folder, config, runtime),
                }
                for part in ("b", "c") if round_ % 2 == 0 else ("c", "b"):
                    measure(case, part, parts[part])
                if case == "cohort" and not args.no_per_slide:
                    with runtime.cpu_threads():
                        measure(case, "d", lambda folder=folder: per_slide(folder, runtime))
                row = {part: values[-1] for part, values in speed[case].items()}
                use = {part: values[-1] for part, values in cpu[case].items()}
                print(
                    f"round {round_ + 1} {case}: "
                    + ", ".join(f"({part}) {row[part]:.1f} tiles/s {use[part]:.2f} CPU ms/tile" for part in row)
                    + f"; (c)/min(a,b) = {row['c'] / min(row['a'], row['b']):.3f}",
                    flush=True,
                )
        report = {
            "encoder": encoder.enc_name,
            "weights": encoder.weights.source,
            "device": torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else "cpu",
            "cpu": platform.processor() or platform.machine(),
            "available_cpus": available_cpus(),
            "reader_workers": runtime.num_workers,
            "encoder_threads": threads,
            "precision": runtime.precision,
            "batch_size": args.batch_size,
            "repeat": args.repeat,
            "cases": {},
        }
        for case, parts in speed.items():
            med = {part: statistics.median(values) for part, values in parts.items()}
            slowest = [min(a, b) for a, b in zip(parts["a"], parts["b"], strict=True)]  # per round
            both = [a + b for a, b in zip(cpu[case]["a"], cpu[case]["b"], strict=True)]  # CPU of the two parts alone
            row: dict = {"slides": len(list_stores(cases[case])), "tiles": tiles[case]}
            for part in parts:
                row[f"{part}_tiles_s"] = round(med[part], 1)
                row[f"{part}_cpu_ms_per_tile"] = round(statistics.median(cpu[case][part]), 3)
            for part in ("c", "d"):
                if part in parts:
                    ratios = [value / low for value, low in zip(parts[part], slowest, strict=True)]
                    row[f"{part}_over_min_ab"] = round(statistics.median(ratios), 3)
                    row[f"{part}_over_min_ab_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
                    extra = [value / ab for value, ab in zip(cpu[case][part], both, strict=True)]
                    row[f"{part}_cpu_over_a_plus_b"] = round(statistics.median(extra), 3)
            report["cases"][case] = row
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _print(report: dict) -> None:
    for key, value in report.items():
        if key != "cases":
            print(f"{key:<16} {value}")
    print("\ntiles/s and CPU ms per tile: medians over rounds; ratios: median [range] of the per-round ratios")
    heads = ["case", "slides", "tiles", "(a) encoder", "(b) reading", "(c) pipeline", "(c)/min(a,b)", "(d) per slide"]
    heads += ["(d)/min(a,b)", "CPU ms/tile a, b, c, d", "CPU c/(a+b)", "CPU d/(a+b)"]
    print(" | ".join(heads))
    for case, row in report["cases"].items():
        ratio = [
            f"{row[f'{p}_over_min_ab']} {row[f'{p}_over_min_ab_range']}" if f"{p}_tiles_s" in row else "-" for p in "cd"
        ]
        cells = [
            case,
            row["slides"],
            row["tiles"],
            row["a_tiles_s"],
            row["b_tiles_s"],
            row["c_tiles_s"],
            ratio[0],
            row.get("d_tiles_s", "-"),
            ratio[1],
            ", ".join(str(row.get(f"{p}_cpu_ms_per_tile", "-")) for p in "abcd"),
            row["c_cpu_over_a_plus_b"],
            row.get("d_cpu_over_a_plus_b", "-"),
        ]
        print(" | ".join(str(cell) for cell in cells))
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", default=str(SHARED / "slides" / "CMU-1-Small-Region.svs"))
    parser.add_argument("--encoder", default="tiny_test")
    parser.add_argument("--weights", default=None, help="default: the shared EfficientNet-Lite0 file, else random")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--large-slides", type=int, default=1)
    parser.add_argument("--large-tiles", type=int, default=4096)
    parser.add_argument("--cohort-slides", type=int, default=100)
    parser.add_argument("--distinct", type=int, default=10, help="different slide files behind the cohort")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=2.0, help="least time spent timing (a)")
    parser.add_argument("--no-per-slide", action="store_true", help="skip (d), one pipeline per slide")
    args = parser.parse_args()
    if not Path(args.slide).is_file():
        parser.error(f"{args.slide}: not found; pass --slide (CMU-1-Small-Region.svs, e.g. from `make example`)")
    if args.weights is None:
        lite0 = SHARED / "weights" / "efficientnet-lite0-57934424.pth"
        args.weights = str(lite0) if args.encoder == "efficientnet_lite0" and lite0.exists() else "random"
    _print(bench(args))


if __name__ == "__main__":
    main()
