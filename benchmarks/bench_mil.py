"""Benchmark MIL training and bag loading, side by side in one run.

1. Seconds per training epoch of ABMIL, ACMIL and ASMIL (each with its default recipe: ASMIL with its EMA anchor
   and token dropping; ASMIL as shipped, a module per branch, and with one module shared by the branches) on the
   same in-memory bags, as ratios to ABMIL.
2. Bag-loading throughput: whole bags read from the zarr stores (``store.read_features``) vs copying the same
   bytes from numpy arrays already in memory.
3. Training threads: seconds per ASMIL epoch with the thread count training picks by itself (``threads: null``,
   ``choose_threads``) vs 1 thread vs every core, on Musk-sized bags (92 bags of 2-40 x 166) and slide-sized bags
   (``--thread-bags`` bags of 5,000 x 1024), rounds interleaved (median).

Usage::

    python benchmarks/bench_mil.py                                    # 200 bags of 5,000 x 1024 (the issue's size)
    python benchmarks/bench_mil.py --bags 20 --instances 5000 --device cpu   # a quick CPU run
    python benchmarks/bench_mil.py --only-threads                     # part 3 alone (CPU)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from wsi_pipeline.batch import available_cpus
from wsi_pipeline.device import resolve_device
from wsi_pipeline.mil import Anchor, RandomDropping, create_model
from wsi_pipeline.store import FeatureWriter, read_features, store_path, write_tile_store
from wsi_pipeline.training import choose_threads, make_optimizer, train_epoch

ENCODER = "bench"


def make_stores(root: Path, bags: list[np.ndarray]) -> list[Path]:
    paths = []
    for i, bag in enumerate(bags):
        n = len(bag)
        coords = np.stack([np.arange(n) % 100, np.arange(n) // 100], axis=1) * 256
        path = write_tile_store(
            store_path(root, f"bag{i:04d}"),
            coords,
            np.ones(n),
            {"slide": {"id": f"bag{i:04d}", "path": None}, "tiling": {"tile_size_level0": 256}},
        )
        with FeatureWriter(path, ENCODER, n, bag.shape[1]) as writer:
            writer.write(0, bag)
        paths.append(path)
    return paths


def bench_loading(paths: list[Path], bags: list[np.ndarray], repeats: int) -> dict[str, float]:
    nbytes = sum(b.nbytes for b in bags)
    best_zarr, best_np = float("inf"), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            read_features(path, ENCODER)
        best_zarr = min(best_zarr, time.perf_counter() - start)
        start = time.perf_counter()
        for bag in bags:
            np.array(bag, copy=True)
        best_np = min(best_np, time.perf_counter() - start)
    return {
        "zarr_gbps": nbytes / best_zarr / 1e9,
        "numpy_gbps": nbytes / best_np / 1e9,
        "zarr_bags_per_s": len(paths) / best_zarr,
        "numpy_bags_per_s": len(bags) / best_np,
    }


# label -> (registered model, model kwargs): ASMIL as shipped (a module per branch) and with one shared module.
MODELS = {
    "abmil": ("abmil", {}),
    "acmil": ("acmil", {}),
    "asmil": ("asmil", {}),
    "asmil shared_branches": ("asmil", {"shared_branches": True}),
}


def make_trainer(
    name: str, kwargs: dict, bags: list[torch.Tensor], labels: torch.Tensor, device: torch.device
) -> Callable[[], float]:
    """One model with its default recipe, warmed up; calling the result times one training epoch."""
    torch.manual_seed(0)
    model = create_model(name, in_dim=bags[0].shape[1], n_classes=2, **kwargs).to(device)
    anchor = Anchor(model) if name == "asmil" else None
    dropper = RandomDropping("token" if name == "asmil" else "none", 10, torch.Generator().manual_seed(0))
    optimizer = make_optimizer(list(model.parameters()), lr=1e-4, weight_decay=1e-5)
    items = [(str(i), bag) for i, bag in enumerate(bags)]
    targets = {str(i): labels[i : i + 1] for i in range(len(bags))}
    train_epoch(model, items[:2], targets, optimizer, dropper=dropper, anchor=anchor)  # warm-up

    def epoch() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = train_epoch(model, items, targets, optimizer, dropper=dropper, anchor=anchor)
        float(sum(loss.values()))  # one sync per epoch
        return time.perf_counter() - start

    return epoch


def bench_threads(thread_bags: int, rounds: int) -> None:
    """Seconds per ASMIL epoch on CPU: the automatic thread count vs 1 vs every core, small and slide-sized bags."""
    rng = np.random.default_rng(0)
    cpus = available_cpus()
    shapes = {
        "Musk-sized: 92 bags of 2-40 x 166": [(int(n), 166) for n in rng.integers(2, 41, 92)],
        f"slide-sized: {thread_bags} bags of 5000 x 1024": [(5000, 1024)] * thread_bags,
    }
    before = torch.get_num_threads()
    print(
        f"\ntraining threads, ASMIL on CPU, {cpus} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"{rounds} interleaved rounds (median s / epoch)"
    )
    print("| bags | auto picks | auto | 1 thread | all cores | auto / best of the three |")
    print("| --- | --- | --- | --- | --- | --- |")
    for title, sizes in shapes.items():
        bags = [torch.from_numpy(rng.standard_normal(size, dtype=np.float32)) for size in sizes]
        labels = torch.from_numpy(rng.integers(0, 2, len(bags)))
        epoch = make_trainer("asmil", bags, labels, torch.device("cpu"))
        n_params = sum(p.numel() for p in create_model("asmil", in_dim=sizes[0][1], n_classes=2).parameters())
        times: dict[str, list[float]] = {"auto": [], "1": [], "all": []}
        picks = []
        for _ in range(rounds):
            for key in times:
                if key == "auto":  # as train() does at the start of a run: bag sizes, model size, idle cores now
                    picks.append(choose_threads([n for n, _ in sizes], n_params))
                threads = {"auto": picks[-1], "1": 1, "all": cpus}[key]
                torch.set_num_threads(threads)
                times[key].append(epoch())
        sec = {key: float(np.median(t)) for key, t in times.items()}
        print(
            f"| {title} | {', '.join(map(str, picks))} | {sec['auto']:.2f} | {sec['1']:.2f} | {sec['all']:.2f} | "
            f"{sec['auto'] / min(sec.values()):.2f} |"
        )
    torch.set_num_threads(before)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=200)
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per model, interleaved (median reported)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the stores (default: a temp dir)")
    parser.add_argument("--thread-bags", type=int, default=10, help="slide-sized bags in the threads comparison")
    parser.add_argument("--thread-rounds", type=int, default=3)
    parser.add_argument("--only-threads", action="store_true", help="only the training-threads comparison")
    args = parser.parse_args()
    if args.only_threads:
        bench_threads(args.thread_bags, args.thread_rounds)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    bags16 = [
        rng.standard_normal((args.instances, args.dim), dtype=np.float32).astype(np.float16) for _ in range(args.bags)
    ]
    print(
        f"{args.bags} bags of {args.instances} x {args.dim} (float16 in stores), device {device}, "
        f"torch threads {torch.get_num_threads()}"
    )

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        paths = make_stores(Path(tmp), bags16)
        load = bench_loading(paths, bags16, repeats=3)
    print(
        f"bag loading: zarr {load['zarr_gbps']:.2f} GB/s ({load['zarr_bags_per_s']:.0f} bags/s), numpy in memory "
        f"{load['numpy_gbps']:.2f} GB/s ({load['numpy_bags_per_s']:.0f} bags/s), "
        f"zarr/numpy = {load['zarr_gbps'] / load['numpy_gbps']:.3f}"
    )

    bags = [torch.from_numpy(b.astype(np.float32)).to(device) for b in bags16]
    labels = torch.from_numpy(rng.integers(0, 2, args.bags)).to(device)
    del bags16
    trainers = {label: make_trainer(name, kwargs, bags, labels, device) for label, (name, kwargs) in MODELS.items()}
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.epochs):  # round-robin, so that a change of machine load hits every model alike
        for name, epoch in trainers.items():
            times[name].append(epoch())
    seconds = {name: float(np.median(t)) for name, t in times.items()}
    print("| model | s / epoch | ms / bag | ratio to ABMIL |")
    print("| --- | --- | --- | --- |")
    for name, sec in seconds.items():
        print(f"| {name} | {sec:.2f} | {1000 * sec / args.bags:.1f} | {sec / seconds['abmil']:.2f} |")
    del bags, trainers
    bench_threads(args.thread_bags, args.thread_rounds)


if __name__ == "__main__":
    main()
