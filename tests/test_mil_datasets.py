"""The MIL benchmark converter: real Musk1/Elephant CSVs into real bag stores."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wsi_pipeline.errors import ConfigError
from wsi_pipeline.mil_datasets import MIL_ENCODER, convert_mil_csv, read_mil_csv
from wsi_pipeline.store import list_stores, read_attrs, read_coords, read_features


def test_read_mil_csv_matches_the_published_counts(mil_dir: Path) -> None:
    ids, y, bags = read_mil_csv(mil_dir / "musk1.csv")
    assert (len(ids), int(y.sum()), sum(len(b) for b in bags.values())) == (92, 47, 476)
    assert {b.shape[1] for b in bags.values()} == {166}
    ids, y, bags = read_mil_csv(mil_dir / "elephant.csv")
    assert (len(ids), int(y.sum()), sum(len(b) for b in bags.values())) == (200, 100, 1391)
    assert {b.shape[1] for b in bags.values()} == {230}


def test_convert_musk1_into_real_stores(mil_dir: Path, tmp_path: Path) -> None:
    stores_dir, labels_csv = convert_mil_csv(mil_dir / "musk1.csv", tmp_path / "musk1")
    stores = list_stores(stores_dir)
    assert len(stores) == 92
    with labels_csv.open() as fh:
        labels = {row["slide_id"]: row["label"] for row in csv.DictReader(fh)}
    assert len(labels) == 92 and sum(v == "1" for v in labels.values()) == 47
    ids, _, bags = read_mil_csv(mil_dir / "musk1.csv")
    first = stores_dir / f"musk1_{ids[0]}.zarr"
    feats = read_features(first, MIL_ENCODER)
    assert feats.dtype == np.float32 and np.array_equal(feats, bags[ids[0]])  # exact, no float16 rounding
    coords = read_coords(first)
    assert coords.shape == (len(feats), 2) and len({tuple(c) for c in coords}) == len(feats)
    attrs = read_attrs(first)
    assert attrs["slide"]["source"] == "mil-benchmark-csv" and attrs["slide"]["path"] is None
    assert attrs["wsi_pipeline"]["complete"] is True
    # Re-running keeps finished stores (no rewrite) unless asked.
    mtime = (first / "zarr.json").stat().st_mtime_ns
    convert_mil_csv(mil_dir / "musk1.csv", tmp_path / "musk1")
    assert (first / "zarr.json").stat().st_mtime_ns == mtime
    # A CSV whose rows changed is converted again, whatever its bag ids: an old bag is never kept silently.
    rows = (mil_dir / "musk1.csv").read_text().splitlines()
    label, bag, value, rest = rows[0].split(",", 3)
    edited = tmp_path / "edited" / "musk1.csv"
    edited.parent.mkdir()
    edited.write_text("\n".join([f"{label},{bag},{float(value) + 1},{rest}", *rows[1:]]) + "\n")
    second = stores_dir / f"musk1_{ids[1]}.zarr"
    kept = (second / "zarr.json").stat().st_mtime_ns
    convert_mil_csv(edited, tmp_path / "musk1")
    assert read_features(first, MIL_ENCODER)[0, 0] == np.float32(float(value) + 1)
    assert (second / "zarr.json").stat().st_mtime_ns == kept


def test_bad_csv_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("label,bag,f1\n1,1,0.5\n")
    with pytest.raises(ConfigError, match="without a header"):
        read_mil_csv(bad)
    with pytest.raises(ConfigError, match="not found"):
        read_mil_csv(tmp_path / "none.csv")


def test_cli_convert_mil(mil_dir: Path, tmp_path: Path) -> None:
    from wsi_pipeline.cli import app

    result = CliRunner().invoke(app, ["convert-mil", str(mil_dir / "musk1.csv"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "musk1" / "labels.csv").is_file() and len(list_stores(tmp_path / "musk1" / "stores")) == 92
