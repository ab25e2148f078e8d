"""Benchmark of the embed stage, side by side in one run on the same tiles.

(a) the encoder alone on pre-decoded ``uint8`` tiles already in memory (normalisation on the device included),
(b) reading + decoding + resizing alone (the DataLoader workers, no model),
(c) the full ``embed`` pipeline (``embed_stores`` on the store, writing the embeddings).

Reports tiles/s for each and ``(c) / min(a, b)``: close to 1 means the pipeline is only as slow as its slowest part.
On CPU the readers and the encoder share the same cores, so (a) is measured with the threads the pipeline leaves
to the encoder (``available_cpus() - num_workers``).

Usage::

    python benchmarks/bench_embed.py                       # efficientnet_lite0 on CMU-1-Small-Region.svs, CPU
    python benchmarks/bench_embed.py --encoder uni2_h --device cuda --tiles 4096 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from wsi_pipeline.batch import available_cpus
from wsi_pipeline.embedding import EmbedConfig, EmbedRuntime, TileDataset, embed_stores, load_encoder
from wsi_pipeline.embedding._embed import _cpu_threads
from wsi_pipeline.slide import Slide
from wsi_pipeline.store import read_attrs, read_coords, store_path, write_tile_store

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def make_store(slide_path: Path, out: Path, n_tiles: int, tile: int = 224) -> Path:
    """A store of ``n_tiles`` level-0 tiles over the slide (a dense, overlapping grid so any count fits)."""
    with Slide(slide_path) as slide:
        width, height = slide.dimensions
        info = slide.info()
    step = max(16, int(np.sqrt((width - tile) * (height - tile) / n_tiles)))
    xs, ys = np.meshgrid(np.arange(0, width - tile, step), np.arange(0, height - tile, step))
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    coords = np.resize(coords, (n_tiles, 2))  # repeat the grid if the slide is small
    attrs = {"slide": info, "tiling": {"read_level": 0, "read_size": tile, "tile_size": tile, "target_mpp": 0.5}}
    return write_tile_store(store_path(out, slide_path.stem), coords, np.ones(len(coords)), attrs)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        store = make_store(Path(args.slide), work, args.tiles)
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
        attrs = read_attrs(store)
        dataset = TileDataset(
            attrs["slide"]["path"], read_coords(store), read_level=0, read_size=224, spec=encoder.config
        )
        n = len(dataset)
        with _cpu_threads(runtime):
            threads = torch.get_num_threads()
            # (a) encoder alone on tiles already decoded into memory
            tiles = torch.stack([torch.from_numpy(dataset.read(i)) for i in range(n)])
            if runtime.device.type == "cuda":
                tiles = tiles.pin_memory()
            batches = list(tiles.split(args.batch_size))
            runtime.forward(batches[0])  # warm-up (and compilation)
            sync(runtime.device)
            start = time.perf_counter()
            for batch in batches:
                runtime.forward(batch)
            sync(runtime.device)
            t_encoder = time.perf_counter() - start

            # (b) reading + decoding alone, with the pipeline's workers and batches
            dataset.close()
            loader = DataLoader(
                dataset,
                batch_size=args.batch_size,
                num_workers=runtime.num_workers,
                prefetch_factor=config.prefetch_factor if runtime.num_workers else None,
                pin_memory=runtime.device.type == "cuda",
            )
            start = time.perf_counter()
            seen = sum(len(batch) for _, batch in loader)
            t_read = time.perf_counter() - start
            assert seen == n

        # (c) the full pipeline (encoder already built, as in a long run)
        start = time.perf_counter()
        result = embed_stores(work, config=config, encoder=encoder, overwrite=True)
        t_full = time.perf_counter() - start
        assert not result.failed, result.records
        a, b, c = n / t_encoder, n / t_read, n / t_full
        return {
            "encoder": encoder.enc_name,
            "weights": encoder.weights.source,
            "device": torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else "cpu",
            "cpu": platform.processor() or platform.machine(),
            "available_cpus": available_cpus(),
            "reader_workers": runtime.num_workers,
            "encoder_threads": threads,
            "precision": runtime.precision,
            "batch_size": args.batch_size,
            "tiles": n,
            "a_encoder_tiles_s": round(a, 1),
            "b_read_tiles_s": round(b, 1),
            "c_pipeline_tiles_s": round(c, 1),
            "ratio_c_over_min_ab": round(c / min(a, b), 3),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", default=str(SHARED / "slides" / "CMU-1-Small-Region.svs"))
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None, help="default: the shared EfficientNet-Lite0 file, else random")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--tiles", type=int, default=512)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if args.weights is None:
        lite0 = SHARED / "weights" / "efficientnet-lite0-57934424.pth"
        args.weights = str(lite0) if args.encoder == "efficientnet_lite0" and lite0.exists() else "random"
    report = bench(args)
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
