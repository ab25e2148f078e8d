"""Several targets per slide: kinds inferred from the values, a loss that skips missing values, metrics by hand, and a
run of a categorical and a continuous target (with missing values) trained and predicted end to end."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_pipeline.mil_datasets import DigitBagsConfig, make_digit_bags
from wsi_pipeline.predict import PredictConfig, predict_slides
from wsi_pipeline.store import list_stores, read_instance_labels, slide_id_from_store
from wsi_pipeline.training import MultiTargets, TrainConfig, load_checkpoint, regression_metrics, train


def _targets() -> MultiTargets:
    rows = {
        "a": {"er": "pos", "grade": "1", "ki67": "12.5"},
        "b": {"er": "neg", "grade": "2", "ki67": ""},
        "c": {"er": "", "grade": "3", "ki67": "40"},
    }
    return MultiTargets.from_rows(rows, [("er", None), ("grade", None), ("ki67", "regression")])


def test_kinds_classes_and_missing_values() -> None:
    multi = _targets()
    assert [(s.name, s.kind, s.classes) for s in multi.specs] == [
        ("er", "categorical", ("neg", "pos")),
        ("grade", "categorical", ("1", "2", "3")),  # few distinct numbers: classes
        ("ki67", "regression", ()),
    ]
    assert multi.values["b"] == ["neg", "2", None] and multi.values["c"][0] is None
    assert multi.n_outputs == 2 + 3 + 1
    many = {f"s{i}": {"v": str(i * 1.5)} for i in range(12)}  # > 10 distinct numbers: continuous
    assert MultiTargets.from_rows(many, [("v", None)]).specs[0].kind == "regression"
    with pytest.raises(ValueError, match="at least two classes"):
        MultiTargets.from_rows({"a": {"x": "1"}, "b": {"x": "1"}}, [("x", None)])


def test_the_loss_skips_missing_values() -> None:
    multi = _targets().fit_scaling(["a", "c"])  # ki67 mean 26.25, std 13.75
    outputs = torch.zeros(3, 6, requires_grad=True)
    loss = multi.loss(outputs, multi.encode(["a", "b", "c"]))
    # er: 2 slides, CE of uniform logits ln 2; grade: 3 slides, ln 3; ki67: standardised -1 and +1 -> MSE 1.
    assert float(loss.detach()) == pytest.approx(math.log(2) + math.log(3) + 1.0)
    loss.backward()
    assert outputs.grad is not None and float(outputs.grad[1, 5]) == 0.0  # b has no ki67: no gradient from it
    only_missing = multi.loss(torch.zeros(1, 6), multi.encode(["b"]))
    assert float(only_missing) == pytest.approx(math.log(2) + math.log(3))  # b has er and grade, no ki67


def test_regression_metrics_by_hand() -> None:
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert m["mse"] == pytest.approx(1 / 3) and m["mae"] == pytest.approx(1 / 3)
    assert m["r2"] == pytest.approx(1 - 1 / 2)  # residual 1, total 2
    assert m["pearson_r"] == pytest.approx(np.corrcoef([1, 2, 3], [1, 2, 4])[0, 1])


def _two_targets(tmp_path: Path) -> tuple[Path, Path]:
    """Digit bags with two targets: ``digit`` (yes/no: the bag holds a target digit; a fifth missing) and ``keys``
    (how many it holds, plus noise: continuous; a tenth missing)."""
    stores, _ = make_digit_bags(
        tmp_path / "bags", DigitBagsConfig(n_bags=48, bag_size=(40, 60), prevalence=0.1, target=0, seed=4)
    )
    rng = np.random.default_rng(1)
    labels = tmp_path / "targets.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "digit", "keys"])
        for store in list_stores(stores):
            keys = int((read_instance_labels(store) == 1).sum())
            digit = "" if rng.random() < 0.2 else ("yes" if keys else "no")
            count = "" if rng.random() < 0.1 else round(keys + rng.normal(0, 0.3), 3)
            writer.writerow([slide_id_from_store(store), digit, count])
    return stores, labels


def test_a_categorical_and_a_continuous_target_with_missing_values(tmp_path: Path) -> None:
    stores, labels = _two_targets(tmp_path)
    config = TrainConfig(model="abmil", folds=3, epochs=15, lr=1e-3, standardize=True, plots=False)
    config.targets = ["digit", "keys:regression"]
    result = train(stores, labels, tmp_path / "runs", config)
    ckpt = load_checkpoint(result.run_dir / "fold_0" / "checkpoint_best.pt")
    assert ckpt["task"] == "multi" and [t["name"] for t in ckpt["targets"]] == ["digit", "keys"]
    assert ckpt["model_kwargs"]["n_classes"] == 3  # two classes + one value
    stats = result.summary["targets_mean_std"]
    assert stats["digit"]["auc"]["mean"] > 0.9 and stats["keys"]["r2"]["mean"] > 0.5, stats

    out = tmp_path / "pred"
    predicted = predict_slides(result.run_dir, [stores], out, PredictConfig(heatmaps=False))
    metrics = predicted.metrics
    assert metrics is not None and metrics["task"] == "multi" and metrics["slides"] == 48
    with labels.open() as handle:
        truth = {row["slide_id"]: row for row in csv.DictReader(handle)}
    assert metrics["targets"]["digit"]["n"] == sum(row["digit"] != "" for row in truth.values())
    assert metrics["targets"]["keys"]["n"] == sum(row["keys"] != "" for row in truth.values())
    assert metrics["targets"]["digit"]["auc"] > 0.9 and metrics["targets"]["keys"]["r2"] > 0.5
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:6] == ["slide_id", "digit", "digit_predicted", "prob_digit_no", "prob_digit_yes", "keys"]
    for row in rows:
        assert row["digit"] == truth[row["slide_id"]]["digit"]  # missing stays missing
        assert float(row["prob_digit_no"]) + float(row["prob_digit_yes"]) == pytest.approx(1.0)


def test_wrong_target_columns_are_one_line_errors(tmp_path: Path) -> None:
    stores, labels = _two_targets(tmp_path)
    exe = Path(sys.executable).parent / "wsi-pipeline"
    run = subprocess.run(
        [str(exe), "train", str(stores), "-l", str(labels), "-o", str(tmp_path / "r"), "--target", "digit,her2,keys"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "no column her2" in run.stderr and "found: slide_id, digit, keys" in run.stderr
