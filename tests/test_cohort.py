"""The generated lesion cohort: real pixels where its GeoJSON says, mpp OpenSlide reads, the same bytes from the same
seed, clear errors for bad sources, and the whole chain (tile -> embed -> annotate -> train -> predict) on it."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest

from tests.conftest import CMU_SMALL, ROOT, SLIDES, WEIGHTS, need_real_data
from tests.data import data_root
from tests.test_cli import run_cli

LESION_SOURCE = data_root() / "images" / "tiatoolbox-target_image.png"
EFFNET = WEIGHTS / "efficientnet-lite0-57934424.pth"


def _config(**overrides):
    from wsi_pipeline.cohort import CohortConfig

    need_real_data(CMU_SMALL)
    need_real_data(LESION_SOURCE)
    settings = {
        "slides": 3,
        "positive_fraction": 0.67,
        "width": 1536,
        "height": 1152,
        "pieces": (2, 3),
        "lesions": (1, 2),
        "lesion_share": (0.06, 0.12),
        "background": str(CMU_SMALL),
        "lesion": str(LESION_SOURCE),
    }
    return CohortConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory):
    from wsi_pipeline.cohort import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort") / "a", _config())


def _lab_mean(pixels: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(pixels.reshape(-1, 1, 3).astype(np.uint8), cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(0)


def test_openslide_reads_the_slides_with_their_mpp_and_labels_match_the_record(small_cohort) -> None:
    rows = list(csv.DictReader(small_cohort.labels_csv.open()))
    assert [r["label"] for r in rows].count("tumor") == 2 and len(rows) == 3
    for row in rows:
        with openslide.OpenSlide(small_cohort.slides_dir / f"{row['slide_id']}.tiff") as slide:
            assert slide.properties["openslide.vendor"] == "aperio"
            assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
            assert slide.dimensions == (1536, 1152) and slide.level_count >= 2
        has_geojson = (small_cohort.annotations_dir / f"{row['slide_id']}.geojson").is_file()
        assert has_geojson == (row["label"] == "tumor")
    record = json.loads((small_cohort.out_dir / "cohort.json").read_text())
    assert record["complete"] and record["sources"]["lesion"]["mpp"] == 0.25  # known by its sha256
    for slide in record["slides"]:
        if slide["label"] == "tumor":
            assert 0.03 < slide["lesion_share"] < 0.2 and 1 <= len(slide["lesions"]) <= 2


def _best_match(patch: np.ndarray, source: np.ndarray) -> float:
    """The highest normalised correlation of ``patch`` anywhere in ``source``, under its 8 turns and flips."""
    best = -1.0
    for flipped in (source, source[:, ::-1]):
        for k in range(4):
            candidate = np.ascontiguousarray(np.rot90(flipped, k))
            scores = cv2.matchTemplate(candidate, patch, cv2.TM_CCOEFF_NORMED)
            best = max(best, float(scores.max()))
    return best


def test_lesions_are_where_the_geojson_says(small_cohort) -> None:
    """Pixel check: the middle of each annotated outline is a piece of the tumour source (found in it by template
    matching, up to a turn or flip and JPEG), and the tissue just outside it is not."""
    from wsi_pipeline.cohort import TissueSource

    lesion_src = TissueSource(LESION_SOURCE, 0.5, mpp=0.25, role="lesion", min_side=64)
    source = cv2.cvtColor(lesion_src.read(0, 0, *lesion_src.out_size), cv2.COLOR_RGB2GRAY)
    checked, half = 0, 20
    for geojson in small_cohort.annotations_dir.glob("*.geojson"):
        with openslide.OpenSlide(small_cohort.slides_dir / f"{geojson.stem}.tiff") as slide:
            gray = cv2.cvtColor(np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB")),
                                cv2.COLOR_RGB2GRAY)  # fmt: skip
        tissue = gray < 200
        for feature in json.loads(geojson.read_text())["features"]:
            inside = np.zeros(gray.shape, np.uint8)
            cv2.fillPoly(inside, [np.round(np.array(feature["geometry"]["coordinates"][0])).astype(np.int32)], 1)
            depth = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
            if depth.max() < half + 4:
                continue  # a sliver: no patch fits inside with a margin
            y, x = np.unravel_index(int(depth.argmax()), depth.shape)
            assert _best_match(gray[y - half : y + half, x - half : x + half], source) > 0.85
            # A patch of tissue well outside every outline does not come from the tumour source.
            away = (cv2.dilate(inside, np.ones((121, 121), np.uint8)) == 0) & tissue
            depth_out = cv2.distanceTransform((away * 255).astype(np.uint8), cv2.DIST_L2, 5)
            y, x = np.unravel_index(int(depth_out.argmax()), depth_out.shape)
            assert _best_match(gray[y - half : y + half, x - half : x + half], source) < 0.6
            checked += 1
    assert checked >= 2


def test_same_seed_same_bytes_rerun_is_up_to_date_and_other_settings_are_refused(tmp_path: Path) -> None:
    from wsi_pipeline.cohort import make_cohort
    from wsi_pipeline.errors import CohortError

    def digest(folder: Path) -> dict[str, str]:
        files = [*sorted((folder / "slides").iterdir()), *sorted((folder / "annotations").iterdir())]
        files.append(folder / "labels.csv")
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}

    config = _config(slides=2, positive_fraction=0.5, width=1024, height=768)
    first, second = make_cohort(tmp_path / "a", config), make_cohort(tmp_path / "b", config)
    assert first.made == second.made == 2
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert make_cohort(tmp_path / "a", config).made == 0  # up to date
    other = _config(slides=2, positive_fraction=0.5, width=1024, height=768, seed=1)
    with pytest.raises(CohortError, match=r"seed: 0 -> 1.*--overwrite"):
        make_cohort(tmp_path / "a", other)
    assert make_cohort(tmp_path / "a", other, overwrite=True).made == 2
    assert digest(tmp_path / "a") != digest(tmp_path / "b")


def test_bad_sources_are_one_line_errors_through_the_cli(tmp_path: Path) -> None:
    need_real_data(LESION_SOURCE)
    white = tmp_path / "white.png"
    cv2.imwrite(str(white), np.full((800, 800, 3), 245, np.uint8))
    cases = [
        (["--background", str(tmp_path / "missing.svs")], "missing.svs: background source not found"),
        (["--background", str(SLIDES / "small.svs")], "smaller than the 512 px needed"),
        (["--background", str(white), "--background-mpp", "0.5"], "no tissue found in the background source"),
        (["--lesion", str(white)], "states no resolution; pass --lesion-mpp"),
    ]
    for args, message in cases:
        full = ["--background", str(CMU_SMALL), "--lesion", str(LESION_SOURCE), *args]
        done = run_cli("lesion-cohort", "--out", tmp_path / "out", "--slides", "1", *full)
        assert done.returncode == 1, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_defaults_file_mirrors_the_config() -> None:
    from wsi_pipeline.cohort import CohortConfig
    from wsi_pipeline.config import load_config

    assert load_config(CohortConfig, "cohort", ROOT / "configs" / "cohort.yaml") == CohortConfig()


@pytest.mark.slow
def test_tile_embed_annotate_train_predict_find_easy_lesions(tmp_path: Path) -> None:
    """The product's job on slide pixels: a cohort with large lesions, real EfficientNet-Lite0 features, and the
    attention of a trained ABMIL and of the shipped ASMIL ranks the annotated lesion tiles above the others
    (loose bounds, seed 0)."""
    from wsi_pipeline.cohort import make_cohort

    need_real_data(EFFNET)
    cohort = make_cohort(
        tmp_path / "cohort",
        _config(slides=16, positive_fraction=0.5, width=2048, height=1536, lesion_share=(0.15, 0.25)),
    )
    stores, runs = tmp_path / "stores", tmp_path / "runs"

    def cli(*args: str) -> str:
        done = run_cli(*args)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout + done.stderr

    cli("tile", str(cohort.slides_dir), "--out", str(stores))
    cli("embed", str(stores), "-e", "efficientnet_lite0", "-w", str(EFFNET), "--device", "cpu")
    cli("annotate", str(stores), "--annotations", str(cohort.annotations_dir), "--classes", "tumor")
    for model in ("abmil", "asmil"):  # 2-fold CV: every slide is predicted by the fold that never trained on it
        cli("train", str(stores), "-l", str(cohort.labels_csv), "-e", "efficientnet_lite0", "-o", str(runs),
            "-m", model, "--folds", "2", "--set", "epochs=10", "--set", "lr=5e-4", "--set", "threads=1",
            "--set", "plots=false")  # fmt: skip
        run = next(runs.glob(f"{model}_*"))
        # The heatmaps (lesions outlined) and the report are drawn once, for ABMIL: they are the same for any model.
        drawings = [] if model == "abmil" else ["--no-heatmaps", "--no-report"]
        out = cli("predict", str(run), str(stores), "--out", str(tmp_path / f"pred_{model}"), *drawings)
        assert "attention vs annotations" in out
        with (tmp_path / f"pred_{model}" / "predictions.csv").open() as fh:
            scored = [r for r in csv.DictReader(fh) if r["loc_auc"]]
        assert len(scored) == 8  # every positive slide has annotated lesion tiles
        assert np.mean([float(r["loc_auc"]) for r in scored]) > 0.75, model
    assert len(list((tmp_path / "pred_abmil" / "heatmaps").glob("*.png"))) == 16
    assert (tmp_path / "pred_abmil" / "report" / "index.html").is_file()
