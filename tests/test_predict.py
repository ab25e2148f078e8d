"""Predict: train -> predict round trip on bags from a real slide, heatmaps, scores, mismatch errors."""

from __future__ import annotations

import csv
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from tests.conftest import CMU_SMALL, need_real_data
from wsi_pipeline.batch import Shard, read_manifest
from wsi_pipeline.errors import CheckpointError, StoreMismatchError
from wsi_pipeline.predict import PredictConfig, predict_slides, read_slide_result, scale_scores, slide_result_path
from wsi_pipeline.slide import Slide
from wsi_pipeline.store import FeatureWriter, read_coords, read_scores, store_path, write_tile_store
from wsi_pipeline.training import TrainConfig, train

TILE = 256
ENCODER = "colour-stats"


def _colour_features(tile: np.ndarray) -> np.ndarray:
    """A tiny deterministic 'encoder': per-channel mean and std, darkness and whiteness of a tile."""
    pixels = tile.reshape(-1, 3).astype(np.float32) / 255.0
    grey = pixels.mean(1)
    return np.concatenate([pixels.mean(0), pixels.std(0), [(grey < 0.5).mean(), (grey > 0.85).mean()]])


def _make_stores(slide_path: Path, out: Path, n_bands: int = 6) -> tuple[Path, Path]:
    """Stores of real tiles of one slide: the tile grid cut into horizontal bands, one 'slide' store per band."""
    with Slide(slide_path) as slide:
        width, height = slide.dimensions
        xs = np.arange(0, width - TILE + 1, TILE)
        ys = np.arange(0, height - TILE + 1, TILE)
        grid = np.array([(x, y) for y in ys for x in xs], dtype=np.int64)
        feats = np.stack([_colour_features(slide.read_region((int(x), int(y)), 0, (TILE, TILE))) for x, y in grid])
        identity = slide.identity()  # what `tile` records: heatmaps check they draw over this very file
    bands = np.array_split(np.arange(len(grid)), n_bands)
    stores = out / "stores"
    rows = ["slide_id,label"]
    for i, rows_i in enumerate(bands):
        sid = f"cmu_band{i}"
        attrs = {
            "slide": {"id": sid, "path": str(slide_path), "width": width, "height": height, "identity": identity},
            "tiling": {"tile_size": TILE, "tile_size_level0": TILE, "stride_level0": TILE, "n_tiles": len(rows_i)},
            "mask": {},
            "config": {"target_mpp": 0.5},
        }
        path = write_tile_store(store_path(stores, sid), grid[rows_i], np.ones(len(rows_i)), attrs)
        with FeatureWriter(path, ENCODER, len(rows_i), feats.shape[1], attrs={"encoder": ENCODER}) as writer:
            writer.write(0, feats[rows_i])
        rows.append(f"{sid},{'upper' if i < n_bands // 2 else 'lower'}")
    labels = out / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return stores, labels


@pytest.fixture(autouse=True)
def _no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report has its own tests (tests/test_report.py); here its deep-zoom pyramids would only add minutes."""
    monkeypatch.setattr("wsi_pipeline.report.write_report", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An ASMIL checkpoint trained on 6 stores of real tiles of CMU-1-Small-Region.svs (made once per module)."""
    if not CMU_SMALL.is_file():
        need_real_data(CMU_SMALL)
    tmp_path = tmp_path_factory.mktemp("predict")
    stores, labels = _make_stores(CMU_SMALL, tmp_path / "data")
    cfg = TrainConfig(
        model="asmil",
        folds=3,
        val_fraction=0.0,
        epochs=2,
        lr=1e-3,
        plots=False,
        model_kwargs={"hidden_dim": 16, "n_tokens": 12},
    )
    result = train(stores, labels, tmp_path / "runs", cfg)
    return result.run_dir / "fold_0" / "checkpoint_best.pt", stores


