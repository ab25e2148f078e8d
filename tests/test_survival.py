"""Survival: the losses and measures against hand-computed values and against scikit-survival and lifelines (where
installed), and a run on bags whose risk is planted in their instances, trained and predicted end to end."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_pipeline.mil_datasets import DigitBagsConfig, make_digit_bags
from wsi_pipeline.predict import PredictConfig, predict_slides
from wsi_pipeline.training import (
    BaselineHazard,
    SurvivalHead,
    SurvivalSettings,
    TrainConfig,
    concordance_harrell,
    concordance_uno,
    cox_loss,
    cumulative_dynamic_auc,
    discrete_time_nll,
    integrated_brier_score,
    kaplan_meier,
    load_checkpoint,
    logrank_test,
    train,
)


# --------------------------------------------------------------------------------------------- known answers
def test_harrell_c_index_by_hand() -> None:
    # Times 1 (event), 2 (event), 3 (censored), 4 (event). Comparable pairs (an event before a longer time):
    # (1,2) (1,3) (1,4) (2,3) (2,4); the censored slide at 3 is never the earlier one. Risks 4, 2, 3, 1: pair (2,3)
    # is discordant (2 < 3), the rest concordant: 4/5. A tie in risk counts half.
    time, event = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 1, 0, 1])
    assert concordance_harrell(time, event, np.array([4.0, 2.0, 3.0, 1.0])) == pytest.approx(4 / 5)
    assert concordance_harrell(time, event, np.array([4.0, 3.0, 3.0, 1.0])) == pytest.approx(4.5 / 5)
    assert math.isnan(concordance_harrell(time, np.zeros(4), np.arange(4.0)))  # no event: no comparable pair


def test_cox_and_discrete_time_losses_by_hand() -> None:
    # Cox: times 1, 2, 3, events at 1 and 3, log-risks r. Event at 1: r1 - log(e^r1 + e^r2 + e^r3); event at 3:
    # r3 - log(e^r3). Mean over the two events, negated.
    r = torch.tensor([0.5, -0.2, 1.0], dtype=torch.float64)
    time, event = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 1.0])
    want = -((0.5 - math.log(math.exp(0.5) + math.exp(-0.2) + math.exp(1.0))) + 0.0) / 2
    assert float(cox_loss(r, time, event)) == pytest.approx(want)
    assert float(cox_loss(r, time, torch.zeros(3))) == 0.0  # no event in the batch: no information
    # Discrete time, 3 bins, hazard logits 0 (h = 1/2): an event in bin 1 survived bin 0 and died in 1:
    # log(1/2) + log(1/2); censored in bin 1: survived bins 0 and 1: 2 log(1/2).
    logits = torch.zeros(2, 3, dtype=torch.float64)
    nll = discrete_time_nll(logits, torch.tensor([1, 1]), torch.tensor([1.0, 0.0]))
    assert float(nll) == pytest.approx(-2 * math.log(0.5))


def test_discrete_time_risk_and_survival_by_hand() -> None:
    # Three bins (edges 2 and 5), hazard logits 0: h = 1/2 in each, so S = 1/2, 1/4, 1/8 through bins 0, 1, 2.
    head = SurvivalHead("nll", np.array([1.0, 3.0, 6.0]), np.array([1, 1, 1]), np.array([2.0, 5.0]))
    logits = np.zeros((1, 3))
    assert head.risk(logits)[0] == pytest.approx(-(0.5 + 0.25 + 0.125))  # minus the expected bins survived
    # The curve drops at each bin's end; the last bin has none, so it stays at S through bin 1 from 5 on.
    np.testing.assert_allclose(
        head.survival(logits, np.array([1.0, 2.0, 4.0, 5.0, 100.0]))[0], [1, 0.5, 0.5, 0.25, 0.25]
    )


def test_kaplan_meier_and_breslow_by_hand() -> None:
    # Times 1, 2 (censored), 3, 3: S(1) = 3/4, S(2) = 3/4, S(3) = 3/4 * (1 - 2/2) = 0.
    times, survival = kaplan_meier(np.array([1.0, 2.0, 3.0, 3.0]), np.array([1, 0, 1, 1]))
    np.testing.assert_allclose(times, [1, 2, 3])
    np.testing.assert_allclose(survival, [0.75, 0.75, 0.0])
    # Breslow with all risks 0: H0 is the Nelson-Aalen estimate, 1/4 at time 1 and 1/4 + 2/2 at 3.
    baseline = BaselineHazard.fit(np.zeros(4), np.array([1.0, 2.0, 3.0, 3.0]), np.array([1, 0, 1, 1]))
    np.testing.assert_allclose(baseline.cumulative, [0.25, 1.25])
    np.testing.assert_allclose(baseline.survival(np.zeros(1), np.array([0.5, 1.0, 3.0]))[0], np.exp([0, -0.25, -1.25]))


def _cohort(seed: int = 0, n: int = 80) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    t = np.round(rng.exponential(np.exp(-risk)) * 10) + 1  # integer times: tied events and censorings
    c = np.round(rng.uniform(0, 25, n)) + 1
    time, event = np.minimum(t, c), t <= c
    noisy = risk + rng.normal(0, 0.5, n)
    noisy[53] = noisy[54]  # a tie in risk
    return time[:50], event[:50], time[50:], event[50:], noisy[50:], risk[:50]


def test_measures_equal_scikit_survival() -> None:
    sksurv = pytest.importorskip("sksurv.metrics", reason="scikit-survival (a test-only dependency) is not installed")
    from sksurv.util import Surv

    tr_t, tr_e, te_t, te_e, risk, train_risk = _cohort()
    train, test = Surv.from_arrays(tr_e, tr_t), Surv.from_arrays(te_e, te_t)
    assert concordance_harrell(te_t, te_e, risk) == pytest.approx(
        sksurv.concordance_index_censored(te_e, te_t, risk)[0]
    )
    tau = float(np.quantile(tr_t, 0.8))
    uno = sksurv.concordance_index_ipcw(train, test, risk, tau)[0]
    assert concordance_uno((tr_t, tr_e), te_t, te_e, risk, tau) == pytest.approx(uno)
    at = np.quantile(te_t[te_e], [0.25, 0.5, 0.75])
    np.testing.assert_allclose(
        cumulative_dynamic_auc((tr_t, tr_e), te_t, te_e, risk, at),
        sksurv.cumulative_dynamic_auc(train, test, risk, at)[0],
    )
    grid = np.linspace(np.quantile(te_t, 0.1), np.quantile(te_t, 0.8), 12)
    survival = BaselineHazard.fit(train_risk, tr_t, tr_e).survival(risk, grid)
    want = sksurv.integrated_brier_score(train, test, survival, grid)
    assert integrated_brier_score((tr_t, tr_e), te_t, te_e, survival, grid) == pytest.approx(want)


def test_logrank_and_kaplan_meier_equal_lifelines() -> None:
    pytest.importorskip("lifelines", reason="lifelines (a test-only dependency) is not installed")
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test as lifelines_logrank

    tr_t, tr_e, te_t, te_e, risk, _ = _cohort(seed=1)
    time, event = np.r_[tr_t, te_t], np.r_[tr_e, te_e]
    group = np.arange(len(time)) % 3 == 0
    want = lifelines_logrank(time[group], time[~group], event[group], event[~group])
    statistic, p_value = logrank_test(time, event, group)
    assert statistic == pytest.approx(want.test_statistic) and p_value == pytest.approx(want.p_value)
    times, survival = kaplan_meier(time, event)
    fitted = KaplanMeierFitter().fit(time, event)
    np.testing.assert_allclose(survival, fitted.survival_function_at_times(times).to_numpy())


# --------------------------------------------------------------------------------------------- a planted risk
def _planted(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[float, int]]]:
    """Digit bags whose follow-up depends on what is in them: bags holding the target digit (real scikit-learn 8x8
    images) have their event within 1-6 time units, the others within 4-20; a fifth of the slides are censored
    at a random earlier time. A model that knows which bags hold the digit ranks with a C-index near 0.75 (pairs
    of two such bags, or of two without, are coin flips)."""
    stores, labels_csv = make_digit_bags(
        tmp_path / "bags", DigitBagsConfig(n_bags=60, bag_size=(40, 60), prevalence=0.1, target=0, seed=2)
    )
    rng = np.random.default_rng(0)
    follow_up = {}
    with labels_csv.open() as handle:
        for row in csv.DictReader(handle):
            event_time = rng.uniform(1, 6) if row["label"] == "1" else rng.uniform(4, 20)
            censored = rng.random() < 0.2
            time = rng.uniform(0.5, event_time) if censored else event_time
            follow_up[row["slide_id"]] = (round(float(time), 4), int(not censored))
    survival_csv = tmp_path / "survival.csv"
    with survival_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "days", "died"])
        writer.writerows([sid, t, e] for sid, (t, e) in follow_up.items())
    return stores, survival_csv, follow_up


@pytest.mark.parametrize(("loss", "lr"), [("cox", 1e-3), ("nll", 1e-2)])
def test_a_planted_risk_is_learned_and_predicted(loss: str, lr: float, tmp_path: Path) -> None:
    stores, survival_csv, follow_up = _planted(tmp_path)
    config = TrainConfig(
        model="abmil",
        folds=3,
        epochs=15,
        lr=lr,
        standardize=True,
        plots=loss == "cox",  # plots: false draws no figure, not even the summary's
        survival=SurvivalSettings(time_column="days", event_column="died", loss=loss, batch=8),
    )
    result = train(stores, survival_csv, tmp_path / "runs", config)
    run = result.run_dir
    ckpt = load_checkpoint(run / "fold_0" / "checkpoint_best.pt")
    assert ckpt["task"] == "survival" and ckpt["survival"]["loss"] == loss
    assert ckpt["model_kwargs"]["n_classes"] == (1 if loss == "cox" else 4)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["survival"]["slides"] == 60 and (run / "risk_groups.png").is_file() == (loss == "cox")
    c_index = summary["test_mean_std"]["c_index"]["mean"]
    assert c_index > 0.65, summary["test_mean_std"]  # knowing which bags hold the digit gives 0.72 here
    assert 0 < summary["test_mean_std"]["ibs"]["mean"] < 0.25  # better than a constant 0.5 survival

    out = tmp_path / "pred"
    predicted = predict_slides(run, [stores], out, PredictConfig(heatmaps=False))
    metrics = predicted.metrics
    assert metrics is not None and metrics["task"] == "survival" and metrics["slides"] == 60
    assert metrics["c_index"] > 0.65 and metrics["logrank_p"] < 0.01
    assert (out / "risk_groups.png").is_file() and not (out / "report").exists()
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:6] == ["slide_id", "risk", "risk_group", "n_tiles", "time", "event"]
    for row in rows:
        assert (float(row["time"]), int(row["event"])) == pytest.approx(follow_up[row["slide_id"]])
        assert row["risk_group"] == ("high" if float(row["risk"]) > 0 else "low") and row["source"] == "out-of-fold"
    # The attention of a survival model is scored against the instance labels like a classifier's.
    assert "loc_auc" in rows[0]


def test_survival_options_and_mistakes_through_the_cli(tmp_path: Path) -> None:
    stores, survival_csv, _ = _planted(tmp_path)
    exe = Path(sys.executable).parent / "wsi-pipeline"

    def run(*args: object) -> subprocess.CompletedProcess:
        cmd = [str(exe), "train", stores, "-l", survival_csv, "-o", tmp_path / "runs", "--device", "cpu", *args]
        return subprocess.run([str(a) for a in cmd], capture_output=True, text=True, timeout=300)

    wrong = run("--task", "survival")  # the CSV has days,died, not time,event
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert "'time' and 'event'" in wrong.stderr and "days, died" in wrong.stderr and "--target" in wrong.stderr
    ok = run("--target", "days,died", "-m", "abmil", "--epochs", "2", "-k", "2", "--set", "survival.batch=8")
    assert ok.returncode == 0, ok.stderr
    assert "C-index (Harrell)" in ok.stdout and "integrated Brier score" in ok.stdout
    clam = run("--target", "days,died", "-m", "clam_sb", "--epochs", "1")
    assert clam.returncode != 0 and "class label" in clam.stderr and "Traceback" not in clam.stderr
