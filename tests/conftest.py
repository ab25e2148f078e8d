"""Shared test fixtures: the real data in ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WSI_PIPELINE_SHARED_DATA", ROOT.parent / "shared" / "data"))
SLIDES = SHARED_DATA / "slides"
MIL_DATA = SHARED_DATA / "mil"
WEIGHTS = SHARED_DATA / "weights"
CMU_SMALL = SLIDES / "CMU-1-Small-Region.svs"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path} (../shared/data is absent)")
    return path


@pytest.fixture
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture
def cmu_slide() -> Path:
    """The real CC0 H&E slide CMU-1-Small-Region.svs (2220 x 2967 px at 0.499 mpp)."""
    return _need(CMU_SMALL)


@pytest.fixture
def slides_dir() -> Path:
    return _need(SLIDES)


@pytest.fixture
def mil_dir() -> Path:
    return _need(MIL_DATA)


@pytest.fixture
def weights_dir() -> Path:
    return _need(WEIGHTS)


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    # The CI machine has 2 cores; oversubscribing them with torch/OpenCV threads only slows tests down.
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass


# --------------------------------------------------------------------------------------------- generated slides
# Realistic pyramidal slides made by tests/slide_factory.py (real H&E pixels when ../shared is present).
@pytest.fixture(scope="session")
def generated_slide(tmp_path_factory: pytest.TempPathFactory):
    """A 4000 x 3000 px Aperio-style JPEG slide at 0.25 mpp with tissue in known boxes (a ``GeneratedSlide``)."""
    from tests.slide_factory import make_pyramid_slide

    return make_pyramid_slide(tmp_path_factory.mktemp("generated") / "generated.svs", width=4000, height=3000)


@pytest.fixture(scope="session")
def tiled_store(generated_slide, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished tile store (224 px at 0.5 mpp) of ``generated_slide``: input for embed tests."""
    from wsi_pipeline.slide import Slide
    from wsi_pipeline.tiling import TileConfig, tile_slide

    out = tmp_path_factory.mktemp("tiles")
    slide = Slide(generated_slide.path, slide_id="generated")
    return tile_slide(slide, out, config=TileConfig())