def test_train_predict_round_trip_on_a_real_slide(trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, stores = trained
    out = tmp_path / "pred"
    result = predict_slides(checkpoint, [stores], out, PredictConfig(top_k=3, thumbnail_size=512, device="cpu"))
    assert not result.failed and len(result.rows) == 6
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["slide_id"] for r in rows] == [f"cmu_band{i}" for i in range(6)]
    assert list(rows[0]) == [
        "slide_id",
        "predicted_class",
        "prob_lower",
        "prob_upper",
        "cal_prob_lower",
        "cal_prob_upper",
        "n_tiles",
        "label",
        "source",
        "folds",
        "spread",
    ]
    # One fold's checkpoint: its test slides are out-of-fold, the slides it trained on are marked so.
    tested = set(read_test_ids(checkpoint.parent))
    assert tested and {r["slide_id"]: r["source"] for r in rows} == {
        r["slide_id"]: "out-of-fold" if r["slide_id"] in tested else "in-training" for r in rows
    }
    assert {r["folds"] for r in rows} == {"0"} and all(r["label"] in {"lower", "upper"} for r in rows)
    for row in rows:
        assert row["predicted_class"] in {"lower", "upper"}
        assert float(row["prob_lower"]) + float(row["prob_upper"]) == pytest.approx(1.0, abs=1e-5)
    name = "asmil_colour-stats_cv3_seed0_fold0"
    for i, row in enumerate(rows):
        store = stores / f"cmu_band{i}.zarr"
        scores = read_scores(store, name)
        assert len(scores) == int(row["n_tiles"]) and scores.sum() == pytest.approx(1.0, abs=1e-4)
        assert zarr.open_array(str(store / "scores" / name)).attrs["model"] == "asmil"
        heatmap = out / "heatmaps" / f"cmu_band{i}.png"
        assert heatmap.is_file() and heatmap.stat().st_size > 10_000
        tiles = sorted((out / "top_tiles" / f"cmu_band{i}").glob("*.png"))
        assert len(tiles) == 3 and tiles[0].name.startswith("rank01_x")
    from PIL import Image

    assert Image.open(tiles[0]).size == (TILE, TILE)
    # predict reproduces the probabilities train computed for the fold's test slides (same normalisation, model).
    with (checkpoint.parent / "predictions_test.csv").open() as fh:
        at_train = {r["slide_id"]: float(r["prob_upper"]) for r in csv.DictReader(fh)}
    assert at_train
    for row in rows:
        if row["slide_id"] in at_train:
            assert float(row["prob_upper"]) == pytest.approx(at_train[row["slide_id"]], abs=1e-5)


def _store_whose_slide_is_gone(stores: Path, tmp_path: Path) -> Path:
    """A copy of a finished store whose slide file no longer exists (moved, deleted)."""
    moved = tmp_path / "moved"
    shutil.copytree(stores / "cmu_band0.zarr", moved / "cmu_band0.zarr")
    group = zarr.open_group(str(moved / "cmu_band0.zarr"), mode="a")
    group.attrs["slide"] = {**group.attrs["slide"], "path": str(tmp_path / "gone.svs")}
    return moved / "cmu_band0.zarr"


