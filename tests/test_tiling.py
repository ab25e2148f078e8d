"""The tile stage on real and generated slides: grid, tissue fractions, stores, resume, crashes, shards."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.slide_factory import GeneratedSlide, make_pyramid_slide
from wsi_pipeline import __version__
from wsi_pipeline.batch import Shard, read_manifest
from wsi_pipeline.config import config_to_dict, load_config
from wsi_pipeline.discovery import SlideEntry, discover_slides
from wsi_pipeline.errors import MissingMppError
from wsi_pipeline.slide import Slide
from wsi_pipeline.store import is_complete, list_stores, read_attrs, read_coords, store_path
from wsi_pipeline.tiling import TileConfig, grid_positions, select_tiles, tile_slide, tile_slides, tissue_fractions

ROOT = Path(__file__).resolve().parents[1]


def _read_fraction(store: Path, name: str = "tissue_fraction") -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(str(store), mode="r")[name][...])


# --------------------------------------------------------------------------------------------- pure functions
def test_grid_positions_drop_and_pad() -> None:
    np.testing.assert_array_equal(grid_positions(1000, 224, 224, "drop"), [0, 224, 448, 672])
    pad = grid_positions(1000, 224, 224, "pad")
    np.testing.assert_array_equal(pad, [0, 224, 448, 672, 896])  # the last tile crosses the edge
    assert len(grid_positions(100, 224, 224, "drop")) == 0 and len(grid_positions(100, 224, 224, "pad")) == 1
    # A fractional level-0 step does not drift: starts are rounded multiples.
    np.testing.assert_array_equal(grid_positions(1000, 224.45, 224.45), [0, 224, 449, 673])
    np.testing.assert_array_equal(grid_positions(1000, 224, 112)[:3], [0, 112, 224])


def test_tissue_fractions_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    mask = cv2.resize(rng.random((12, 16)), (160, 120), interpolation=cv2.INTER_NEAREST) > 0.5
    scale = (10.0, 10.0)  # level-0 px per mask px: the slide is 1600 x 1200
    xs, ys = grid_positions(1600, 137, 100, "pad"), grid_positions(1200, 137, 100, "pad")
    fast = tissue_fractions(mask, xs, ys, 137, scale)
    full = np.repeat(np.repeat(mask, 10, axis=0), 10, axis=1)
    padded = np.zeros((1400, 1800), dtype=bool)
    padded[:1200, :1600] = full
    brute = np.array([[padded[y : y + 137, x : x + 137].mean() for x in xs] for y in ys])
    np.testing.assert_allclose(fast, brute, atol=1e-9)


def test_select_tiles_row_major_and_seeded_subset() -> None:
    fractions = np.array([[0.9, 0.1, 0.6], [1.0, 0.5, 0.0]])
    xs, ys = np.array([0, 100, 200]), np.array([0, 100])
    coords, kept = select_tiles(fractions, xs, ys, 0.5)
    np.testing.assert_array_equal(coords, [[0, 0], [200, 0], [0, 100], [100, 100]])
    np.testing.assert_allclose(kept, [0.9, 0.6, 1.0, 0.5])
    sub1, _ = select_tiles(fractions, xs, ys, 0.5, max_tiles=2, seed=3)
    sub2, _ = select_tiles(fractions, xs, ys, 0.5, max_tiles=2, seed=3)
    np.testing.assert_array_equal(sub1, sub2)
    assert len(sub1) == 2 and (np.lexsort(sub1.T) == np.arange(2)).all()  # still row-major


def test_config_yaml_mirrors_defaults() -> None:
    assert load_config(TileConfig, "tile", ROOT / "configs" / "tile.yaml") == TileConfig()
    for preset in sorted((ROOT / "configs" / "presets").glob("*.yaml")):
        load_config(TileConfig, "tile", preset)  # every preset is valid (other stages' sections are ignored)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="min_tissue"):
        TileConfig(min_tissue=1.5)
    with pytest.raises(ValueError, match="edge"):
        TileConfig(edge="wrap")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- real slides
def test_real_slide_tiles_lie_on_tissue(cmu_slide: Path, tmp_path: Path) -> None:
    store = tile_slide(Slide(cmu_slide), tmp_path, config=TileConfig(target_mpp=0.5, tile_size=224))
    attrs = read_attrs(store)
    coords = read_coords(store)
    # 2220 x 2967 px at 0.499 um/px is 117 grid cells of 224 px; about a third of the region is tissue.
    assert 20 <= len(coords) <= 80
    tiling = attrs["tiling"]
    assert tiling["read_level"] == 0 and tiling["read_size"] == 224 and tiling["n_tiles"] == len(coords)
    with Slide(cmu_slide) as slide:
        size = tiling["read_size"]
        tissue = []
        for x, y in coords:
            hsv = cv2.cvtColor(slide.read_region((x, y), tiling["read_level"], (size, size)), cv2.COLOR_RGB2HSV)
            tissue.append((hsv[..., 1] > 30).mean())
        # Background of this slide, read the same way: the grid cells the mask left out entirely.
        xs, ys = grid_positions(2220, size, size), grid_positions(2967, size, size)
        kept = {tuple(c) for c in coords.tolist()}
        background = []
        for y in ys:
            for x in xs:
                if (x, y) not in kept:
                    hsv = cv2.cvtColor(slide.read_region((x, y), 0, (size, size)), cv2.COLOR_RGB2HSV)
                    background.append((hsv[..., 1] > 30).mean())
    tissue = np.array(tissue)
    assert tissue.min() > 0.25, "a kept tile is mostly glass"
    assert np.median(tissue) > 0.7
    assert np.median(background) < 0.3 < np.median(tissue)
    assert (tmp_path / "qc" / "CMU-1-Small-Region.jpg").is_file()
    assert (tmp_path / "geojson" / "CMU-1-Small-Region.geojson").is_file()


def test_real_batch_records_bad_slides_and_goes_on(slides_dir: Path, tmp_path: Path) -> None:
    result = tile_slides(discover_slides([slides_dir]), tmp_path)
    status = {r.slide_id: r for r in result.records}
    assert status["CMU-1-Small-Region"].status == "ok" and status["CMU-1-Small-Region"].n_tiles > 20
    assert "does not recognise" in status["broken"].error
    assert "cannot open" in status["unopenable"].error and "52479" in status["unopenable"].error
    assert "cannot decode" in status["unreadable"].error
    assert "--slide-mpp" in status["boxes_tiff"].error  # 72-dpi default is not a scan resolution
    for slide_id in ("broken", "unopenable", "unreadable", "boxes_tiff"):
        assert status[slide_id].status == "failed"
    assert list_stores(tmp_path) == [store_path(tmp_path, "CMU-1-Small-Region")]
    with result.manifest.open() as handle:
        rows = {row["slide_id"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(status) and rows["broken"]["status"] == "failed" and rows["broken"]["error"]


# --------------------------------------------------------------------------------------------- generated slides
@pytest.fixture(scope="module")
def slide_025(tmp_path_factory: pytest.TempPathFactory) -> GeneratedSlide:
    return make_pyramid_slide(tmp_path_factory.mktemp("s") / "s025.svs", width=4000, height=3000, mpp=0.25)


def test_tiles_at_05_from_025_slide_have_right_physical_size(slide_025: GeneratedSlide, tmp_path: Path) -> None:
    store = tile_slide(Slide(slide_025.path), tmp_path, config=TileConfig(target_mpp=0.5, tile_size=224))
    attrs = read_attrs(store)
    t = attrs["tiling"]
    assert t["tile_size_level0"] == pytest.approx(448) and t["read_level"] == 0 and t["read_size"] == 448
    downsample = attrs["slide"]["level_downsamples"][t["read_level"]]
    assert t["read_size"] * downsample * attrs["slide"]["mpp"] == pytest.approx(224 * 0.5)  # 112 um per side
    coords = read_coords(store)
    fractions = _read_fraction(store)
    assert (fractions >= 0.5).all()
    # Each kept tile really is mostly inside the known tissue (the mask is coarse: allow its blur at the border).
    truth = np.array([slide_025.tissue_fraction(x, y, 448) for x, y in coords])
    assert truth.min() >= 0.3 and np.mean(truth) > 0.9
    # Row-major order.
    assert (np.lexsort((coords[:, 0], coords[:, 1])) == np.arange(len(coords))).all()
    # Nearly every grid cell fully inside tissue is kept.
    xs, ys = grid_positions(4000, 448, 448), grid_positions(3000, 448, 448)
    inside = sum(slide_025.tissue_fraction(x, y, 448) == 1.0 for y in ys for x in xs)
    assert len(coords) >= 0.9 * inside


def test_read_level_uses_pyramid(tmp_path: Path) -> None:
    made = make_pyramid_slide(tmp_path / "f2.svs", width=4000, height=3000, mpp=0.25, level_factor=2, levels=3)
    store = tile_slide(Slide(made.path), tmp_path / "out", config=TileConfig(target_mpp=0.5, tile_size=224))
    tiling = read_attrs(store)["tiling"]
    assert tiling["read_level"] == 1 and tiling["read_size"] == 224 and tiling["read_mpp"] == pytest.approx(0.5)
    with Slide(made.path) as slide:  # what the embed stage does
        x, y = read_coords(store)[0]
        tile = slide.read_region((x, y), tiling["read_level"], (tiling["read_size"],) * 2)
    assert tile.shape == (224, 224, 3)


def test_store_attrs_follow_layout(slide_025: GeneratedSlide, tmp_path: Path) -> None:
    config = TileConfig(tile_size=256, stride=128, min_tissue=0.4)
    store = tile_slide(Slide(slide_025.path, slide_id="abc"), tmp_path, config=config)
    assert store == store_path(tmp_path, "abc") and is_complete(store)
    attrs = read_attrs(store)
    assert attrs["wsi_pipeline"]["package_version"] == __version__ and attrs["wsi_pipeline"]["complete"]
    assert attrs["slide"]["vendor"] == "aperio" and attrs["slide"]["mpp"] == pytest.approx(0.25)
    assert attrs["slide"]["width"] == 4000 and attrs["slide"]["path"] == str(slide_025.path.resolve())
    for key in ("target_mpp", "tile_size", "stride", "tile_size_level0", "read_level", "read_size", "min_tissue"):
        assert key in attrs["tiling"]
    assert attrs["tiling"]["stride"] == 128 and attrs["tiling"]["edge"] == "drop"
    assert attrs["mask"]["method"] == "otsu" and attrs["mask"]["mpp"] == pytest.approx(8.0, rel=0.05)
    assert attrs["config"] == config_to_dict(config)
    assert len(read_coords(store)) == attrs["tiling"]["n_tiles"] == len(_read_fraction(store))


def test_qc_and_geojson_come_from_the_mask_picture_in_memory(
    slide_025: GeneratedSlide, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The slide's pixels are read once, for the mask; the QC picture is drawn from that picture (no thumbnail read).
    reads: list[int] = []
    original = Slide.read_region

    def counting(self, location, level, size):  # noqa: ANN001
        reads.append(size[0] * size[1])
        return original(self, location, level, size)

    monkeypatch.setattr(Slide, "read_region", counting)
    monkeypatch.setattr(Slide, "thumbnail", lambda *a, **k: pytest.fail("QC must not read the slide again"))
    config = TileConfig()
    config.qc.thumbnail_size = 200  # the 8 um/px mask picture of this 1 x 0.75 mm slide is 125 x 94 px
    store = tile_slide(Slide(slide_025.path), tmp_path, config=config)
    mask_shape = read_attrs(store)["mask"]["shape"]
    assert reads == [1000 * 750]  # one read: level 1 (1/4 downsample, 1 um/px), shrunk to the 8 um/px mask
    qc = cv2.imread(str(tmp_path / "qc" / "s025.jpg"))
    assert qc.shape[:2] == (28 + mask_shape[0], 3 * mask_shape[1] + 12)  # header + three panels of the picture
    geo = json.loads((tmp_path / "geojson" / "s025.geojson").read_text())
    outlines = [np.array(f["geometry"]["coordinates"][0], dtype=np.float32) for f in geo["features"]]
    big = [b for b in slide_025.tissue_boxes if (b[2] - b[0]) * (b[3] - b[1]) * 0.25**2 >= 50_000]  # min area
    assert len(big) == 2
    for x0, y0, x1, y1 in big:  # every known piece of tissue above the size limit is outlined (level-0 pixels)
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        assert any(cv2.pointPolygonTest(ring, centre, False) > 0 for ring in outlines)
    assert not any(cv2.pointPolygonTest(ring, (100.0, 100.0), False) > 0 for ring in outlines)  # glass is not


def test_qc_tiles_panel_matches_drawing_each_tile(tmp_path: Path) -> None:
    # The kept-tiles panel is drawn for all tiles at once; it must equal drawing them one by one with OpenCV.
    from wsi_pipeline.tiling import compute_tile_grid, render_qc

    made = make_pyramid_slide(
        tmp_path / "e.svs", width=3100, height=2000, mpp=0.5, tissue_boxes=[(1000, 200, 3100, 1800)]
    )
    with Slide(made.path) as slide:
        grid = compute_tile_grid(slide, TileConfig(tile_size=128, stride=96, edge="pad"))  # overlapping, off the edge
        thumb = slide.thumbnail(800)[0]
        picture = render_qc(thumb, grid, slide.dimensions)
    th, tw = thumb.shape[:2]
    sx, sy, size0 = tw / 3100, th / 2000, grid.tiling["tile_size_level0"]
    expected_fill, expected = thumb.copy(), None
    boxes = []
    for x, y in grid.coords:
        a, b = int(np.floor(x * sx)), int(np.floor(y * sy))
        c, d = max(a + 1, int(np.ceil((x + size0) * sx)) - 1), max(b + 1, int(np.ceil((y + size0) * sy)) - 1)
        boxes.append((a, b, c, d))
        cv2.rectangle(expected_fill, (a, b), (c, d), (20, 90, 230), -1)
    expected = cv2.addWeighted(thumb, 0.7, expected_fill, 0.3, 0)
    for a, b, c, d in boxes:
        cv2.rectangle(expected, (a, b), (c, d), (20, 90, 230), 1)
    assert np.array_equal(picture[28:, 2 * (tw + 6) :], expected)


def test_overlap_and_edge_policies(tmp_path: Path) -> None:
    # Tissue touching the right edge: "pad" keeps tiles crossing it (here 188 of their 224 px are inside the slide,
    # the rest reads as glass and counts as background), "drop" never does.
    made = make_pyramid_slide(
        tmp_path / "edge.svs", width=3100, height=2000, mpp=0.5, tissue_boxes=[(1000, 200, 3100, 1800)]
    )
    drop = read_coords(tile_slide(Slide(made.path), tmp_path / "drop", config=TileConfig(edge="drop")))
    pad = read_coords(tile_slide(Slide(made.path), tmp_path / "pad", config=TileConfig(edge="pad")))
    assert (drop[:, 0] + 224 <= 3100).all()
    assert (pad[:, 0] + 224 > 3100).any() and len(pad) > len(drop)
    half = read_coords(tile_slide(Slide(made.path), tmp_path / "half", config=TileConfig(stride=112)))
    assert 3.2 * len(drop) < len(half) < 4.5 * len(drop)


def test_no_mpp_is_refused_unless_overridden(tmp_path: Path) -> None:
    made = make_pyramid_slide(tmp_path / "nompp.tiff", width=3000, height=2000, mpp=None, vendor="generic")
    with pytest.raises(MissingMppError, match="--slide-mpp"):
        tile_slide(Slide(made.path), tmp_path / "out")
    result = tile_slides([SlideEntry("nompp", made.path)], tmp_path / "out")
    assert result.records[0].status == "failed" and "--slide-mpp" in result.records[0].error
    assert not store_path(tmp_path / "out", "nompp").exists()
    result = tile_slides([SlideEntry("nompp", made.path, mpp=0.5)], tmp_path / "out")
    assert result.records[0].status == "ok"
    assert read_attrs(store_path(tmp_path / "out", "nompp"))["slide"]["mpp_source"] == "override"


@pytest.fixture(scope="module")
def few_slides(tmp_path_factory: pytest.TempPathFactory) -> list[SlideEntry]:
    folder = tmp_path_factory.mktemp("few")
    for i in range(5):
        make_pyramid_slide(folder / f"s{i}.svs", width=1600, height=1200, mpp=0.5, seed=i)
    return discover_slides([folder])


def test_resume_skips_finished_and_refuses_other_settings(few_slides: list[SlideEntry], tmp_path: Path) -> None:
    first = tile_slides(few_slides[:3], tmp_path)
    assert [r.status for r in first.records] == ["ok"] * 3
    stamp = {p: p.joinpath("zarr.json").stat().st_mtime_ns for p in list_stores(tmp_path)}
    second = tile_slides(few_slides, tmp_path)
    assert [r.status for r in second.records] == ["skipped"] * 3 + ["ok"] * 2
    assert all(p.joinpath("zarr.json").stat().st_mtime_ns == t for p, t in stamp.items())  # untouched
    other = tile_slides(few_slides, tmp_path, config=TileConfig(tile_size=256))
    assert all(r.status == "failed" and "made with other settings" in r.error for r in other.records)
    assert "--overwrite" in other.records[0].error
    redone = tile_slides(few_slides[:1], tmp_path, config=TileConfig(tile_size=256), overwrite=True)
    assert redone.records[0].status == "ok"
    assert read_attrs(store_path(tmp_path, few_slides[0].slide_id))["tiling"]["tile_size"] == 256
    # QC changes never invalidate a store.
    qc_only = TileConfig(tile_size=256)
    qc_only.qc.thumbnail_size = 512
    assert tile_slides(few_slides[:1], tmp_path, config=qc_only).records[0].status == "skipped"


_CRASH = """
import os, sys
from pathlib import Path
from wsi_pipeline.discovery import SlideEntry
from wsi_pipeline.tiling import tile_slides

