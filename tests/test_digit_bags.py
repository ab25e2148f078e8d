"""The sparse digit-bag benchmark: real scikit-learn digits, ground truth per instance, refusal of changed settings."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsi_pipeline.errors import ConfigError
from wsi_pipeline.mil_datasets import MIL_ENCODER, DigitBagsConfig, make_digit_bags
from wsi_pipeline.store import list_stores, read_features, read_instance_labels


def wsi_pipeline_cli(*args: object) -> subprocess.CompletedProcess:
    """The installed ``wsi-pipeline`` entry point, run as a user runs it."""
    exe = Path(sys.executable).parent / "wsi-pipeline"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300)


def _labels(path: Path) -> dict[str, int]:
    with path.open() as fh:
        return {row["slide_id"]: int(row["label"]) for row in csv.DictReader(fh)}


def test_bags_hold_real_digits_with_ground_truth(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    config = DigitBagsConfig(n_bags=12, bag_size=(100, 200), prevalence=0.03, target=7, seed=3)
    stores_dir, labels_csv = make_digit_bags(tmp_path, config)
    labels = _labels(labels_csv)
    assert len(list_stores(stores_dir)) == 12 and sum(labels.values()) == 6
    images, digits = load_digits(return_X_y=True)
    rows = {tuple(r): d for r, d in zip((images / 16.0).astype(np.float32), digits, strict=True)}
    for store in list_stores(stores_dir):
        feats = read_features(store, MIL_ENCODER)
        keys = read_instance_labels(store)
        assert feats.shape[1] == 64 and 100 <= len(feats) <= 200 and keys is not None and len(keys) == len(feats)
        shown = np.array([rows[tuple(r)] for r in feats])  # every instance is a real digit image
        np.testing.assert_array_equal(shown == 7, keys == 1)  # the labels mark exactly the target digits
        if labels[store.name.removesuffix(".zarr")]:
            assert keys.sum() == max(1, round(0.03 * len(keys)))
        else:
            assert keys.sum() == 0
    record = json.loads((tmp_path / "benchmark.json").read_text())
    assert record["complete"] and record["target"] == 7 and record["bag_size"] == [100, 200]


def test_same_seed_same_bags_and_changed_settings_are_refused(tmp_path: Path) -> None:
    config = DigitBagsConfig(n_bags=6, bag_size=(30, 40), seed=1)
    make_digit_bags(tmp_path / "a", config)
    make_digit_bags(tmp_path / "b", config)
    for a, b in zip(list_stores(tmp_path / "a" / "stores"), list_stores(tmp_path / "b" / "stores"), strict=True):
        np.testing.assert_array_equal(read_features(a, MIL_ENCODER), read_features(b, MIL_ENCODER))
    store = list_stores(tmp_path / "a" / "stores")[0]
    mtime = (store / "zarr.json").stat().st_mtime_ns
    make_digit_bags(tmp_path / "a", config)  # same settings: finished bags are kept
    assert (store / "zarr.json").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match=r"other settings \(prevalence 0.01 -> 0.05\); pass --overwrite"):
        make_digit_bags(tmp_path / "a", DigitBagsConfig(n_bags=6, bag_size=(30, 40), seed=1, prevalence=0.05))
    make_digit_bags(tmp_path / "a", DigitBagsConfig(n_bags=4, bag_size=(30, 40), seed=1), overwrite=True)
    assert len(list_stores(tmp_path / "a" / "stores")) == 4  # no bag of the old set left behind
    with pytest.raises(ConfigError, match="prevalence"):
        DigitBagsConfig(prevalence=0.0)


def test_cli_digit_bags(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    done = wsi_pipeline_cli("digit-bags", "--out", out, "--bags", "8", "--bag-size", "50-60", "--prevalence", "0.05")
    assert done.returncode == 0, done.stderr
    assert len(list_stores(out / "stores")) == 8 and (out / "labels.csv").is_file()
    bad = wsi_pipeline_cli("digit-bags", "--out", out, "--bag-size", "50to60")
    assert bad.returncode == 1 and "--bag-size '50to60': expected MIN-MAX" in bad.stderr
    assert "Traceback" not in bad.stderr
    changed = wsi_pipeline_cli("digit-bags", "--out", out, "--bags", "8", "--bag-size", "50-60")
    assert changed.returncode == 1 and "pass --overwrite" in changed.stderr


def test_train_and_predict_report_localisation(tmp_path: Path) -> None:
    from wsi_pipeline.predict import predict_slides
    from wsi_pipeline.training import TrainConfig, train

    stores, labels = make_digit_bags(tmp_path / "digits", DigitBagsConfig(n_bags=16, bag_size=(30, 40), prevalence=0.1))
    config = TrainConfig(model="abmil", folds=2, epochs=3, standardize=True, plots=True)
    result = train(stores, labels, tmp_path / "runs", config)
    history = json.loads((result.run_dir / "fold_0" / "metrics.json").read_text())["history"]
    assert all(0.0 <= row["val_loc_auc"] <= 1.0 and 0.0 < row["val_loc_mass"] <= 1.0 for row in history)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    for part in ("test_mean_std", "test_last_mean_std"):
        assert {"loc_auc", "loc_precision", "loc_mass", "accuracy"} <= set(summary[part])
    with (result.run_dir / "fold_0" / "predictions_test.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert all(bool(row["loc_auc"]) == (row["label"] == "1") for row in rows)  # only positive bags have keys
    assert (result.run_dir / "fold_0" / "stability.png").is_file()
    pred = predict_slides(result.run_dir / "fold_0" / "checkpoint_best.pt", stores, tmp_path / "pred")
    by_id = {row["slide_id"]: row for row in pred.rows}
    truth = _labels(labels)
    assert len(by_id) == 16 and all(("loc_auc" in row) == bool(truth[sid]) for sid, row in by_id.items())
