"""MIL data sets as project bag stores (``convert-mil``, ``digit-bags``): the classic benchmark CSVs and a
slide-scale sparse-bag set with ground truth.

- ``convert_mil_csv``: a classic benchmark CSV (Musk1, Musk2, Elephant...; one row per instance,
  ``label,bag_id,f1,...,fD``, no header; a bag's label is its rows' label).
- ``make_digit_bags``: bags of hundreds of real handwritten digits (scikit-learn's 1,797 8 x 8 images) where a
  positive bag holds a few images of one target digit (0.5-5 %, like a small metastasis in a slide) and every store
  records which instances those are (``instance_labels``), so training and prediction can score localisation.

Both write one real store per bag (``<name>_<bag_id>.zarr``, dummy grid coordinates, attrs saying where it came
from, features under the encoder name ``mil-features``) and a labels CSV, so ``train`` runs on them exactly as on
slides.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .files import atomic_write_text, remove_path
from .store import (
    FeatureWriter,
    features_attrs,
    has_features,
    store_path,
    write_instance_labels,
    write_tile_store,
)

__all__ = ["MIL_ENCODER", "read_mil_csv", "convert_mil_csv", "DigitBagsConfig", "make_digit_bags"]

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
    source = {"source": "mil-benchmark-csv", "csv": str(csv_path.resolve())}
    for bag_id in bag_ids:
        path = store_path(stores_dir, f"{name}_{bag_id}")
        if not overwrite and _same_bag(path, bags[bag_id]):
            continue  # converted before from these very rows
        _write_bag_store(path, bags[bag_id], {**source, "bag_id": bag_id})
    labels_csv = _write_labels_csv(out_dir, [f"{name}_{b}" for b in bag_ids], y)
    dim = next(iter(bags.values())).shape[1]
    log.info("%s: %d bags (%d positive), D=%d -> %s", csv_path, len(bag_ids), int(y.sum()), dim, stores_dir)
    return stores_dir, labels_csv


def _same_bag(path: Path, feats: np.ndarray) -> bool:
    """Whether ``path`` holds these very features already (its recorded embeddings' sha256): a CSV whose rows
    changed is converted again, whatever its bag ids."""
    if not has_features(path, MIL_ENCODER):
        return False
    digest = hashlib.sha256(np.ascontiguousarray(feats, dtype=np.float32).tobytes()).hexdigest()
    return (features_attrs(path, MIL_ENCODER) or {}).get("content_sha256") == digest


def _write_bag_store(
    path: Path, feats: np.ndarray, source: dict[str, Any], instance_labels: np.ndarray | None = None, **label_attrs
) -> None:
    """One bag as a finished store: dummy 1-pixel grid coordinates, float32 features, optional ground truth."""
    n, dim = feats.shape
    side = int(np.ceil(np.sqrt(n)))
    coords = np.stack([np.arange(n) % side, np.arange(n) // side], axis=1)
    attrs = {
        "slide": {"id": path.name.removesuffix(".zarr"), "path": None, **source},
        "tiling": {"tile_size_level0": 1, "stride_level0": 1, "n_tiles": n, "source": source["source"]},
        "mask": {},
        "config": {},
    }
    write_tile_store(path, coords, np.ones(n, dtype=np.float32), attrs)
    if instance_labels is not None:
        write_instance_labels(path, instance_labels, {"source": source["source"], **label_attrs})
    writer_attrs = {"encoder": MIL_ENCODER, "dim": dim, **source}
    with FeatureWriter(path, MIL_ENCODER, n, dim, dtype="float32", attrs=writer_attrs) as writer:
        writer.write(0, feats)


def _write_labels_csv(out_dir: Path, slide_ids: list[str], y: np.ndarray) -> Path:
    rows = [["slide_id", "label"], *([sid, int(label)] for sid, label in zip(slide_ids, y, strict=True))]
    labels_csv = out_dir / "labels.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    atomic_write_text(labels_csv, buffer.getvalue())
    return labels_csv


@dataclass(frozen=True)
class DigitBagsConfig:
    """Settings of the sparse digit-bag benchmark (all of them change its content).

    Attributes
    ----------
    n_bags
        Number of bags; half of them (rounded down) positive.
    bag_size
        ``(min, max)`` instances per bag, drawn uniformly.
    prevalence
        Share of a positive bag's instances that are the target digit: ``max(1, round(prevalence * size))`` of
        them, at random positions (0.01 = 4-8 in a bag of 400-800).
    target
        The digit (0-9) whose presence makes a bag positive; negative instances are every other digit.
    seed
        Fixes every draw.
    """

    n_bags: int = 200
    bag_size: tuple[int, int] = (400, 800)
    prevalence: float = 0.01
    target: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.bag_size
        if self.n_bags < 4:
            raise ConfigError(f"digit bags: n_bags must be >= 4, got {self.n_bags}")
        if not 1 <= lo <= hi:
            raise ConfigError(f"digit bags: bag size must be MIN-MAX with 1 <= MIN <= MAX, got {lo}-{hi}")
        if not 0.0 < self.prevalence <= 0.5:
            raise ConfigError(f"digit bags: prevalence must be in (0, 0.5], got {self.prevalence}")
        if self.target not in range(10):
            raise ConfigError(f"digit bags: target must be a digit 0-9, got {self.target}")


def make_digit_bags(
    out_dir: str | Path, config: DigitBagsConfig | None = None, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write the sparse digit-bag benchmark: ``<out_dir>/stores/digits_<i>.zarr`` (64 pixel features in [0, 1],
    ``instance_labels`` 1 on the target digit), ``labels.csv`` and ``benchmark.json`` (settings and counts).

    Instances are drawn with replacement from scikit-learn's 1,797 real 8 x 8 digits, so the same images recur
    across bags (as tissue patterns recur across slides); what a model must learn is which kind of instance makes
    a bag positive and where it sits. A folder made with other settings is refused unless ``overwrite``.

    Returns
    -------
    stores_dir, labels_csv

    Examples
    --------
    >>> stores, labels = make_digit_bags("bench/digits", DigitBagsConfig(prevalence=0.02))  # doctest: +SKIP
    >>> train(stores, labels, "runs/", TrainConfig(model="abmil", encoder="mil-features"))  # doctest: +SKIP
    """
    from sklearn.datasets import load_digits

    config = config or DigitBagsConfig()
    out_dir = Path(out_dir)
    stores_dir = out_dir / "stores"
    record = out_dir / "benchmark.json"
    settings = {"benchmark": "digit-bags", **asdict(config), "bag_size": list(config.bag_size)}
    if record.is_file() and overwrite:
        for old_store in stores_dir.glob("digits_*.zarr"):
            remove_path(old_store)
    elif record.is_file():
        old = json.loads(record.read_text())
        if {k: old.get(k) for k in settings} != settings:
            changed = ", ".join(f"{k} {old.get(k)} -> {v}" for k, v in settings.items() if old.get(k) != v)
            raise ConfigError(f"{out_dir}: holds digit bags made with other settings ({changed}); pass --overwrite")
    # Recorded before the first store, so an interrupted run resumes only with the same settings.
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps({**settings, "complete": False}, indent=1) + "\n")
    images, digits = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32)  # (1797, 64) pixel intensities in [0, 1]
    key_pool, other_pool = np.flatnonzero(digits == config.target), np.flatnonzero(digits != config.target)
    rng = np.random.default_rng(config.seed)
    n_pos = config.n_bags // 2
    y = rng.permutation(np.r_[np.ones(n_pos, np.int64), np.zeros(config.n_bags - n_pos, np.int64)])
    width = len(str(config.n_bags - 1))
    slide_ids, n_key = [], []
    source = {"source": "digits-benchmark", "target_digit": config.target}
    for i, label in enumerate(y):
        size = int(rng.integers(config.bag_size[0], config.bag_size[1] + 1))
        picks = rng.choice(other_pool, size, replace=True)
        keys = np.zeros(size, dtype=np.int16)
        if label:
            k = min(max(1, round(config.prevalence * size)), size, len(key_pool))
            where = rng.choice(size, k, replace=False)
            picks[where] = rng.choice(key_pool, k, replace=False)
            keys[where] = 1
        sid = f"digits_{i:0{width}d}"
        slide_ids.append(sid)
        n_key.append(int(keys.sum()))
        path = store_path(stores_dir, sid)
        if has_features(path, MIL_ENCODER):
            continue  # written by an interrupted run with the same settings (every draw above is repeated)
        _write_bag_store(
            path, images[picks], {**source, "bag_id": i}, keys, classes=["other digit", f"digit {config.target}"]
        )
    labels_csv = _write_labels_csv(out_dir, slide_ids, y)
    positives = [k for k, label in zip(n_key, y, strict=True) if label]
    summary = {
        **settings,
        "n_positive": n_pos,
        "key_instances_per_positive_bag": [min(positives), max(positives)],
        "complete": True,
    }
    atomic_write_text(record, json.dumps(summary, indent=1) + "\n")
    log.info("digit bags: %d bags (%d positive, %s key instances each) -> %s", config.n_bags, n_pos,
             "-".join(map(str, summary["key_instances_per_positive_bag"])), stores_dir)  # fmt: skip
    return stores_dir, labels_csv
