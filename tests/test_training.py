"""Training: splits, metrics, attention stability, config defaults, reproducibility and the run folder."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.data import skip_reason
from wsi_pipeline.config import load_config
from wsi_pipeline.errors import ConfigError, RunMismatchError, StoreMismatchError
from wsi_pipeline.mil_datasets import MIL_ENCODER, convert_mil_csv
from wsi_pipeline.training import (
    Labels,
    TrainConfig,
    choose_threads,
    classification_metrics,
    entropy,
    js_divergence,
    load_checkpoint,
    make_splits,
    parse_run_dir,
    read_labels,
    run_dir,
    stability_between,
    train,
)
from wsi_pipeline.training._folds import stratified_folds, stratified_group_folds

ROOT = Path(__file__).resolve().parents[1]


def _musk_subset(mil_dir: Path, out: Path, n_per_class: int = 12) -> tuple[Path, Path]:
    """Convert the first ``n_per_class`` bags of each class of the real Musk1 CSV into stores."""
    rows = (mil_dir / "musk1.csv").read_text().splitlines()
    keep: dict[str, list[str]] = {"0": [], "1": []}
    for row in rows:
        label, bag = row.split(",", 2)[:2]
        if bag not in keep[label] and len(keep[label]) < n_per_class:
            keep[label].append(bag)
    bags = set(keep["0"] + keep["1"])
    subset = out / "musk_small.csv"
    out.mkdir(parents=True, exist_ok=True)
    subset.write_text("\n".join(r for r in rows if r.split(",", 2)[1] in bags) + "\n")
    return convert_mil_csv(subset, out / "converted")


@pytest.fixture
def musk_small(mil_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    return _musk_subset(mil_dir, tmp_path / "data")


# ----------------------------------------------------------------------------------------- config
def test_train_yaml_mirrors_defaults() -> None:
    assert load_config(TrainConfig, "train", ROOT / "configs" / "train.yaml") == TrainConfig()


def test_predict_yaml_mirrors_defaults() -> None:
    from wsi_pipeline.predict import PredictConfig

    assert load_config(PredictConfig, "predict", ROOT / "configs" / "predict.yaml") == PredictConfig()


def test_benchmark_preset_loads() -> None:
    cfg = load_config(TrainConfig, "train", ROOT / "configs" / "presets" / "mil-benchmark.yaml", {"model": "abmil"})
    assert cfg.folds == 10 and cfg.encoder == MIL_ENCODER and cfg.standardize
    with pytest.raises(ConfigError, match="anchor"):
        load_config(TrainConfig, "train", None, {"anchor": "sometimes"})


# ----------------------------------------------------------------------------------------- stability
def test_training_threads_follow_bag_size_model_size_and_idle_cores() -> None:
    asmil = 2_636_290  # ASMIL's parameters on 1024-d features
    assert choose_threads([5, 8, 40], 156_034, cpus=8, load=0.0) == 1  # Musk-sized bags: one thread
    assert choose_threads([600], asmil, cpus=8, load=0.0) == 1
    assert choose_threads([5000] * 3, asmil, cpus=8, load=0.0) == 6  # work enough for 6 threads
    assert choose_threads([5000] * 3, asmil, cpus=2, load=0.0) == 2  # ...but only 2 CPUs
    assert choose_threads([5000] * 3, asmil, cpus=2, load=1.8) == 1  # ...whose cores other jobs keep busy
    assert choose_threads([50_000], asmil, cpus=16, load=5.0) == 11
    assert choose_threads([], asmil, cpus=8, load=0.0) == 1


def test_stability_is_zero_for_identical_and_grows_with_change() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(50))
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert stability_between({"a": p}, {"a": p.copy()}) == pytest.approx(0.0, abs=1e-12)
    q = rng.dirichlet(np.ones(50))
    values = [js_divergence(p, (1 - t) * p + t * q) for t in (0.1, 0.3, 0.6, 1.0)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    one_hot_a, one_hot_b = np.eye(50)[0], np.eye(50)[1]
    assert js_divergence(one_hot_a, one_hot_b) == pytest.approx(math.log(2))
    assert math.isnan(stability_between({}, {"a": p}))
    assert entropy(np.ones(8)) == pytest.approx(math.log(8))
    assert entropy(one_hot_a) == pytest.approx(0.0)


# ----------------------------------------------------------------------------------------- metrics
def test_metrics_binary_multiclass_and_missing_class() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    m = classification_metrics(y, probs, 2)
    assert m["accuracy"] == 0.75 and m["auc"] == 1.0 and m["confusion"] == [[1, 1], [0, 2]]
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    y3 = np.array([0, 1, 2, 2])
    p3 = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    m3 = classification_metrics(y3, p3, 3)
    assert m3["accuracy"] == 1.0 and m3["auc"] == pytest.approx(1.0)
    missing = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]), 2)
    assert math.isnan(missing["auc"]) and missing["accuracy"] == 0.5


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_metrics_equal_scikit_learns_on_random_predictions_with_ties(n_classes: int) -> None:
    """The numpy metrics give scikit-learn's numbers: accuracy, balanced accuracy (a class never labelled left out),
    macro-F1 (zero_division=0), AUC (binary, or one-vs-rest macro) and the ROC curve, with tied scores."""
    from sklearn import metrics as sk

    from wsi_pipeline.training import roc_curve

    rng = np.random.default_rng(n_classes)
    for trial in range(40):
        n = int(rng.integers(2, 60))
        y = rng.integers(0, n_classes, n)
        logits = np.round(rng.normal(size=(n, n_classes)) + 1.5 * np.eye(n_classes)[y] * rng.random(), 1)  # ties
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        if trial % 5 == 0:
            y[y == n_classes - 1] = 0  # a class never labelled
        m = classification_metrics(y, probs, n_classes)
        pred = probs.argmax(1)
        labels = list(range(n_classes))
        assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn warns of a predicted class no slide has
            expected_balanced = sk.balanced_accuracy_score(y, pred)
        assert m["balanced_accuracy"] == pytest.approx(expected_balanced)
        assert m["f1_macro"] == pytest.approx(sk.f1_score(y, pred, labels=labels, average="macro", zero_division=0))
        assert m["confusion"] == sk.confusion_matrix(y, pred, labels=labels).tolist()
        if len(np.unique(y)) < n_classes:
            assert math.isnan(m["auc"])
        elif n_classes == 2:
            assert m["auc"] == pytest.approx(sk.roc_auc_score(y, probs[:, 1]))
        else:
            assert m["auc"] == pytest.approx(sk.roc_auc_score(y, probs, multi_class="ovr", labels=labels))
        positive, score = y == 0, probs[:, 0]
        if positive.any() and not positive.all():
            for ours, theirs in zip(roc_curve(positive, score), sk.roc_curve(positive, score), strict=True):
                np.testing.assert_allclose(ours, theirs)
    not_probabilities = classification_metrics(np.arange(3), np.eye(3) * 2, 3)
    assert math.isnan(not_probabilities["auc"]) and not_probabilities["accuracy"] == 1.0


# ----------------------------------------------------------------------------------------- splits
def test_stratified_cv_covers_every_slide_once_and_keeps_groups(tmp_path: Path) -> None:
    ids = [f"s{i:02d}" for i in range(40)]
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text(
        "slide_id,label,patient\n"
        + "\n".join(f"{s},{'tumour' if i % 2 else 'normal'},p{i // 2}" for i, s in enumerate(ids))
        + "\n"
    )
    labels = read_labels(labels_csv, group_column="patient")
    assert labels.classes == ["normal", "tumour"]
    splits = make_splits(labels, split_csv=None, folds=5, val_fraction=0.2, seed=3)
    assert sorted(s for split in splits for s in split.test) == ids
    patient = dict(zip(labels.slide_ids, labels.groups, strict=True))
    for split in splits:
        sides = [{patient[s] for s in part} for part in (split.train, split.val, split.test)]
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
        assert split.val and set(labels.y[[labels.slide_ids.index(s) for s in split.test]]) == {0, 1}
    again = make_splits(labels, split_csv=None, folds=5, val_fraction=0.2, seed=3)
    assert [s.test for s in again] == [s.test for s in splits]


def _sklearn_folds(y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if groups is None:
        parts = StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(y, y)
    else:
        parts = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(y, y, groups)
    folds = np.full(len(y), -1)
    for k, (_, test) in enumerate(parts):
        folds[test] = k
    return folds


@pytest.mark.filterwarnings("ignore:The least populated class")
def test_folds_are_scikit_learns() -> None:
    """train's own fold rules give scikit-learn's StratifiedKFold / StratifiedGroupKFold folds (shuffle=True,
    random_state=seed), which made the runs before them. Grouped folds are compared with scikit-learn 1.8 or later:
    1.8 fixed the group order of its shuffle, and runs grouped by an older one are refused, not resumed."""
    import sklearn

    grouped_as_ours = tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 8)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        n_classes = int(rng.integers(2, 5))
        n = int(rng.integers(8, 80))
        y = rng.choice(n_classes, n, p=rng.dirichlet(np.ones(n_classes) * 2)) * 3 + 1  # labels need not be 0..C-1
        n_splits, seed = int(rng.integers(2, 7)), int(rng.integers(0, 2**31))
        if np.bincount(y).max() < n_splits:
            continue
        groups = np.array([f"p{g}" for g in rng.integers(0, max(n_splits, n // int(rng.integers(1, 4))), n)])
        np.testing.assert_array_equal(stratified_folds(y, n_splits, seed), _sklearn_folds(y, None, n_splits, seed))
        if len(set(groups)) >= n_splits:
            ours = stratified_group_folds(y, groups, n_splits, seed)
            assert all(len(set(ours[groups == g])) == 1 for g in set(groups))
            if grouped_as_ours:
                np.testing.assert_array_equal(ours, _sklearn_folds(y, groups, n_splits, seed))
            checked += 1
    assert checked > 100


def test_few_patients_hold_out_fewer_folds_and_too_few_for_cv_is_an_error(caplog: pytest.LogCaptureFixture) -> None:
    # 3 patients with 8 slides each, two classes per patient: the 10 hold-out folds of val_fraction 0.1 cannot
    # be made from a training part's 2 patients (scikit-learn raised a ValueError here), so it holds out 1 of 2.
    ids = [f"s{i:02d}" for i in range(24)]
    groups = np.array([f"p{i // 8}" for i in range(24)])
    labels = Labels(ids, np.array([i % 2 for i in range(24)]), ["a", "b"], groups)
    splits = make_splits(labels, split_csv=None, folds=3, val_fraction=0.1, seed=0)
    assert "a training part has 2 groups: validation holds out 1 of them, not 10% (val_fraction)" in caplog.text
    patient = dict(zip(ids, groups, strict=True))
    for split in splits:
        assert len({patient[s] for s in split.val}) == 1 and len({patient[s] for s in split.train}) == 1
        assert len({patient[s] for s in split.test}) == 1
    with pytest.raises(ConfigError, match="4-fold CV needs at least 4 groups .--group-column., 3 found"):
        make_splits(labels, split_csv=None, folds=4, val_fraction=0.1, seed=0)


def test_split_csv_and_label_errors(tmp_path: Path) -> None:
    labels = Labels(["a", "b", "c", "d"], np.array([0, 1, 0, 1]), ["x", "y"])
    split_csv = tmp_path / "split.csv"
    split_csv.write_text("slide_id,split\na,train\nb,train\nc,val\nd,test\nzz,test\n")
    (split,) = make_splits(labels, split_csv=split_csv, folds=5, val_fraction=0.1, seed=0)
    assert (split.train, split.val, split.test) == (["a", "b"], ["c"], ["d"])
    split_csv.write_text("slide_id,split\na,training\n")
    with pytest.raises(ConfigError, match="not train, val or test"):
        make_splits(labels, split_csv=split_csv, folds=5, val_fraction=0.1, seed=0)
    bad = tmp_path / "labels.csv"
    bad.write_text("slide,diagnosis\na,x\n")
    with pytest.raises(ConfigError, match="needs columns slide_id, label"):
        read_labels(bad)


def test_run_dir_round_trip(tmp_path: Path) -> None:
    path = run_dir(tmp_path, model="asmil", encoder="uni_v2", split="cv5", seed=7)
    assert path.name == "asmil_uni_v2_cv5_seed7"
    assert parse_run_dir(path) == {"model": "asmil", "encoder": "uni_v2", "split": "cv5", "seed": 7}


# ----------------------------------------------------------------------------------------- training
def _small_config(**kw) -> TrainConfig:
    base = {
        "folds": 3,
        "epochs": 2,
        "val_fraction": 0.2,
        "standardize": True,
        "lr": 5e-4,
        "model_kwargs": {"hidden_dim": 32},
        "plots": False,
    }
    return TrainConfig(**{**base, **kw})


def test_seeded_runs_are_reproducible_on_cpu(musk_small: tuple[Path, Path], tmp_path: Path) -> None:
    stores, labels = musk_small
    cfg = _small_config(model="asmil", anchor="ema", drop="token", model_kwargs={"hidden_dim": 32, "n_tokens": 12})
    first = train(stores, labels, tmp_path / "a", cfg)
    second = train(stores, labels, tmp_path / "b", cfg)
    strip = [[{k: v for k, v in row.items() if k != "seconds"} for row in f.history] for f in first.folds]
    assert strip == [[{k: v for k, v in row.items() if k != "seconds"} for row in f.history] for f in second.folds]
    assert [f.test for f in first.folds] == [f.test for f in second.folds]
    other = train(
        stores,
        labels,
        tmp_path / "c",
        _small_config(model="asmil", seed=1, model_kwargs={"hidden_dim": 32, "n_tokens": 12}),
    )
    assert other.folds[0].history[0]["train_loss"] != first.folds[0].history[0]["train_loss"]


def test_a_run_whose_folds_hold_other_slides_is_refused(musk_small: tuple[Path, Path], tmp_path: Path) -> None:
    """A run folder of the same identity is kept only when its folds were trained on the slides this version deals
    them: a fold made by another fold rule (scikit-learn before 1.8 shuffled grouped folds otherwise) is refused."""
    stores, labels = musk_small
    config = _small_config(model="abmil", folds=2, epochs=1)
    run = train(stores, labels, tmp_path, replace(config, plots=True)).run_dir
    assert train(stores, labels, tmp_path, config).run_dir == run  # the same folds: kept
    assert (run / "reliability.png").is_file()
    best = run / "fold_1" / "checkpoint_best.pt"
    ckpt = torch.load(best, weights_only=True)
    moved = ckpt["split"]["test"].pop(0)  # as if dealt by another rule: one test slide trained on
    ckpt["split"]["train"].append(moved)
    torch.save(ckpt, best)
    with pytest.raises(
        RunMismatchError, match=rf"fold 1 was trained with other slides .*1 moved, e\.g\. {moved}: train -> test"
    ):
        train(stores, labels, tmp_path, config)
    again = train(stores, labels, tmp_path, config, overwrite=True)
    assert load_checkpoint(run / "fold_1" / "checkpoint_best.pt")["split"]["test"][0] == moved
    assert len(again.folds) == 2 and not (run / "reliability.png").exists()  # plots: false leaves no old figure


def test_uncached_bags_give_the_same_run(musk_small: tuple[Path, Path], tmp_path: Path) -> None:
    stores, labels = musk_small
    cached = train(stores, labels, tmp_path / "a", _small_config(model="abmil", folds=2, cache="memory"))
    streamed = train(stores, labels, tmp_path / "b", _small_config(model="abmil", folds=2, cache="none"))
    assert [f.test for f in cached.folds] == [f.test for f in streamed.folds]


@pytest.mark.parametrize("model", ["abmil", "acmil"])
def test_asmil_plugins_work_with_baselines(model: str, musk_small: tuple[Path, Path], tmp_path: Path) -> None:
    stores, labels = musk_small
    drop = "token" if model == "acmil" else "instance"
    cfg = _small_config(model=model, anchor="frozen", drop=drop, n_drop=2 if model == "acmil" else 1, folds=2, epochs=1)
    result = train(stores, labels, tmp_path, cfg)
    ckpt = load_checkpoint(result.folds[0].out_dir / "checkpoint_best.pt")
    assert ckpt["config"]["resolved"] == {"anchor": "frozen", "drop": drop, "threads": 1}  # small bags: 1 thread


def test_run_folder_layout_and_checkpoint(musk_small: tuple[Path, Path], tmp_path: Path) -> None:
    stores, labels = musk_small
    threads_before = torch.get_num_threads()
    result = train(stores, labels, tmp_path, _small_config(model="abmil", plots=True, patience=1, epochs=3))
    run = result.run_dir
    assert run.name == "abmil_mil-features_cv3_seed0"
    for name in ("config.yaml", "classes.json", "train.log", "summary.json", "summary.csv"):
        assert (run / name).is_file(), name
    for k in range(3):
        fold = run / f"fold_{k}"
        for name in (
            "checkpoint_best.pt",
            "checkpoint_last.pt",
            "metrics.csv",
            "metrics.json",
            "curves.png",
            "stability.png",
            "predictions_test.csv",
        ):
            assert (fold / name).is_file(), f"fold_{k}/{name}"
    ckpt = load_checkpoint(run / "fold_0" / "checkpoint_best.pt")
    assert ckpt["model_name"] == "abmil" and ckpt["encoder"] == MIL_ENCODER and ckpt["in_dim"] == 166
    assert ckpt["classes"] == ["0", "1"] and ckpt["package_version"] and ckpt["layout_version"] == 1
    assert ckpt["model_kwargs"]["n_classes"] == 2 and ckpt["feature_norm"]["mean"].shape == (166,)
    # Musk bags are tiny: one thread (the count is chosen, recorded, and torch's own setting is restored after).
    assert ckpt["config"]["resolved"] == {"anchor": "none", "drop": "none", "threads": 1}
    assert torch.get_num_threads() == threads_before
    metrics = json.loads((run / "fold_0" / "metrics.json").read_text())
    assert {"attn_js", "attn_entropy", "val_f1_macro", "val_auc"} <= set(metrics["history"][-1])
    assert len(metrics["history"]) >= 2
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["test_mean_std"]["accuracy"]) == {"mean", "std"} and len(summary["folds"]) == 3
    # A second call resumes: finished folds are kept, not retrained.
    mtime = (run / "fold_0" / "checkpoint_best.pt").stat().st_mtime_ns
    train(stores, labels, tmp_path, _small_config(model="abmil", plots=True, patience=1, epochs=3))
    assert (run / "fold_0" / "checkpoint_best.pt").stat().st_mtime_ns == mtime


def test_checkpoint_last_is_written_every_checkpoint_seconds_and_after_the_last_epoch(
    musk_small: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default checkpoint_last.pt is written when 30 s have passed since the last one and after a fold's last
    epoch (an early stop's too), not after every quick epoch; checkpoint_seconds=0 writes it after every epoch."""
    from wsi_pipeline.training import _train

    written: list[tuple[str, str, int]] = []
    save = _train.save_checkpoint

    def spy(path: Path, model: torch.nn.Module, **meta: object) -> Path:
        if path.name == "checkpoint_last.pt":
            written.append((path.parent.name, path.parent.parent.name, int(meta["epoch"])))
        return save(path, model, **meta)

    monkeypatch.setattr(_train, "save_checkpoint", spy)
    stores, labels = musk_small
    runs = {}
    for seconds in (30.0, 0.0):
        written.clear()
        result = train(
            stores, labels, tmp_path / str(seconds), _small_config(model="abmil", epochs=4, checkpoint_seconds=seconds)
        )
        runs[seconds] = sorted((fold, epoch) for fold, _, epoch in written)
        for fold in result.folds:
            last = load_checkpoint(fold.out_dir / "checkpoint_last.pt")
            assert last["epoch"] == len(json.loads((fold.out_dir / "metrics.json").read_text())["history"])
    assert runs[30.0] == [(f"fold_{k}", 4) for k in range(3)]  # these epochs take well under a second each
    assert runs[0.0] == [(f"fold_{k}", e) for k in range(3) for e in range(1, 5)]
    written.clear()
    stopped = train(
        stores, labels, tmp_path / "stop", _small_config(model="abmil", epochs=30, patience=1, checkpoint_seconds=30.0)
    )
    stop_epochs = {fold.out_dir.name: len(fold.history) for fold in stopped.folds}
    assert any(epochs < 30 for epochs in stop_epochs.values())  # patience 1 stopped early
    assert sorted((fold, epoch) for fold, _, epoch in written) == sorted(stop_epochs.items())


