"""Calibrated probabilities: the temperature fitted on a fold's validation slides, ECE and reliability bins against
hand-computed values, a deliberately overconfident model made honest, and what train and predict write."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from wsi_pipeline.predict import PredictConfig, predict_slides
from wsi_pipeline.training import (
    TEMPERATURE_RANGE,
    Calibration,
    TrainConfig,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    load_checkpoint,
    log_softmax,
    reliability_bins,
    spread,
    train,
)

from .test_training import _musk_subset


def _overconfident(n: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from a calibrated 3-class model's probabilities, and that model's logits times ``scale``: a
    model exactly ``scale`` times too sure of itself (its right temperature is ``scale``)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, 3))
    probs = np.exp(log_softmax(logits))
    y = np.array([rng.choice(3, p=p) for p in probs])
    return log_softmax(scale * logits), y


def test_ece_and_reliability_bins_match_hand_computed_values() -> None:
    # Confidences 0.95 (right), 0.93 (wrong), 0.85 (wrong), 0.72 (right), 0.64 (right): the first two share the
    # bin (0.9, 1.0] (confidence 0.94, accuracy 0.5), the others have one bin each.
    probs = np.array([[0.95, 0.05], [0.07, 0.93], [0.85, 0.15], [0.28, 0.72], [0.64, 0.36]])
    y = np.array([0, 0, 1, 1, 0])
    bins = reliability_bins(probs, y)
    assert [(b["lo"], b["n"]) for b in bins] == [(0.6, 1), (0.7, 1), (0.8, 1), (0.9, 2)]
    assert bins[-1]["confidence"] == pytest.approx(0.94) and bins[-1]["accuracy"] == 0.5
    want = (2 * 0.44 + 0.85 + 0.28 + 0.36) / 5
    assert expected_calibration_error(probs, y) == pytest.approx(want)
    assert math.isnan(expected_calibration_error(np.zeros((0, 2)), np.zeros(0, dtype=int)))


def test_temperature_recovers_how_overconfident_a_model_is_and_lowers_its_ece() -> None:
    val_logp, val_y = _overconfident(3000, 4.0, seed=0)
    test_logp, test_y = _overconfident(3000, 4.0, seed=1)
    fitted = fit_temperature(val_logp, val_y)
    assert fitted.fitted_on == "val" and fitted.n_slides == 3000
    assert fitted.temperature == pytest.approx(4.0, rel=0.1)
    assert fitted.nll_after < fitted.nll_before
    raw, calibrated = np.exp(test_logp), apply_temperature(test_logp, fitted.temperature)
    # Scaling never changes the predicted class, only how sure the model says it is.
    np.testing.assert_array_equal(raw.argmax(1), calibrated.argmax(1))
    np.testing.assert_allclose(calibrated.sum(1), 1.0)
    ece_raw, ece_cal = expected_calibration_error(raw, test_y), expected_calibration_error(calibrated, test_y)
    assert ece_raw > 0.15 and ece_cal < 0.03, (ece_raw, ece_cal)
    # An underconfident model gets T < 1.
    under_logp, under_y = _overconfident(3000, 0.3, seed=2)
    assert fit_temperature(under_logp, under_y).temperature == pytest.approx(0.3, rel=0.15)


def test_a_few_perfectly_separated_slides_do_not_drive_the_temperature_to_its_bound() -> None:
    """Without the prior, the likelihood of 6 slides the model gets right rises without end as T -> 0."""
    logp = log_softmax(np.array([[3.0, 0.0], [0.0, 2.5], [4.0, 0.0], [0.0, 3.5], [2.0, 0.0], [0.0, 3.0]]))
    y = np.array([0, 1, 0, 1, 0, 1])
    fitted = fit_temperature(logp, y)
    assert 0.3 < fitted.temperature < 1.0 and fitted.temperature > 2 * TEMPERATURE_RANGE[0]
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int)) == Calibration()  # nothing to fit: T = 1
    assert Calibration.from_dict(None).temperature == 1.0  # a checkpoint made before calibration


def test_spread_is_the_folds_disagreement_on_the_predicted_class() -> None:
    assert spread([np.array([0.2, 0.8])], 1) is None
    assert spread([np.array([0.2, 0.8]), np.array([0.4, 0.6])], 1) == pytest.approx(0.1)


def test_train_fits_a_temperature_per_fold_and_predict_applies_it(mil_dir: Path, tmp_path: Path) -> None:
    stores, labels = _musk_subset(mil_dir, tmp_path / "data", n_per_class=15)
    config = TrainConfig(folds=3, epochs=4, val_fraction=0.3, lr=5e-4, model="abmil", plots=True, standardize=True)
    result = train(stores, labels, tmp_path / "runs", config)
    run = result.run_dir
    temperatures = []
    for fold in result.folds:
        ckpt = load_checkpoint(run / f"fold_{fold.fold}" / "checkpoint_best.pt")
        saved = json.loads((run / f"fold_{fold.fold}" / "metrics.json").read_text())["calibration"]
        assert ckpt["calibration"] == saved and saved["fitted_on"] == "val"
        assert saved["n_slides"] == len(ckpt["split"]["val"]) > 0  # fitted on the validation slides only
        temperatures.append(saved["temperature"])
        assert {"ece", "ece_calibrated", "nll", "nll_calibrated"} <= set(fold.test)
        with (run / f"fold_{fold.fold}" / "predictions_test.csv").open() as handle:
            for row in csv.DictReader(handle):
                assert float(row["cal_prob_0"]) + float(row["cal_prob_1"]) == pytest.approx(1.0)
                assert (float(row["cal_prob_1"]) > 0.5) == (float(row["prob_1"]) > 0.5)
    assert any(abs(t - 1.0) > 0.05 for t in temperatures), temperatures  # really fitted, not left at 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["calibration"]["slides"] == 30 and (run / "reliability.png").stat().st_size > 5000
    assert "ece_calibrated" in summary["test_mean_std"]

    out = tmp_path / "pred"
    predicted = predict_slides(run, [stores], out, PredictConfig(heatmaps=False, report=False))
    assert predicted.metrics is not None and (out / "reliability.png").is_file()
    cal = predicted.metrics["calibration"]
    assert set(cal) >= {"ece", "ece_calibrated", "reliability", "reliability_calibrated"}
    with (out / "predictions.csv").open() as handle:
        rows = {row["slide_id"]: row for row in csv.DictReader(handle)}
    for sid, row in rows.items():  # each out-of-fold slide: its fold's model with that fold's temperature
        result_json = json.loads((out / "slides" / f"{sid}.json").read_text())
        (fold,) = result_json["folds"]
        logp = np.log(np.array([float(row["prob_0"]), float(row["prob_1"])]))
        want = apply_temperature(logp, temperatures[fold])
        assert float(row["cal_prob_1"]) == pytest.approx(want[1], abs=1e-4)
        assert row["spread"] == ""  # one fold predicts a labelled slide: no ensemble to disagree
