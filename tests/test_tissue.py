"""Tissue masks on realistic generated slides (known truth) and on pictures with ink; GeoJSON outlines."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.slide_factory import he_texture, make_pyramid_slide
from wsi_pipeline.slide import Slide
from wsi_pipeline.tissue import TissueMaskConfig, mask_to_geojson, tissue_mask, tissue_mask_with_info, write_geojson


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize(
    ("mpp", "vendor", "size"),
    [(0.25, "aperio", (4000, 3000)), (0.5, "generic", (3000, 2400)), (1.0, "aperio", (2000, 1500))],
)
def test_mask_recovers_known_tissue(tmp_path: Path, mpp: float, vendor: str, size: tuple[int, int]) -> None:
    made = make_pyramid_slide(tmp_path / "s.tiff", width=size[0], height=size[1], mpp=mpp, vendor=vendor)
    with Slide(made.path) as slide:
        overview, scale = slide.read_at_mpp(8.0)
        mask = tissue_mask(overview, slide.mpp * scale)
    truth = made.mask(shape=mask.shape)
    assert _iou(mask, truth) >= 0.9


def test_mask_on_real_slide_is_plausible(cmu_slide: Path) -> None:
    with Slide(cmu_slide) as slide:
        overview, scale = slide.read_at_mpp(8.0)
        mask, info = tissue_mask_with_info(overview, slide.mpp * scale)
    hsv = cv2.cvtColor(overview, cv2.COLOR_RGB2HSV)
    # CMU-1's region is about a third tissue; the mask must sit on coloured pixels, not on glass.
    assert 0.15 < mask.mean() < 0.6
    assert np.median(hsv[..., 1][mask]) > 3 * np.median(hsv[..., 1][~mask])
    assert info["threshold"] >= TissueMaskConfig().min_threshold


def test_blank_glass_has_no_tissue() -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(242 + rng.normal(0, 3, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(glass, 8.0).any()


def _picture_with_tissue(size: int = 300) -> tuple[np.ndarray, np.ndarray]:
    texture, _ = he_texture("auto", 1024, 0)
    img = np.full((size, size, 3), 242, dtype=np.uint8)
    truth = np.zeros((size, size), dtype=bool)
    truth[60:240, 50:200] = True
    small = cv2.resize(texture, (size, size), interpolation=cv2.INTER_AREA)
    img[truth] = small[truth]
    return img, truth


def test_areas_are_physical() -> None:
    img, truth = _picture_with_tissue()
    speck = img.copy()
    speck[20:26, 260:266] = (120, 60, 150)  # 6x6 px of debris
    # At 8 um/px the speck is 2304 um^2: kept when the minimum area is below that, dropped above it.
    kept = tissue_mask(speck, 8.0, TissueMaskConfig(min_tissue_area_um2=1000, close_um=0))
    dropped = tissue_mask(speck, 8.0, TissueMaskConfig(min_tissue_area_um2=5000, close_um=0))
    assert kept[23, 263] and not dropped[23, 263]
    assert _iou(dropped, truth) > 0.9


def test_small_holes_filled_big_holes_kept() -> None:
    img, truth = _picture_with_tissue()
    img[100:106, 100:106] = 242  # small hole (6x6 px = 2304 um^2 at 8 um/px)
    img[150:200, 100:150] = 242  # big hole (50x50 px = 160000 um^2)
    mask = tissue_mask(img, 8.0, TissueMaskConfig(min_hole_area_um2=20_000, close_um=0, median_um=24))
    assert mask[103, 103]
    assert not mask[175, 125]


def test_fixed_threshold_method() -> None:
    img, truth = _picture_with_tissue()
    mask = tissue_mask(img, 8.0, TissueMaskConfig(method="fixed", threshold=25))
    assert _iou(mask, truth) > 0.9
    nothing = tissue_mask(img, 8.0, TissueMaskConfig(method="fixed", threshold=255))
    assert not nothing.any()


def test_pen_filter_removes_marker_ink() -> None:
    img, truth = _picture_with_tissue()
    cv2.line(img, (10, 280), (290, 270), (40, 90, 190), 12)  # blue marker stroke across glass
    cv2.circle(img, (260, 60), 25, (40, 160, 70), -1)  # green dot
    plain = tissue_mask(img, 8.0)
    filtered = tissue_mask(img, 8.0, TissueMaskConfig(pen_filter=True))
    assert plain[276, 150] and plain[60, 260]  # ink looks like tissue to the saturation threshold
    assert not filtered[276, 150] and not filtered[60, 260]
    assert _iou(filtered, truth) > 0.9


def test_config_validates_values() -> None:
    with pytest.raises(ValueError, match="method"):
        TissueMaskConfig(method="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="saturation"):
        TissueMaskConfig(threshold=300)


def test_geojson_polygons_with_holes_in_level0_pixels(tmp_path: Path) -> None:
    mask = np.zeros((100, 120), dtype=bool)
    mask[10:60, 20:80] = True
    mask[25:40, 40:60] = False  # a hole
    mask[70:90, 90:110] = True  # second piece
    collection = mask_to_geojson(mask, (16.0, 16.0))
    features = collection["features"]
    assert collection["type"] == "FeatureCollection" and len(features) == 2
    for feature in features:
        assert feature["properties"]["objectType"] == "annotation"
        assert feature["properties"]["classification"]["name"] == "Tissue"
        assert feature["geometry"]["type"] == "Polygon"
        for ring in feature["geometry"]["coordinates"]:
            assert ring[0] == ring[-1] and len(ring) >= 4
    rings = sorted((f["geometry"]["coordinates"] for f in features), key=len, reverse=True)[0]
    assert len(rings) == 2  # outer boundary + hole
    outer = np.array(rings[0])
    # Level-0 extent of the piece: x 20..80, y 10..60 mask px times 16.
    assert outer[:, 0].min() == pytest.approx(20 * 16, abs=16) and outer[:, 0].max() == pytest.approx(80 * 16, abs=16)
    assert outer[:, 1].min() == pytest.approx(10 * 16, abs=16) and outer[:, 1].max() == pytest.approx(60 * 16, abs=16)
    path = write_geojson(tmp_path / "g" / "s.geojson", collection)
    assert json.loads(path.read_text()) == collection
