"""The classic MIL benchmarks (Musk1, Musk2, Elephant, Fox, Tiger...) as project bag stores.

A benchmark CSV has one row per instance, ``label,bag_id,f1,...,fD`` and no header; a bag's label is its rows'
label. ``convert_mil_csv`` writes one real store per bag (``<name>_<bag_id>.zarr``, dummy grid coordinates,
attrs saying where it came from, features under the encoder name ``mil-features``) and a labels CSV, so ``train``
runs on them exactly as on slides.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .store import FeatureWriter, has_features, store_path, write_tile_store

__all__ = ["MIL_ENCODER", "read_mil_csv", "convert_mil_csv"]

log = logging.getLogger(__name__)

MIL_ENCODER = "mil-features"


def read_mil_csv(path: str | Path) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """``(bag_ids in file order, bag labels, {bag_id: (n_i, D) float32 features})`` of a benchmark CSV."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: MIL benchmark CSV not found")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ConfigError(f"{path}: expected numeric rows label,bag_id,f1..fD without a header ({err})") from err
    if table.shape[1] < 3:
        raise ConfigError(f"{path}: expected rows label,bag_id,f1..fD (found {table.shape[1]} columns)")
    labels, bag_col, feats = table[:, 0], table[:, 1], table[:, 2:].astype(np.float32)
    bag_ids: list[str] = []
    bags: dict[str, list[int]] = {}
    bag_labels: dict[str, float] = {}
    for row, bag in enumerate(bag_col):
        key = str(int(bag)) if float(bag).is_integer() else str(bag)
        if key not in bags:
            bag_ids.append(key)
            bags[key] = []
            bag_labels[key] = labels[row]
        elif bag_labels[key] != labels[row]:
            # Some releases label instances; a bag is positive when any instance is.
            bag_labels[key] = max(bag_labels[key], labels[row])
        bags[key].append(row)
    y = np.array([int(bag_labels[b] > 0) for b in bag_ids], dtype=np.int64)
    return bag_ids, y, {b: feats[rows] for b, rows in bags.items()}


def convert_mil_csv(
    csv_path: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Convert a MIL benchmark CSV into bag stores and a labels CSV.

    Parameters
    ----------
    csv_path
        ``label,bag_id,f1..fD`` rows, no header.
    out_dir
        Receives ``stores/<name>_<bag_id>.zarr`` and ``labels.csv`` (``slide_id,label``).
    name
        Prefix of the bag ids; default the CSV's stem (``musk1``).
    overwrite
        Rewrite stores that already exist.

    Returns
    -------
    stores_dir, labels_csv

    Examples
    --------
    >>> stores, labels = convert_mil_csv("musk1.csv", "mil/musk1")  # doctest: +SKIP
    >>> train(stores, labels, "runs/", TrainConfig(model="abmil", encoder="mil-features"))  # doctest: +SKIP
    """
    csv_path, out_dir = Path(csv_path), Path(out_dir)
    name = name or csv_path.stem
    bag_ids, y, bags = read_mil_csv(csv_path)
    stores_dir = out_dir / "stores"
    dim = next(iter(bags.values())).shape[1]
    for bag_id in bag_ids:
        sid = f"{name}_{bag_id}"
        path = store_path(stores_dir, sid)
        if not overwrite and has_features(path, MIL_ENCODER):
            continue
        feats = bags[bag_id]
        n = len(feats)
        side = int(np.ceil(np.sqrt(n)))
        coords = np.stack([np.arange(n) % side, np.arange(n) // side], axis=1)  # a dummy 1-pixel grid
        attrs = {
            "slide": {
                "id": sid,
                "path": None,
                "source": "mil-benchmark-csv",
                "csv": str(csv_path.resolve()),
                "bag_id": bag_id,
            },
            "tiling": {"tile_size_level0": 1, "stride_level0": 1, "n_tiles": n, "source": "mil-benchmark-csv"},
            "mask": {},
            "config": {},
        }
        write_tile_store(path, coords, np.ones(n, dtype=np.float32), attrs)
        writer_attrs = {"encoder": MIL_ENCODER, "source": "mil-benchmark-csv", "csv": csv_path.name, "dim": dim}
        with FeatureWriter(path, MIL_ENCODER, n, dim, dtype="float32", attrs=writer_attrs) as writer:
            writer.write(0, feats)
    labels_csv = out_dir / "labels.csv"
    with labels_csv.open("w", newline="") as fh:
        writer_csv = csv.writer(fh)
        writer_csv.writerow(["slide_id", "label"])
        writer_csv.writerows([f"{name}_{b}", int(label)] for b, label in zip(bag_ids, y, strict=True))
    log.info("%s: %d bags (%d positive), D=%d -> %s", csv_path, len(bag_ids), int(y.sum()), dim, stores_dir)
    return stores_dir, labels_csv