def test_missing_slide_file_skips_heatmap_but_predicts(trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, stores = trained
    store = _store_whose_slide_is_gone(stores, tmp_path)
    with pytest.warns(UserWarning, match="heatmaps skipped for 1 slide"):
        result = predict_slides(checkpoint, [store], tmp_path / "p", PredictConfig(device="cpu"))
    assert len(result.rows) == 1 and not (tmp_path / "p" / "heatmaps").exists()


def test_cli_shows_a_warning_once_on_one_line(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.test_cli import run_cli

    checkpoint, stores = trained
    store = _store_whose_slide_is_gone(stores, tmp_path)
    result = run_cli("predict", checkpoint, store, "-o", tmp_path / "p", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "heatmaps skipped" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: heatmaps skipped for 1 slide(s)"), result.stderr
    assert "warnings.warn" not in result.stderr and "UserWarning" not in result.stderr


def test_mismatched_stores_and_bad_checkpoints(trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, stores = trained
    other = tmp_path / "other" / "x.zarr"
    write_tile_store(other, np.zeros((3, 2)), np.ones(3), {"slide": {"id": "x", "path": None}, "tiling": {}})
    with FeatureWriter(other, "uni", 3, 8) as writer:
        writer.write(0, np.zeros((3, 8)))
    with pytest.raises(StoreMismatchError, match=r"no 'colour-stats' embeddings \(found: uni\)"):
        predict_slides(checkpoint, [other], tmp_path / "p")
    with FeatureWriter(other, ENCODER, 3, 5) as writer:
        writer.write(0, np.zeros((3, 5)))
    with pytest.raises(StoreMismatchError, match="dimension 5 but .* expects 8"):
        predict_slides(checkpoint, [other], tmp_path / "p")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torch checkpoint.*checkpoint_best.pt"):
        predict_slides(bad, [stores], tmp_path / "p")
    with pytest.raises(CheckpointError, match="no such checkpoint or training run folder"):
        predict_slides(tmp_path / "none.pt", [stores], tmp_path / "p")


def test_cli_predict(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from wsi_pipeline.cli import app

    checkpoint, stores = trained
    result = CliRunner().invoke(
        app, ["predict", str(checkpoint), str(stores), "-o", str(tmp_path / "cli"), "--no-heatmaps", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "predictions.csv").is_file() and not (tmp_path / "cli" / "heatmaps").exists()
    assert "predict: 6 ok, 0 skipped, 0 failed" in result.output


FAST = PredictConfig(heatmaps=False, device="cpu")


def read_test_ids(fold: Path) -> dict[str, dict[str, str]]:
    """The fold's test slides as train wrote them (predictions_test.csv): slide id -> row."""
    with (fold / "predictions_test.csv").open() as fh:
        return {row["slide_id"]: row for row in csv.DictReader(fh)}


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "predictions.csv").open() as fh:
        return {row["slide_id"]: row for row in csv.DictReader(fh)}


def test_run_folder_gives_each_labelled_slide_its_out_of_fold_model(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """A whole run: every labelled slide is predicted by the fold that tested it (what train itself computed for
    that fold's test set), and metrics.json holds the cohort metrics of exactly those predictions."""
    checkpoint, stores = trained
    run = checkpoint.parent.parent
    out = tmp_path / "pred"
    result = predict_slides(run, [stores], out, PredictConfig(top_k=0, thumbnail_size=256, device="cpu"))
    assert not result.failed and len(result.rows) == 6
    rows = _rows(out)
    for fold_dir in sorted(run.glob("fold_*")):
        k = fold_dir.name.removeprefix("fold_")
        for sid, at_train in read_test_ids(fold_dir).items():
            row = rows.pop(sid)
            assert (row["source"], row["folds"], row["label"]) == ("out-of-fold", k, at_train["label"])
            assert float(row["prob_upper"]) == pytest.approx(float(at_train["prob_upper"]), abs=1e-5)
    assert not rows  # every slide of the run was some fold's test slide
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 6 and metrics == {**metrics, **result.metrics}
    all_rows = list(_rows(out).values())
    correct = sum(r["predicted_class"] == r["label"] for r in all_rows)
    assert metrics["accuracy"] == pytest.approx(correct / 6)
    # The attention written to each store is the out-of-fold model's, under the run's name.
    for row in all_rows:
        scores = read_scores(stores / f"{row['slide_id']}.zarr", run.name)
        assert len(scores) == int(row["n_tiles"]) and scores.sum() == pytest.approx(1.0, abs=1e-4)
    heatmap = out / "heatmaps" / "cmu_band0.png"
    assert heatmap.is_file()


def test_run_folder_averages_the_folds_on_new_slides(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from wsi_pipeline.predict import predict_store
    from wsi_pipeline.training import load_checkpoint, model_from_checkpoint

    checkpoint, stores = trained
    run = checkpoint.parent.parent
    new = tmp_path / "new" / "unseen.zarr"  # a slide the run never had a label for
    shutil.copytree(stores / "cmu_band4.zarr", new)
    out = tmp_path / "pred"
    result = predict_slides(run, [new], out, FAST)
    row = _rows(out)["unseen"]
    assert (row["source"], row["folds"], row["label"]) == ("new", "0 1 2", "")
    per_fold = []
    for fold_dir in sorted(run.glob("fold_*")):
        ckpt = load_checkpoint(fold_dir / "checkpoint_best.pt")
        per_fold.append(predict_store(new, model_from_checkpoint(ckpt), ckpt))
    assert float(row["prob_upper"]) == pytest.approx(np.mean([probs[1] for _, _, probs in per_fold]), abs=1e-5)
    # No validation slides in this run: every temperature is 1, calibrated = raw, and the folds' spread is theirs.
    cal_upper = [r["cal_prob_upper"] for r, _, _ in per_fold]
    assert float(row["cal_prob_upper"]) == pytest.approx(np.mean(cal_upper), abs=1e-5)
    predicted = ["lower", "upper"].index(row["predicted_class"])
    assert float(row["spread"]) == pytest.approx(np.std([probs[predicted] for _, _, probs in per_fold]), abs=1e-5)
    np.testing.assert_allclose(
        read_scores(new, run.name), np.mean([attn for _, attn, _ in per_fold], axis=0), rtol=1e-4, atol=1e-7
    )
    assert result.metrics is None and not (out / "metrics.json").exists()  # no labelled slide here
    # predict_slide is the per-slide step predict_slides writes out: the same answer, nothing written.
    from wsi_pipeline.predict import load_models, predict_slide

    models = load_models(run)
    models.load("cpu")
    answer = predict_slide(models, new)
    assert answer.slide_id == "unseen" and answer.plan.source == "new" and answer.plan.folds == [0, 1, 2]
    assert answer.row["predicted_class"] == row["predicted_class"]
    assert answer.probabilities["upper"] == pytest.approx(float(row["prob_upper"]), abs=1e-6)
    np.testing.assert_allclose(answer.attention, read_scores(new, run.name), rtol=1e-5, atol=1e-8)

    # --fold k is that fold's checkpoint: same answers, same scores name, same "done".
    one = predict_slides(run, [new], tmp_path / "fold1", FAST, fold=1)
    by_file = predict_slides(run / "fold_1" / "checkpoint_best.pt", [new], tmp_path / "fold1", FAST)
    assert [r.status for r in by_file.records] == ["skipped"] and one.rows == by_file.rows
    assert one.rows[0]["folds"] == "1" and (new / "scores" / f"{run.name}_fold1").is_dir()
    assert one.rows[0]["prob_upper"] == pytest.approx(float(per_fold[1][2][1]), abs=1e-5)


def test_cpu_fold_models_hold_no_weights_between_uses(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """On the CPU each fold's weights are mapped from its checkpoint only while that fold runs, so k folds take the
    memory of one: the answers are those of the checkpoints read into memory, to the bit; a checkpoint replaced
    after predict started is refused, not silently used under the identity recorded at the start."""
    import torch

    from wsi_pipeline.predict import load_models, predict_slide, predict_store
    from wsi_pipeline.training import load_checkpoint, model_from_checkpoint

    checkpoint, stores = trained
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent.parent, run)
    new = tmp_path / "new" / "unseen.zarr"
    shutil.copytree(stores / "cmu_band4.zarr", new)
    models = load_models(run)
    models.load("cpu")

    def held() -> list[torch.Tensor]:
        return [t for m in models.members for t in m.model.state_dict().values() if not t.is_meta]

    assert not held()  # before: the old code held every fold's weights, twice (checkpoint and model)
    answer = predict_slide(models, new)
    assert not held()  # and after
    assert answer.plan.folds == [0, 1, 2]
    per_fold = []
    for fold_dir in sorted(run.glob("fold_*")):
        ckpt = load_checkpoint(fold_dir / "checkpoint_best.pt")
        per_fold.append(predict_store(new, model_from_checkpoint(ckpt), ckpt))
    expected = np.mean([probs for _, _, probs in per_fold], axis=0)
    assert [answer.probabilities[c] for c in models.classes] == [float(p) for p in expected]
    np.testing.assert_array_equal(answer.attention, np.mean([attn for _, attn, _ in per_fold], axis=0))

    replaced = run / "fold_1" / "checkpoint_best.pt"
    shutil.copyfile(replaced, tmp_path / "copy.pt")
    (tmp_path / "copy.pt").replace(replaced)  # the same bytes, another file: as a re-trained run writes it
    with pytest.raises(CheckpointError, match="changed or removed since predict started"):
        predict_slide(models, new)


def test_unfinished_run_and_missing_fold_are_one_line_errors(trained: tuple[Path, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    checkpoint, stores = trained
    run = tmp_path / "runs" / checkpoint.parent.parent.name
    shutil.copytree(checkpoint.parent.parent, run, ignore=shutil.ignore_patterns("summary.json", "fold_2"))
    cli = [sys.executable, "-m", "wsi_pipeline", "predict", str(run), str(stores), "-o", str(tmp_path / "p")]
    unfinished = subprocess.run(cli, capture_output=True, text=True)
    assert unfinished.returncode == 1 and "Traceback" not in unfinished.stderr
    assert "training has not finished (2 fold(s) so far, no summary.json)" in unfinished.stderr
    assert "--fold K" in unfinished.stderr
    missing = subprocess.run([*cli, "--fold", "2"], capture_output=True, text=True)
    assert missing.returncode == 1 and "no fold 2 (folds: 0, 1)" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "p").exists()


def test_qupath_geojson_has_one_detection_per_tile(trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, stores = trained
    run = checkpoint.parent.parent
    out = tmp_path / "pred"
    predict_slides(run, [stores / "cmu_band1.zarr"], out, FAST)
    collection = json.loads((out / "geojson" / "cmu_band1.geojson").read_text())
    coords = read_coords(stores / "cmu_band1.zarr")
    scores = read_scores(stores / "cmu_band1.zarr", run.name)
    row = _rows(out)["cmu_band1"]
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == len(coords)
    for feature, (x, y), score in zip(collection["features"], coords, scores, strict=True):
        assert feature["properties"]["objectType"] == "detection"
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] == [x, y] and ring[2] == [x + TILE, y + TILE]
        measurements = feature["properties"]["measurements"]
        assert measurements["attention"] == pytest.approx(float(score), rel=1e-5)
        assert measurements["slide prob upper"] == pytest.approx(float(row["prob_upper"]), abs=1e-5)
    ranks = [f["properties"]["measurements"]["attention rank"] for f in collection["features"]]
    top = int(np.argmax(scores))
    assert min(ranks) == 0.0 and max(ranks) == ranks[top] == 1.0


def _statuses(out: Path) -> dict[str, str]:
    return {r.slide_id: r.status for r in read_manifest(out, "predict")}


def _predicted_ids(out: Path) -> list[str]:
    with (out / "predictions.csv").open() as fh:
        return [row["slide_id"] for row in csv.DictReader(fh)]


def test_resume_skips_finished_slides_and_overwrite_redoes_them(trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, stores = trained
    out = tmp_path / "pred"
    first = predict_slides(checkpoint, [stores], out, PredictConfig(top_k=2, thumbnail_size=256, device="cpu"))
    ids = [f"cmu_band{i}" for i in range(6)]
    assert [r.status for r in first.records] == ["ok"] * 6 and _statuses(out) == dict.fromkeys(ids, "ok")
    result = read_slide_result(out, "cmu_band0")
    assert result is not None and result["checkpoint"]["sha256"] and result["n_tiles"] == first.rows[0]["n_tiles"]
    outputs = [slide_result_path(out, sid) for sid in ids] + [out / "heatmaps" / f"{sid}.png" for sid in ids]
    stamps = {path: path.stat().st_mtime_ns for path in outputs}
    csv_before = (out / "predictions.csv").read_text()

    again = predict_slides(checkpoint, [stores], out, PredictConfig(top_k=2, thumbnail_size=256, device="cpu"))
    assert [r.status for r in again.records] == ["skipped"] * 6
    assert {path: path.stat().st_mtime_ns for path in outputs} == stamps  # nothing was recomputed
    assert (out / "predictions.csv").read_text() == csv_before and again.rows == first.rows

    redone = predict_slides(checkpoint, [stores], out, FAST, overwrite=True)
    assert [r.status for r in redone.records] == ["ok"] * 6
    assert all(slide_result_path(out, sid).stat().st_mtime_ns > stamps[slide_result_path(out, sid)] for sid in ids)
    assert (out / "predictions.csv").read_text() == csv_before  # same checkpoint, same answers
    assert not list(out.rglob(".*.tmp-*")) and not list((out / ".locks").rglob("*.lock"))


def test_another_checkpoint_is_not_done(trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, stores = trained
    out = tmp_path / "pred"
    predict_slides(checkpoint, [stores / "cmu_band0.zarr"], out, FAST)
    retrained = tmp_path / checkpoint.parent.parent.name / "fold_0" / "checkpoint_best.pt"  # same scores name
    retrained.parent.mkdir(parents=True)
    retrained.write_bytes(checkpoint.read_bytes() + b"\0")  # same model, another file content
    assert predict_slides(retrained, [stores / "cmu_band0.zarr"], out, FAST).records[0].status == "ok"
    # A copy of the same checkpoint is the same one.
    shutil.copyfile(checkpoint, retrained)
    predict_slides(retrained, [stores / "cmu_band0.zarr"], out, FAST)
    assert predict_slides(checkpoint, [stores / "cmu_band0.zarr"], out, FAST).records[0].status == "skipped"


def test_two_shards_cover_every_slide_once(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Two array tasks at once on one output folder: each slide predicted by exactly one of them, and the merged
    predictions.csv, rewritten by both, ends with every slide once."""
    checkpoint, stores = trained
    out = tmp_path / "pred"
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda i: predict_slides(checkpoint, [stores], out, FAST, shard=Shard(i, 2)), (0, 1)))
    done = [[r.slide_id for r in run.records if r.status == "ok"] for run in runs]
    assert done == [["cmu_band0", "cmu_band2", "cmu_band4"], ["cmu_band1", "cmu_band3", "cmu_band5"]]
    assert sorted(p.name for p in (out / "manifests").glob("predict*.csv")) == [
        "predict.shard-0-of-2.csv",
        "predict.shard-1-of-2.csv",
    ]
    assert _predicted_ids(out) == [f"cmu_band{i}" for i in range(6)]
    assert set(_statuses(out).values()) == {"ok"}
    # A re-submitted shard finds its slides done.
    assert {r.status for r in predict_slides(checkpoint, [stores], out, FAST, shard=Shard(1, 2)).records} == {"skipped"}


def test_cli_shards_from_the_option_and_from_slurm_variables(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from wsi_pipeline.cli import app

    checkpoint, stores = trained
    out = tmp_path / "cli"
    argv = ["predict", str(checkpoint), str(stores), "-o", str(out), "--no-heatmaps", "--device", "cpu"]
    first = CliRunner().invoke(app, [*argv, "--shard", "0/2"])
    assert first.exit_code == 0, first.output
    assert _predicted_ids(out) == ["cmu_band0", "cmu_band2", "cmu_band4"]
    second = CliRunner().invoke(app, argv, env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"})
    assert second.exit_code == 0, second.output
    assert _predicted_ids(out) == [f"cmu_band{i}" for i in range(6)]
    assert (out / "manifests" / "predict.shard-1-of-2.csv").is_file()


def test_a_bad_store_fails_alone(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from wsi_pipeline.cli import app

    checkpoint, stores = trained
    bad = tmp_path / "more" / "bad.zarr"
    tiling = {"tile_size": TILE, "tile_size_level0": TILE}  # tiled as the training stores were
    write_tile_store(bad, np.zeros((3, 2)), np.ones(3), {"slide": {"id": "bad", "path": None}, "tiling": tiling})
    with FeatureWriter(bad, "uni", 3, 8) as writer:
        writer.write(0, np.zeros((3, 8)))
    out = tmp_path / "pred"
    result = CliRunner().invoke(
        app, ["predict", str(checkpoint), str(stores), str(bad), "-o", str(out), "--no-heatmaps", "--device", "cpu"]
    )
    assert result.exit_code == 1, result.output
    statuses = _statuses(out)
    assert statuses.pop("bad") == "failed" and set(statuses.values()) == {"ok"} and len(statuses) == 6
    record = next(r for r in read_manifest(out, "predict") if r.slide_id == "bad")
    assert "no 'colour-stats' embeddings (found: uni)" in record.error and "wsi-pipeline embed" in record.error
    assert _predicted_ids(out) == [f"cmu_band{i}" for i in range(6)]
    assert "predict: 6 ok, 0 skipped, 1 failed" in result.output

    # Embedded with the right encoder, the bad slide alone is predicted on the next run.
    with FeatureWriter(bad, ENCODER, 3, 8) as writer:
        writer.write(0, np.zeros((3, 8)))
    again = predict_slides(checkpoint, [stores, bad], out, FAST)
    assert {r.slide_id: r.status for r in again.records if r.status == "ok"} == {"bad": "ok"}
    assert len(again.rows) == 7


def test_re_embedded_store_is_predicted_again(trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, stores = trained
    store = tmp_path / "s" / "cmu_band3.zarr"
    shutil.copytree(stores / "cmu_band3.zarr", store)
    out = tmp_path / "pred"
    predict_slides(checkpoint, [store], out, FAST)
    n = int(read_slide_result(out, "cmu_band3")["n_tiles"])
    feats = np.asarray(zarr.open_array(str(store / "features" / ENCODER))[...])
    # Re-embedded to the very same embeddings: the same fingerprint, nothing to redo.
    with FeatureWriter(store, ENCODER, len(feats), feats.shape[1], attrs={"encoder": ENCODER}) as writer:
        writer.write(0, feats)
    assert predict_slides(checkpoint, [store], out, FAST).records[0].status == "skipped"
    # Re-embedded to other embeddings (another encoder run): predicted again.
    with FeatureWriter(store, ENCODER, len(feats), feats.shape[1], attrs={"encoder": ENCODER}) as writer:
        writer.write(0, feats[::-1])
    assert predict_slides(checkpoint, [store], out, FAST).records[0].status == "ok"
    assert predict_slides(checkpoint, [store], out, FAST).records[0].status == "skipped"
    shutil.rmtree(store / "scores")  # scores lost (e.g. a copied store): redone
    assert predict_slides(checkpoint, [store], out, FAST).records[0].status == "ok"
    assert feats.shape[0] == n


def test_top_tiles_are_read_as_the_encoder_saw_them(generated_slide, tmp_path: Path) -> None:  # noqa: ANN001
    import cv2
    from PIL import Image

    from wsi_pipeline.predict import save_top_tiles
    from wsi_pipeline.store import read_attrs, read_coords
    from wsi_pipeline.tiling import TileConfig, read_tile, tile_slide

    # A 0.25 mpp slide with a 4x pyramid, tiled at 1 mpp: the encoder read level 1, not level 0.
    store = tile_slide(
        Slide(generated_slide.path, slide_id="g"), tmp_path / "stores", config=TileConfig(target_mpp=1.0)
    )
    attrs = read_attrs(store)
    tiling, coords = attrs["tiling"], read_coords(store)
    assert tiling["read_level"] == 1 and tiling["read_size"] == tiling["tile_size"] == 224
    size0 = int(round(tiling["tile_size_level0"]))
    with Slide(attrs["slide"]["path"]) as slide:
        tile = read_tile(slide, coords[0], tiling)
        assert tile.shape == (224, 224, 3) and tile.dtype == np.uint8
        level0 = slide.read_region(tuple(int(v) for v in coords[0]), 0, (size0, size0))
        reference = cv2.resize(level0, (224, 224), interpolation=cv2.INTER_AREA)
        assert np.abs(tile.astype(np.int16) - reference).mean() < 10  # the same region, at the encoder's scale
        paths = save_top_tiles(slide, coords, tiling, np.arange(len(coords))[::-1], tmp_path / "top", k=2)
    assert [p.name for p in paths] == sorted(p.name for p in (tmp_path / "top").iterdir())
    assert np.array_equal(np.asarray(Image.open(paths[0])), tile)  # rank 1 is tile 0 (the highest score)


def test_rank_scaling_keeps_concentrated_attention_visible() -> None:
    scores = np.array([0.97, 0.01, 0.012, 0.008])
    ranked = scale_scores(scores, "rank")
    assert ranked.tolist() == [1.0, 1 / 3, 2 / 3, 0.0]
    linear = scale_scores(scores, "linear")
    assert linear[1:].max() < 0.01  # min-max hides everything but the top tile
    pct = scale_scores(np.linspace(0, 1, 101) ** 8, "percentile")
    assert pct.min() == 0.0 and pct.max() == 1.0
    with pytest.raises(ValueError, match="scaling"):
        scale_scores(scores, "log")  # type: ignore[arg-type]


def test_colour_bar_reads_in_real_attention_values() -> None:
    from wsi_pipeline.predict import colour_bar_ticks

    scores = np.random.default_rng(0).random(500) ** 6  # concentrated: a few tiles take most of the attention
    for scaling in ("rank", "percentile", "linear"):
        positions, labels = colour_bar_ticks(scores, scaling)
        values = [float(label) for label in labels]
        assert positions[0] == 0 and positions[-1] == 1 and values == sorted(values) and len(set(labels)) == 5
        assert scores.min() * 0.99 <= values[0] and values[-1] <= scores.max() * 1.01  # labels round to 3+ digits
    rank_values = [float(v) for v in colour_bar_ticks(scores, "rank")[1]]
    assert rank_values[2] == pytest.approx(np.median(scores), rel=1e-2)  # the middle of a rank bar is the median
    linear_values = [float(v) for v in colour_bar_ticks(scores, "linear")[1]]
    assert linear_values[0] == pytest.approx(scores.min(), rel=1e-2) and linear_values[-1] == pytest.approx(
        scores.max(), rel=1e-2
    )


def test_nearly_uniform_attention_says_so_on_the_heatmap(
    cmu_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.axes

    from wsi_pipeline.predict import draw_heatmap, uniformity_note
    from wsi_pipeline.slide import Slide

    with Slide(cmu_slide) as slide:
        thumb, scale = slide.thumbnail(512)
    coords = np.array([(x, y) for y in range(0, 2700, 448) for x in range(0, 2000, 448)])
    flat = 0.02321 + np.linspace(0, 0.00009, len(coords))  # max/min 1.004: what an EMA anchor can leave
    peaked = np.linspace(0.001, 0.2, len(coords))
    assert uniformity_note(flat) == "attention nearly uniform (max/min 1.004)" and uniformity_note(peaked) is None
    written: list[str] = []
    real_text = matplotlib.axes.Axes.text
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "text",
        lambda self, x, y, s, *a, **k: written.append(s) or real_text(self, x, y, s, *a, **k),
    )
    for scores, name in ((flat, "flat"), (peaked, "peaked")):
        for scaling in ("rank", "linear"):
            draw_heatmap(thumb, scale, coords, 448, scores, tmp_path / f"{name}_{scaling}.png", scaling=scaling)
    assert written == ["attention nearly uniform (max/min 1.004)"] * 2  # on both flat maps, never on the peaked ones
    assert all(
        (tmp_path / f"{n}_{s}.png").stat().st_size > 10_000 for n in ("flat", "peaked") for s in ("rank", "linear")
    )


def test_one_command_from_raw_slide_to_diagnosis(cmu_slide: Path, tmp_path: Path) -> None:
    """Train on stores made by the real tile and embed stages, then predict straight from the slide file: the
    slide is tiled and embedded with the settings the checkpoint recorded, giving the same answer as its store."""
    tiling = pytest.importorskip("wsi_pipeline.tiling")
    embedding = pytest.importorskip("wsi_pipeline.embedding")
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("a", "b", "c", "d"):
        shutil.copyfile(cmu_slide, slides / f"{name}.svs")
    stores = tmp_path / "stores"
    tiling.tile_slides(sorted(slides.glob("*.svs")), stores, config=tiling.TileConfig(max_tiles=12))
    embed_cfg = embedding.EmbedConfig(encoder="tiny_test", num_workers=0, device="cpu", precision="fp32")
    assert not embedding.embed_stores(stores, config=embed_cfg).failed
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\na,x\nb,x\nc,y\nd,y\n")
    cfg = TrainConfig(model="abmil", folds=2, val_fraction=0.0, epochs=1, plots=False, device="cpu")
    run = train(stores, labels, tmp_path / "runs", cfg)
    checkpoint = run.run_dir / "fold_0" / "checkpoint_best.pt"

    from_slide = predict_slides(
        checkpoint, [cmu_slide], tmp_path / "p1", PredictConfig(top_k=2, thumbnail_size=256, device="cpu")
    )
    from_store = predict_slides(checkpoint, [stores / "a.zarr"], tmp_path / "p2", PredictConfig(heatmaps=False))
    assert not from_slide.failed and [r["slide_id"] for r in from_slide.rows] == [cmu_slide.stem]
    assert (tmp_path / "p1" / "stores" / f"{cmu_slide.stem}.zarr").is_dir()
    assert (tmp_path / "p1" / "heatmaps" / f"{cmu_slide.stem}.png").is_file()
    top = sorted((tmp_path / "p1" / "top_tiles" / cmu_slide.stem).glob("*.png"))
    assert len(top) == 2
    from PIL import Image

    from wsi_pipeline.store import read_attrs

    # Top tiles are the pixels the encoder saw: read_tile with the view recorded with the embeddings (64 px here).
    made_store = tmp_path / "p1" / "stores" / f"{cmu_slide.stem}.zarr"
    view = embedding.features_view(made_store, "tiny_test")
    _, x, y = top[0].stem.split("_")
    with Slide(cmu_slide) as slide:
        seen = tiling.read_tile(slide, (int(x[1:]), int(y[1:])), read_attrs(made_store)["tiling"], view)
    assert seen.shape == (64, 64, 3) and np.array_equal(np.asarray(Image.open(top[0])), seen)
    made, ref = from_slide.rows[0], from_store.rows[0]
    assert made["n_tiles"] == ref["n_tiles"] and made["predicted_class"] == ref["predicted_class"]
    assert made["prob_x"] == pytest.approx(ref["prob_x"], abs=1e-5)

    # Raw slides, sharded: each shard tiles, embeds and predicts only its own slides; a re-run skips them all.
    out = tmp_path / "p3"
    fast = PredictConfig(heatmaps=False, device="cpu")
    (slides / "broken.svs").write_bytes(cmu_slide.read_bytes()[:5000])  # truncated: fails alone
    first = predict_slides(checkpoint, [slides], out, fast, shard=Shard(0, 2))
    # Sorted ids a, b, broken, c, d dealt round-robin: shard 0 gets a, broken, d.
    assert {r.slide_id: r.status for r in first.records} == {"a": "ok", "broken": "failed", "d": "ok"}
    assert sorted(p.name for p in (out / "stores").glob("*.zarr")) == ["a.zarr", "d.zarr"]
    assert [r["slide_id"] for r in first.rows] == ["a", "d"]
    second = predict_slides(checkpoint, [slides], out, fast, shard=Shard(1, 2))
    assert {r.slide_id: r.status for r in second.records} == {"b": "ok", "c": "ok"}
    assert _predicted_ids(out) == ["a", "b", "c", "d"]
    again = predict_slides(checkpoint, [slides], out, fast)
    assert {r.slide_id: r.status for r in again.records} == {
        "a": "skipped",
        "b": "skipped",
        "broken": "failed",
        "c": "skipped",
        "d": "skipped",
    }

    # The same pixels give the same prediction; label and source say how each slide relates to the training run.
    def prediction(row: dict) -> dict:
        return {k: v for k, v in row.items() if k not in {"slide_id", "label", "source", "folds"}}

    assert [prediction(row) for row in again.rows] == [prediction(first.rows[0])] * 4
    assert [(r["slide_id"], r["label"]) for r in again.rows] == [("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")]
