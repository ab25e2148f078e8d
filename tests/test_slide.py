"""``Slide`` on the real test slides and on generated ones: opening, resolution, bounded reads, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.slide_factory import make_pyramid_slide
from wsi_pipeline.errors import MissingMppError, SlideOpenError, SlideReadError
from wsi_pipeline.slide import Slide, resolve_mpp
from wsi_pipeline.store import read_coords


def test_real_aperio_slide(cmu_slide: Path) -> None:
    with Slide(cmu_slide) as slide:
        assert slide.vendor == "aperio" and slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_info()[1] == "openslide.mpp-x"
        tile = slide.read_region((1000, 1000), 0, (224, 224))
        assert tile.shape == (224, 224, 3) and tile.dtype == np.uint8
        overview, scale = slide.read_at_mpp(8.0)
        assert scale * slide.mpp == pytest.approx(8.0, rel=0.02)
        assert overview.shape[:2] == pytest.approx((2967 / scale, 2220 / scale), abs=1)
        info = slide.info()
        assert info["id"] == "CMU-1-Small-Region" and info["mpp_x"] == info["mpp_y"] == pytest.approx(0.499)


@pytest.mark.parametrize("name", ["boxes.tiff", "small.svs", "boxes_0.dcm", "boxes_1.dcm"])
def test_small_real_slides_open(slides_dir: Path, name: str) -> None:
    with Slide(slides_dir / name) as slide:
        width, height = slide.dimensions
        assert slide.read_region((0, 0), slide.level_count - 1, (8, 8)).shape == (8, 8, 3)
        thumb, _ = slide.thumbnail(64)
        assert max(thumb.shape[:2]) <= 64 and width > 0 and height > 0


def test_dicom_pair_is_one_slide(slides_dir: Path) -> None:
    with Slide(slides_dir / "boxes_0.dcm") as a, Slide(slides_dir / "boxes_1.dcm") as b:
        assert a.vendor == b.vendor == "dicom"
        assert a.dimensions == b.dimensions and a.mpp == pytest.approx(b.mpp)


def test_boxes_tiff_72_dpi_is_not_a_resolution(slides_dir: Path) -> None:
    slide = Slide(slides_dir / "boxes.tiff")
    assert slide.level_count == 4
    with pytest.raises(MissingMppError, match="72-dpi.*--slide-mpp"):
        _ = slide.mpp
    assert Slide(slides_dir / "boxes.tiff", mpp=0.5).mpp == 0.5


@pytest.mark.parametrize(
    ("name", "error", "text"),
    [
        ("broken.svs", SlideOpenError, "does not recognise"),
        ("unopenable.tiff", SlideOpenError, "Unsupported TIFF compression"),
        ("missing.svs", SlideOpenError, "no such file"),
    ],
)
def test_bad_slides_raise_clear_errors(slides_dir: Path, name: str, error: type, text: str) -> None:
    with pytest.raises(error, match=text) as info:
        Slide(slides_dir / name).open()
    assert name in str(info.value) and "\n" not in str(info.value)


def test_unreadable_region_raises_read_error(slides_dir: Path) -> None:
    with Slide(slides_dir / "unreadable.svs") as slide, pytest.raises(SlideReadError, match="damaged"):
        slide.read_region((0, 0), 0, (16, 16))


def test_generated_slides_report_their_resolution(tmp_path: Path) -> None:
    aperio = make_pyramid_slide(tmp_path / "a.svs", width=2000, height=1500, mpp=0.25)
    generic = make_pyramid_slide(tmp_path / "g.tiff", width=2000, height=1500, mpp=0.5, vendor="generic")
    none = make_pyramid_slide(tmp_path / "n.tiff", width=2000, height=1500, mpp=None, vendor="generic")
    with Slide(aperio.path) as slide:
        assert slide.vendor == "aperio" and slide.mpp == pytest.approx(0.25)
        assert slide.level_count == 2 and slide.level_mpp(1) == pytest.approx(1.0)
        assert slide.best_level_for_mpp(0.5) == 0 and slide.best_level_for_mpp(1.0) == 1
        assert slide.best_level_for_mpp(0.1) == 0
    with Slide(generic.path) as slide:
        assert slide.vendor == "generic-tiff" and slide.mpp == pytest.approx(0.5)
    with Slide(none.path) as slide, pytest.raises(MissingMppError, match="--slide-mpp"):
        _ = slide.mpp
    assert Slide(none.path, mpp=0.3).info()["mpp_source"] == "override"


def test_read_at_mpp_uses_a_coarse_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = make_pyramid_slide(tmp_path / "big.svs", width=6000, height=4000, mpp=0.25)
    levels: list[int] = []
    slide = Slide(made.path)
    real = Slide.read_region

    def spy(self, location, level, size):
        levels.append(level)
        assert size[0] * size[1] <= 4096 * 4096  # chunks, never a whole big level
        return real(self, location, level, size)

    monkeypatch.setattr(Slide, "read_region", spy)
    with slide:
        overview, scale = slide.read_at_mpp(8.0)
    assert set(levels) == {slide.level_count - 1} and slide.level_count >= 2
    assert overview.shape[:2] == pytest.approx((4000 * 0.25 / 8, 6000 * 0.25 / 8), abs=1)


def test_resolve_mpp_rules() -> None:
    assert resolve_mpp({"openslide.mpp-x": "0.2526"}) == (0.2526, "openslide.mpp-x")
    assert resolve_mpp({"aperio.MPP": "0.5"}) == (0.5, "aperio.MPP")
    # TIFF tags OpenSlide left unparsed, in centimetres.
    assert resolve_mpp({"tiff.ResolutionUnit": "centimeter", "tiff.XResolution": "40000"})[0] == pytest.approx(0.25)
    # 96-dpi writer default and nonsense values are refused, overrides win.
    props = {"openslide.mpp-x": str(25400 / 96), "tiff.XResolution": "96"}
    assert resolve_mpp(props)[0] is None
    assert resolve_mpp({"openslide.mpp-x": "1e-9"})[0] is None
    assert resolve_mpp(props, 0.5) == (0.5, "override")
    with pytest.raises(MissingMppError):
        resolve_mpp({}, 1000.0)


def test_slide_pickles_without_its_handle(cmu_slide: Path) -> None:
    import pickle

    slide = Slide(cmu_slide).open()
    clone = pickle.loads(pickle.dumps(slide))
    assert clone._osr is None and clone.dimensions == slide.dimensions


# --------------------------------------------------------------------------------------------- flat images
@pytest.fixture
def cmu_pixels(cmu_slide: Path) -> np.ndarray:
    with Slide(cmu_slide) as slide:
        return slide.read_region((0, 0), 0, slide.dimensions)  # 2220 x 2967, small enough to hold whole


def _write_flat(pixels: np.ndarray, folder: Path) -> dict[str, Path]:
    """The same real H&E pixels as a stripped TIFF (resolution tags), a PNG with a transparent band and a JPEG."""
    import cv2
    import tifffile

    paths = {name: folder / name for name in ("strips.tif", "crop.png", "crop.jpg")}
    tifffile.imwrite(
        paths["strips.tif"], pixels, photometric="rgb", compression="zlib", rowsperstrip=64,
        resolution=(1e4 / 0.499, 1e4 / 0.499), resolutionunit="CENTIMETER",
    )  # fmt: skip
    rgba = np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])
    rgba[:40, :, 3] = 0  # a transparent band: glass
    cv2.imwrite(str(paths["crop.png"]), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    cv2.imwrite(str(paths["crop.jpg"]), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return paths


def test_flat_images_are_read_whole_and_tiled_with_an_mpp(cmu_pixels: np.ndarray, tmp_path: Path) -> None:
    from wsi_pipeline.tiling import TileConfig, tile_slide

    paths = _write_flat(cmu_pixels, tmp_path)
    with Slide(paths["strips.tif"]) as tif, Slide(paths["crop.png"]) as png, Slide(paths["crop.jpg"]) as jpg:
        assert (tif.vendor, png.vendor, jpg.vendor) == ("flat-tiff", "flat-png", "flat-jpeg")
        assert tif.dimensions == png.dimensions == jpg.dimensions == (2220, 2967) and tif.level_count == 1
        assert tif.mpp == pytest.approx(0.499)  # from the TIFF resolution tags
        with pytest.raises(MissingMppError, match="--slide-mpp"):
            _ = png.mpp
        assert np.array_equal(tif.read_region((100, 200), 0, (64, 64)), cmu_pixels[200:264, 100:164])
        assert (png.read_region((0, 0), 0, (32, 32)) == 255).all()  # transparent -> white glass
        edge = tif.read_region((2200, 2950), 0, (40, 40))  # partly outside: white beyond the image
        assert np.array_equal(edge[:17, :20], cmu_pixels[2950:, 2200:]) and (edge[17:] == 255).all()
        assert np.abs(jpg.read_region((500, 500), 0, (64, 64)).astype(int) - cmu_pixels[500:564, 500:564]).mean() < 4
    stores = {
        name: tile_slide(Slide(path, mpp=0.499), tmp_path / "out", config=TileConfig()) for name, path in paths.items()
    }
    with Slide(paths["strips.tif"]) as tif:
        assert tif.mpp == pytest.approx(0.499)
    counts = {name: len(read_coords(store)) for name, store in stores.items()}
    assert counts["strips.tif"] == counts["crop.jpg"] > 20 and abs(counts["crop.png"] - counts["strips.tif"]) <= 2


def test_flat_image_above_the_limit_is_refused_with_the_way_out(
    cmu_pixels: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _write_flat(cmu_pixels, tmp_path)
    monkeypatch.setenv("WSI_PIPELINE_MAX_FLAT_PIXELS", "1e6")
    with pytest.raises(SlideOpenError) as info:
        Slide(paths["crop.png"]).open()
    message = str(info.value)
    assert "flat PNG image of 2220 x 2967 px (7 MPx)" in message and "1 MPx" in message
    assert "vips tiffsave" in message and "WSI_PIPELINE_MAX_FLAT_PIXELS" in message and "\n" not in message
    # A file that is no image at all keeps its message.
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(SlideOpenError, match="does not recognise this file and it is no image"):
        Slide(junk).open()