def test_wrong_encoder_is_a_clear_error(musk_small: tuple[Path, Path], tmp_path: Path) -> None:
    stores, labels = musk_small
    with pytest.raises(StoreMismatchError, match="no finished 'uni' embeddings"):
        train(stores, labels, tmp_path, _small_config(model="abmil", encoder="uni"))


def test_abmil_reaches_published_range_on_musk1(mil_dir: Path, tmp_path: Path) -> None:
    """A short 5-fold CV of ABMIL on all of Musk1 (a few seconds); the full 10-fold protocol is in the README."""
    stores, labels = convert_mil_csv(mil_dir / "musk1.csv", tmp_path / "musk1")
    cfg = load_config(
        TrainConfig,
        "train",
        ROOT / "configs" / "presets" / "mil-benchmark.yaml",
        {"model": "abmil", "folds": 5, "epochs": 15, "plots": False},
    )
    result = train(stores, labels, tmp_path / "runs", cfg)
    assert result.summary["test_mean_std"]["accuracy"]["mean"] >= 0.8


def test_cli_train_passes_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from wsi_pipeline.cli import app
    from wsi_pipeline.training import TrainResult

    seen = {}

    def fake_train(stores, labels, out, cfg, **kwargs):
        seen.update(stores=stores, labels=labels, out=out, cfg=cfg)
        stats = {k: {"mean": 0.5, "std": 0.1} for k in ("accuracy", "balanced_accuracy", "f1_macro", "auc")}
        return TrainResult(out, [], {"test_mean_std": stats, "test_last_mean_std": stats})

    monkeypatch.setattr("wsi_pipeline.training.train", fake_train)
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(tmp_path),
            "-l",
            "labels.csv",
            "-o",
            "runs",
            "-m",
            "abmil",
            "-k",
            "4",
            "--epochs",
            "7",
            "--set",
            "anchor=ema",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.model, cfg.folds, cfg.epochs, cfg.anchor.mode, cfg.seed) == ("abmil", 4, 7, "ema", 3)
    assert seen["labels"] == Path("labels.csv")


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason=skip_reason("a CUDA GPU", "torch.cuda.is_available() is False here")
)
def test_training_runs_on_cuda(musk_small: tuple[Path, Path], tmp_path: Path) -> None:
    stores, labels = musk_small
    result = train(
        stores,
        labels,
        tmp_path,
        _small_config(model="asmil", device="cuda", folds=2, epochs=1, model_kwargs={"hidden_dim": 32, "n_tokens": 12}),
    )
    assert load_checkpoint(result.folds[0].out_dir / "checkpoint_best.pt")["state_dict"]