real_replace = os.replace

def killed(src, dst):  # the process dies just before the store would be renamed into place
    if str(dst).endswith(".zarr"):
        os._exit(9)
    real_replace(src, dst)

os.replace = killed
tile_slides([SlideEntry("victim", Path(sys.argv[1]))], Path(sys.argv[2]))
"""


def test_crash_mid_slide_leaves_no_finished_looking_store(few_slides: list[SlideEntry], tmp_path: Path) -> None:
    entry = few_slides[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _CRASH, str(entry.path), str(tmp_path)], env=env, timeout=120)
    assert proc.returncode == 9
    final = store_path(tmp_path, "victim")
    assert not final.exists() and list_stores(tmp_path) == []
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".victim.zarr.tmp-")]
    assert leftovers, "the killed run should have left its temporary store"
    assert all(r.status != "ok" for r in read_manifest(tmp_path, "tile"))
    # The next run redoes the slide and clears the dead run's temporary.
    result = tile_slides([SlideEntry("victim", entry.path)], tmp_path)
    assert result.records[0].status == "ok" and is_complete(final)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".victim.zarr.tmp-")]


def test_exception_mid_slide_leaves_nothing(few_slides: list[SlideEntry], tmp_path: Path, monkeypatch) -> None:
    import wsi_pipeline.store as store

    write_array = store._write_v3_array

    def broken(path, array):  # the coordinates are written, then the disk fills
        if path.name == store.TISSUE_FRACTION:
            raise OSError("disk full")
        write_array(path, array)

    monkeypatch.setattr(store, "_write_v3_array", broken)
    result = tile_slides(few_slides[:2], tmp_path)
    assert [r.status for r in result.records] == ["failed", "failed"] and "disk full" in result.records[0].error
    assert not any(p.name.endswith(".zarr") or ".zarr.tmp-" in p.name for p in tmp_path.iterdir())


def test_two_shards_cover_every_slide_once(few_slides: list[SlideEntry], tmp_path: Path) -> None:
    shards = [tile_slides(few_slides, tmp_path, shard=Shard(i, 2)) for i in range(2)]
    ids = [[r.slide_id for r in result.records] for result in shards]
    assert sorted(ids[0] + ids[1]) == sorted(e.slide_id for e in few_slides)
    assert not set(ids[0]) & set(ids[1])
    assert shards[0].manifest != shards[1].manifest  # shards never write the same file
    assert {r.slide_id for r in read_manifest(tmp_path, "tile")} == {e.slide_id for e in few_slides}
    assert len(list_stores(tmp_path)) == len(few_slides)


def test_shared_fixtures_give_a_finished_store(generated_slide: GeneratedSlide, tiled_store: Path) -> None:
    # conftest's `generated_slide`/`tiled_store` feed the embed tests: keep them working.
    assert is_complete(tiled_store) and read_attrs(tiled_store)["slide"]["path"] == str(generated_slide.path.resolve())
    assert len(read_coords(tiled_store)) > 20


def test_tile_slides_accepts_paths(few_slides: list[SlideEntry], tmp_path: Path) -> None:
    folder = few_slides[0].path.parent
    result = tile_slides(folder, tmp_path, config=TileConfig(max_tiles=5))
    assert [r.slide_id for r in result.records] == [e.slide_id for e in few_slides]
    assert all(len(read_coords(p)) <= 5 for p in list_stores(tmp_path))
