"""Never reuse silently (docs/reuse.md), through the installed ``wsi-pipeline`` as a user runs it: a stage reuses a
result only when what made it is provably the same; otherwise it fails the slide (or refuses the run) with one line
saying what changed and how to redo it. One test per way a stale result used to pass for a fresh one."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import CMU_SMALL, MIL_DATA, ROOT, SLIDES, WEIGHTS, need_real_data
from tests.slide_factory import make_pyramid_slide
from tests.test_cli import ENTRY_POINT
from wsi_pipeline.batch import read_manifest
from wsi_pipeline.store import FeatureWriter, features_attrs, list_encoders, read_attrs, read_features, store_path

LITE0 = "efficientnet-lite0-57934424.pth"
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
QUICK_TILES = ["--set", "max_tiles=4", "--set", "qc.enabled=false"]


def _cli(*args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed entry point in a subprocess, from ``cwd`` (relative paths are the user's)."""
    environ = {k: v for k, v in os.environ.items() if k != "WSI_PIPELINE_DEBUG"}
    environ.update(COLUMNS="250", NO_COLOR="1", **(env or {}))
    cmd = [sys.executable, str(ENTRY_POINT), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=environ, cwd=cwd, timeout=300)


def _refusal(result: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a refused command (exit 1, no traceback)."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _records(out_dir: Path, stage: str) -> dict[str, tuple[str, str]]:
    """``slide_id -> (status, reason)`` from the stage's manifest."""
    return {rec.slide_id: (rec.status, rec.error or "") for rec in read_manifest(out_dir, stage)}


def _tile(slides: list[Path], out: Path, **settings: object) -> Path:
    """Tile stores for a test's set-up (the library; QC off, at most 4 tiles a slide)."""
    from wsi_pipeline.tiling import QcConfig, TileConfig, tile_slides

    config = TileConfig(max_tiles=4, qc=QcConfig(enabled=False), **settings)  # type: ignore[arg-type]
    result = tile_slides(slides, out, config=config)
    assert not result.failed, result.records
    return out


def _copies(source: Path, folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}{source.suffix}" for name in names]
    for path in paths:
        shutil.copyfile(source, path)
    return paths


# --------------------------------------------------------------------------------------------- tile
def test_tile_overwrite_with_the_same_tiles_keeps_the_embeddings(cmu_slide: Path, tmp_path: Path) -> None:
    from wsi_pipeline.embedding import EmbedConfig, embed_stores

    slide = _copies(cmu_slide, tmp_path / "slides", ["a"])[0]
    stores = _tile([slide], tmp_path / "stores")
    assert not embed_stores(stores, config=EmbedConfig(encoder="tiny_test", num_workers=0)).failed
    store = store_path(stores, "a")
    made, made_attrs = read_features(store, "tiny_test"), features_attrs(store, "tiny_test")

    same = _cli("tile", slide, "--out", stores, *QUICK_TILES, "--overwrite")
    assert same.returncode == 0, same.stderr
    assert list_encoders(store) == ["tiny_test"]  # the same tiles: their embeddings still describe them
    np.testing.assert_array_equal(read_features(store, "tiny_test"), made)
    assert features_attrs(store, "tiny_test")["fingerprint"] == made_attrs["fingerprint"]

    other = _cli("tile", slide, "--out", stores, *QUICK_TILES, "--tile-size", "256", "--overwrite")
    assert other.returncode == 0, other.stderr
    assert list_encoders(store) == []  # other tiles: the old embeddings went with the old store


def test_slide_mpp_never_rescales_a_slide_that_states_its_own(cmu_slide: Path, tmp_path: Path) -> None:
    """``--slide-mpp`` is for slides whose metadata states no resolution; one that contradicts a slide's own value
    by more than 10% is not used, and the manifest and a warning say so."""
    slide = _copies(cmu_slide, tmp_path, ["cmu"])[0]  # 0.499 um/px in its metadata
    bare = make_pyramid_slide(tmp_path / "bare.tiff", width=2000, height=1600, mpp=None, vendor="generic").path
    result = _cli("tile", slide, bare, "--out", tmp_path / "stores", *QUICK_TILES, "--slide-mpp", "0.25")
    assert result.returncode == 0, result.stderr
    records = _records(tmp_path / "stores", "tile")
    assert records["cmu"][0] == "ok" and "--slide-mpp 0.25 ignored, the slide states 0.499" in records["cmu"][1]
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert any("--slide-mpp 0.25 ignored" in line for line in warnings), result.stderr
    assert records["bare"] == ("ok", "")
    assert read_attrs(store_path(tmp_path / "stores", "cmu"))["slide"]["mpp"] == pytest.approx(0.499)
    assert read_attrs(store_path(tmp_path / "stores", "bare"))["slide"]["mpp"] == 0.25


# --------------------------------------------------------------------------------------------- embed
@pytest.mark.slow
def test_embed_refuses_features_made_with_other_weights_or_dtype(
    cmu_slide: Path, weights_dir: Path, tmp_path: Path
) -> None:
    stores = _tile(_copies(cmu_slide, tmp_path / "slides", ["a"]), tmp_path / "stores")
    store, stage = store_path(stores, "a"), "embed-efficientnet_lite0"
    embed = ["embed", stores, "-e", "efficientnet_lite0", "-j", "0"]
    assert _cli(*embed, "-w", "random").returncode == 0
    random_features = read_features(store, "efficientnet_lite0")

    real = _cli(*embed, "-w", weights_dir / LITE0, "--set", "dtype=float32")
    assert real.returncode == 1 and "Traceback" not in real.stderr
    status, reason = _records(stores, stage)["a"]
    assert status == "failed" and "made with other settings" in reason and "use --overwrite to redo them" in reason
    assert f"weights: random (seed 0) -> {LITE0}" in reason and "dtype: float16 -> float32" in reason
    np.testing.assert_array_equal(read_features(store, "efficientnet_lite0"), random_features)  # kept as it was

    redo = _cli(*embed, "-w", weights_dir / LITE0, "--overwrite")  # the fix the reason names
    assert redo.returncode == 0, redo.stderr
    assert _records(stores, stage)["a"][0] == "ok"
    assert features_attrs(store, "efficientnet_lite0")["weights"]["sha256"] == LITE0_SHA256
    assert not np.array_equal(read_features(store, "efficientnet_lite0"), random_features)


def test_embed_never_reads_a_replaced_slide_file(cmu_slide: Path, tmp_path: Path) -> None:
    slides = _copies(cmu_slide, tmp_path / "slides", ["a", "b"])
    stores = _tile(slides, tmp_path / "stores")
    shutil.copyfile(SLIDES / "small.svs", slides[1])  # another (16 x 16) slide under b's name
    result = _cli("embed", stores, "-e", "tiny_test", "-j", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    records = _records(stores, "embed-tiny_test")
    assert records["a"][0] == "ok"
    status, reason = records["b"]
    assert status == "failed" and "is not the one it was tiled from (slide size 2220x2967 -> 16x16" in reason
    assert f"wsi-pipeline tile {slides[1]} --out {stores} --overwrite" in reason
    assert list_encoders(store_path(stores, "b")) == []


# --------------------------------------------------------------------------------------------- train
@pytest.fixture
def bags(tmp_path: Path) -> tuple[Path, list[str]]:
    """Stores of 26 real Musk1 bags (13 per class) and their slide ids, first of each class first."""
    source = need_real_data(MIL_DATA / "musk1.csv")
    from wsi_pipeline.mil_datasets import convert_mil_csv

    keep: dict[str, list[str]] = {"0": [], "1": []}
    rows = source.read_text().splitlines()
    for row in rows:
        label, bag = row.split(",", 2)[:2]
        if bag not in keep[label] and len(keep[label]) < 13:
            keep[label].append(bag)
    subset = tmp_path / "musk.csv"
    subset.write_text("\n".join(r for r in rows if r.split(",", 2)[1] in keep["0"] + keep["1"]) + "\n")
    stores, labels = convert_mil_csv(subset, tmp_path / "bags")
    with labels.open(newline="") as handle:
        ids = {row["slide_id"]: row["label"] for row in csv.DictReader(handle)}
    return stores, sorted(ids, key=lambda sid: (ids[sid], sid))


def _write_labels(path: Path, slide_ids: list[str], n_negative: int = 13) -> Path:
    """Labels whose class names hold commas: every CSV must go through the csv module."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "label"])
        writer.writerows(
            [sid, "grade 1, low" if i < n_negative else "grade 3, high"] for i, sid in enumerate(slide_ids)
        )
    return path


@pytest.mark.slow
def test_train_refuses_a_run_folder_of_other_settings_or_data(bags: tuple[Path, list[str]], tmp_path: Path) -> None:
    stores, ids = bags
    added = ids[-1]
    labels = _write_labels(tmp_path / "labels.csv", ids[:-1])
    train = ["train", stores, "-l", labels, "-o", tmp_path / "runs", "-m", "abmil", "-k", "2", "--device", "cpu"]
    train += ["--set", "plots=false"]
    first = _cli(*train, "--lr", "1e-4", "--epochs", "1")
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "abmil_mil-features_cv2_seed0"
    trained = {path: path.stat().st_mtime_ns for path in run.glob("fold_*/checkpoint_best.pt")}
    assert len(trained) == 2
    with (run / "fold_0" / "predictions_test.csv").open(newline="") as handle:
        tested = list(csv.DictReader(handle))
    assert {"prob_grade 1, low", "prob_grade 3, high"} <= set(tested[0])
    assert {row["label"] for row in tested} <= {"grade 1, low", "grade 3, high"}

    other_settings = _cli(*train, "--set", "lr=5e-3", "--set", "epochs=3")
    line = _refusal(other_settings)
    assert "lr: 0.0001 -> 0.005" in line and "epochs: 1 -> 3" in line and "--overwrite" in line

    # A slide added to the labels, another re-embedded (as after `submit --overwrite` or a repaired slide).
    _write_labels(labels, ids)
    remade = store_path(stores, ids[0])
    features = read_features(remade, "mil-features")
    with FeatureWriter(remade, "mil-features", len(features), features.shape[1], dtype="float32") as writer:
        writer.write(0, features * 1.5)
    other_data = _refusal(_cli(*train, "--lr", "1e-4", "--epochs", "1"))
    assert f"slides: +1 ({added})" in other_data and f"features of 1 slide(s) re-made ({ids[0]})" in other_data
    assert {path: path.stat().st_mtime_ns for path in trained} == trained  # nothing of the old run was touched

    redo = _cli(*train, "--set", "lr=5e-3", "--set", "epochs=3", "--overwrite")
    assert redo.returncode == 0, redo.stderr
    ckpt = torch.load(run / "fold_0" / "checkpoint_best.pt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["lr"] == 5e-3 and ckpt["config"]["epochs"] == 3
    assert json.loads((run / "fold_0" / "metrics.json").read_text())["last_epoch"] == 3
    identity = json.loads((run / "identity.json").read_text())
    assert added in identity["labels"] and identity["wsi_pipeline"]["package_version"]
    with (run / "summary.csv").open(newline="") as handle:
        assert [row["fold"] for row in csv.DictReader(handle)] == ["0", "1", "mean", "std"]


_TRAIN_THEN_HANG = """
import os, sys, time
from pathlib import Path

from wsi_pipeline.training import FoldTask

original, calls = FoldTask.train_pass, []


def epoch_then_hang(self, *args, **kwargs):
    result = original(self, *args, **kwargs)  # the epoch's optimiser steps are done in memory ...
    calls.append(1)
    if len(calls) == int(os.environ["HANG_AT_EPOCH"]):  # ... but never saved: killed here, mid-epoch
        Path(os.environ["HANG_FILE"]).touch()
        time.sleep(600)
    return result


FoldTask.train_pass = epoch_then_hang  # every task's training pass (classification here)
from wsi_pipeline.cli import main

sys.argv = ["wsi-pipeline", *sys.argv[1:]]
main()
"""


def _fold_outcome(fold: Path) -> tuple[list[dict], dict, dict[str, torch.Tensor]]:
    metrics = json.loads((fold / "metrics.json").read_text())
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in metrics["history"]]
    ckpt = torch.load(fold / "checkpoint_best.pt", map_location="cpu", weights_only=True)
    return history, {"best_epoch": metrics["best_epoch"], "test": metrics["test"]}, ckpt["state_dict"]


@pytest.mark.slow
def test_killed_train_resumes_to_the_uninterrupted_result(bags: tuple[Path, list[str]], tmp_path: Path) -> None:
    """kill -9 in fold 1's second epoch, while a second ``train`` on the same folder is refused by the run's lock;
    the next run keeps fold 0, resumes fold 1 from its checkpoint_last.pt, and ends bit for bit where an
    uninterrupted run ends (ASMIL: anchor, token dropping and the random states all restored; CPU, seeded)."""
    stores, ids = bags
    labels = _write_labels(tmp_path / "labels.csv", ids)
    args = ["train", stores, "-l", labels, "-m", "asmil", "-k", "2", "--epochs", "3", "--device", "cpu"]
    args += ["--set", "plots=false", "--set", "model_kwargs.hidden_dim=16"]
    # checkpoint_last.pt after every epoch (by default: every 30 s), so that the kill finds fold 1's epoch 1 saved;
    # not a setting of the run's identity, so the rerun below may leave it out.
    killed_args = [*args, "--set", "checkpoint_seconds=0"]
    hang = tmp_path / "hanging"
    killed = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_TRAIN_THEN_HANG), *map(str, killed_args), "-o", tmp_path / "runs"],
        cwd=ROOT,
        env={**os.environ, "HANG_AT_EPOCH": "5", "HANG_FILE": str(hang)},  # fold 0: epochs 1-3; fold 1: 1, 2
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not hang.exists():
            assert killed.poll() is None, killed.stderr.read().decode() if killed.stderr else ""
            assert time.monotonic() < deadline, "training never reached fold 1's second epoch"
            time.sleep(0.1)
        second = _refusal(_cli(*args, "-o", tmp_path / "runs"))
        assert "another `wsi-pipeline train` is training this run folder" in second
        os.killpg(killed.pid, signal.SIGKILL)
    finally:
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    run = tmp_path / "runs" / "asmil_mil-features_cv2_seed0"
    assert (run / "fold_0" / "metrics.json").is_file() and not (run / "fold_1" / "metrics.json").exists()
    assert torch.load(run / "fold_1" / "checkpoint_last.pt", weights_only=True)["epoch"] == 1
    assert not (run / "summary.json").exists()  # nothing looks finished

    resumed = _cli(*args, "-o", tmp_path / "runs")
    assert resumed.returncode == 0, resumed.stderr
    log = (run / "train.log").read_text()
    assert "fold 0 already trained by this run; kept" in log and "fold 1: resuming after epoch 1/3" in log
    reference = _cli(*args, "-o", tmp_path / "uninterrupted")
    assert reference.returncode == 0, reference.stderr
    for fold in ("fold_0", "fold_1"):
        history, result, weights = _fold_outcome(run / fold)
        ref_history, ref_result, ref_weights = _fold_outcome(tmp_path / "uninterrupted" / run.name / fold)
        assert history == ref_history and result == ref_result
        assert weights.keys() == ref_weights.keys()
        assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)


def test_checkpoints_are_read_as_data_never_as_code(tmp_path: Path) -> None:
    from wsi_pipeline.errors import CheckpointError
    from wsi_pipeline.training import load_checkpoint

    crafted = tmp_path / "checkpoint_best.pt"
    torch.save({"model_name": "abmil", "payload": _Pickled()}, crafted)
    with pytest.raises(CheckpointError, match="holds Python objects beyond tensors and plain values"):
        load_checkpoint(crafted)


class _Pickled:
    """An object a pickle-based checkpoint could carry (its class is imported, i.e. code runs, on load)."""


# --------------------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Four copies of the real slide tiled (224 px at 0.5 um/px) and embedded by the CLI with the real
    EfficientNet-Lite0 weights given as a relative path (``wcopy/effnet.pth``), and an ABMIL run trained on them.
    Returns the folder (the user's working folder at embed time) and the run."""
    need_real_data(CMU_SMALL)
    need_real_data(WEIGHTS / LITE0)
    from wsi_pipeline.training import TrainConfig, train

    root = tmp_path_factory.mktemp("cohort")
    _tile(_copies(CMU_SMALL, root / "slides", ["a", "b", "c", "d"]), root / "stores")
    (root / "wcopy").mkdir()
    shutil.copyfile(WEIGHTS / LITE0, root / "wcopy" / "effnet.pth")
    embed = _cli("embed", "stores", "-e", "efficientnet_lite0", "-w", "wcopy/effnet.pth", "-j", "0", cwd=root)
    assert embed.returncode == 0, embed.stderr
    labels = root / "labels.csv"
    labels.write_text("slide_id,label\na,x\nb,x\nc,y\nd,y\n")
    config = TrainConfig(model="abmil", folds=2, epochs=1, val_fraction=0.0, plots=False, device="cpu")
    return root, train(root / "stores", labels, root / "runs", config).run_dir


PREDICT = ["--no-heatmaps", "--no-report", "--device", "cpu"]  # the report has its own tests (test_report.py)


def test_predict_fails_stores_tiled_or_embedded_otherwise(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    from wsi_pipeline.embedding import EmbedConfig, embed_stores

    root, run = cohort
    slide = CMU_SMALL
    coarse = _tile([slide], tmp_path / "coarse", target_mpp=1.0, tile_size=96)
    random = _tile([slide], tmp_path / "random")
    lite0 = EmbedConfig(encoder="efficientnet_lite0", weights=str(root / "wcopy" / "effnet.pth"), num_workers=0)
    assert not embed_stores(coarse, config=lite0).failed
    assert not embed_stores(
        random, config=EmbedConfig(encoder="efficientnet_lite0", weights="random", num_workers=0)
    ).failed
    stores = tmp_path / "stores"
    shutil.copytree(store_path(coarse, slide.stem), store_path(stores, "coarse"))
    shutil.copytree(store_path(random, slide.stem), store_path(stores, "random"))
    shutil.copytree(store_path(root / "stores", "a"), store_path(stores, "same"))

    result = _cli("predict", run, stores, "-o", tmp_path / "pred", *PREDICT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    records = _records(tmp_path / "pred", "predict")
    assert records["same"][0] == "ok"
    assert records["coarse"][0] == "failed"
    assert "target_mpp: 1 here, 0.5 in training" in records["coarse"][1]
    assert "tile_size: 96 here, 224 in training" in records["coarse"][1]
    assert records["random"][0] == "failed" and "weights: random here, effnet.pth in training" in records["random"][1]

    # When no store fits the model, the run is refused before anything is written.
    none_fit = _cli("predict", run, store_path(stores, "coarse"), store_path(stores, "random"), "-o", tmp_path / "p2")
    assert "not what" in _refusal(none_fit) and not (tmp_path / "p2" / "slides").exists()


@pytest.mark.slow
def test_predict_raw_slides_finds_or_is_given_the_weights(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    """Embedded with a relative ``-w wcopy/effnet.pth``; predicting slide files from another folder finds the file
    by its absolute path, and once it moved (another machine) takes ``--weights`` (or ``--set weights=``), checked
    by sha256 before any slide is touched."""
    root, run = cohort
    elsewhere = tmp_path / "elsewhere"
    _copies(CMU_SMALL, elsewhere, ["new"])
    found = _cli("predict", run, "new.svs", "-o", "p1", *PREDICT, cwd=elsewhere)
    assert found.returncode == 0, found.stderr

    moved = root / "wmoved"
    (root / "wcopy").rename(moved)
    try:
        lost = _refusal(_cli("predict", run, "new.svs", "-o", "p2", *PREDICT, cwd=elsewhere))
        assert "effnet.pth" in lost and "--weights PATH" in lost and LITE0_SHA256 in lost
        assert not (elsewhere / "p2" / "stores").exists()  # failed before any slide was touched
        (elsewhere / "junk.pth").write_bytes(b"not these weights")
        wrong = _refusal(
            _cli("predict", run, "new.svs", "-o", "p2", *PREDICT, "--set", "weights=junk.pth", cwd=elsewhere)
        )
        assert f"is not the {LITE0_SHA256} of effnet.pth" in wrong
        given = _cli("predict", run, "new.svs", "-o", "p2", *PREDICT, "--weights", moved / "effnet.pth", cwd=elsewhere)
        assert given.returncode == 0, given.stderr
    finally:
        moved.rename(root / "wcopy")
    with (
        (elsewhere / "p1" / "predictions.csv").open(newline="") as a,
        (elsewhere / "p2" / "predictions.csv").open(newline="") as b,
    ):
        assert list(csv.DictReader(a)) == list(csv.DictReader(b))


def test_predict_raw_slides_without_resolution_take_tiles_forms(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    """A slide file that states no resolution fails with the advice; ``--slide-mpp``, ``--mpp-csv`` and a manifest
    ``mpp`` column give it one, as for ``tile``; ``--slide-mpp`` never rescales a slide that states its own."""
    _, run = cohort
    bare = make_pyramid_slide(tmp_path / "bare.tiff", width=2000, height=1600, mpp=None, vendor="generic").path
    refused = _cli("predict", run, bare, "-o", tmp_path / "p1", *PREDICT)
    assert refused.returncode == 1
    status, reason = _records(tmp_path / "p1", "predict")["bare"]
    assert status == "failed" and "--slide-mpp" in reason and "--mpp-csv" in reason

    by_manifest, by_csv, by_default = _copies(bare, tmp_path / "slides", ["by_manifest", "by_csv", "by_default"])
    cmu = _copies(CMU_SMALL, tmp_path / "slides", ["cmu"])[0]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,mpp\n{by_manifest},0.25\n")
    per_slide = tmp_path / "mpp.csv"
    per_slide.write_text("slide,mpp\nby_csv,0.25\n")
    args = ["predict", run, manifest, by_csv, by_default, cmu, "-o", tmp_path / "p2", *PREDICT]
    given = _cli(*args, "--mpp-csv", per_slide, "--slide-mpp", "0.25")
    assert given.returncode == 0, given.stderr
    records = _records(tmp_path / "p2", "predict")
    assert {sid: status for sid, (status, _) in records.items()} == dict.fromkeys(
        ["by_csv", "by_default", "by_manifest", "cmu"], "ok"
    )
    for sid in ("by_csv", "by_default", "by_manifest"):
        assert read_attrs(store_path(tmp_path / "p2" / "stores", sid))["slide"]["mpp"] == 0.25
    assert "--slide-mpp 0.25 ignored, the slide states 0.499" in records["cmu"][1]
    assert read_attrs(store_path(tmp_path / "p2" / "stores", "cmu"))["slide"]["mpp"] == pytest.approx(0.499)
