"""Predict: train -> predict round trip on bags from a real slide, heatmaps, scores, mismatch errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from tests.conftest import CMU_SMALL
from wsi_pipeline.errors import CheckpointError, StoreMismatchError
from wsi_pipeline.predict import PredictConfig, predict_slides, scale_scores
from wsi_pipeline.slide import Slide
from wsi_pipeline.store import FeatureWriter, read_scores, store_path, write_tile_store
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
    bands = np.array_split(np.arange(len(grid)), n_bands)
    stores = out / "stores"
    rows = ["slide_id,label"]
    for i, rows_i in enumerate(bands):
        sid = f"cmu_band{i}"
        attrs = {
            "slide": {"id": sid, "path": str(slide_path), "width": width, "height": height},
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An ASMIL checkpoint trained on 6 stores of real tiles of CMU-1-Small-Region.svs (made once per module)."""
    if not CMU_SMALL.is_file():
        pytest.skip(f"real data not available: {CMU_SMALL}")
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
    assert set(rows[0]) == {"slide_id", "predicted_class", "prob_lower", "prob_upper", "n_tiles"}
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


def test_missing_slide_file_skips_heatmap_but_predicts(trained: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, stores = trained
    moved = tmp_path / "moved"
    shutil.copytree(stores / "cmu_band0.zarr", moved / "cmu_band0.zarr")
    group = zarr.open_group(str(moved / "cmu_band0.zarr"), mode="a")
    group.attrs["slide"] = {**group.attrs["slide"], "path": str(tmp_path / "gone.svs")}
    with pytest.warns(UserWarning, match="heatmaps skipped for 1 slide"):
        result = predict_slides(checkpoint, [moved / "cmu_band0.zarr"], tmp_path / "p", PredictConfig(device="cpu"))
    assert len(result.rows) == 1 and not (tmp_path / "p" / "heatmaps").exists()


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
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        predict_slides(bad, [stores], tmp_path / "p")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        predict_slides(tmp_path / "none.pt", [stores], tmp_path / "p")


def test_cli_predict(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from wsi_pipeline.cli import app

    checkpoint, stores = trained
    result = CliRunner().invoke(
        app, ["predict", str(checkpoint), str(stores), "-o", str(tmp_path / "cli"), "--no-heatmaps", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "predictions.csv").is_file() and not (tmp_path / "cli" / "heatmaps").exists()


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
    assert len(list((tmp_path / "p1" / "top_tiles" / cmu_slide.stem).glob("*.png"))) == 2
    made, ref = from_slide.rows[0], from_store.rows[0]
    assert made["n_tiles"] == ref["n_tiles"] and made["predicted_class"] == ref["predicted_class"]
    assert made["prob_x"] == pytest.approx(ref["prob_x"], abs=1e-5)
