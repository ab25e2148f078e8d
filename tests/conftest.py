"""Shared test fixtures: the real data (``tests/data.py``: ../shared/data, $WSI_PIPELINE_TEST_DATA, or fetched once
into a cache), generated slides, and the one wording of every skip (``needs <what>: <why>``)."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from tests.data import data_root, ensure_test_data, skip_reason
from wsi_pipeline.batch import available_cpus

ROOT = Path(__file__).resolve().parents[1]
DATA = data_root()
SLIDES = DATA / "slides"
MIL_DATA = DATA / "mil"
WEIGHTS = DATA / "weights"
CMU_SMALL = SLIDES / "CMU-1-Small-Region.svs"


def pytest_sessionstart(session: pytest.Session) -> None:
    # Fetch the real data before any test looks for it (a no-op when it is there: ../shared/data or the cache).
    ensure_test_data()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding ``slow`` (end-to-end) tests run first, those with the most first (the Slurm file, whose waits
    for the scheduler are best spent beside other files' work), each file's tests kept together and in order: with
    ``make test``'s ``-n auto --dist loadfile --no-loadscope-reorder``, a long file left to the end would keep one
    worker busy while the others have nothing left to do."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # stable: the rest keep their order


def need_real_data(path: Path) -> Path:
    """``path`` under the data root, or skip the test saying why the data is missing."""
    if not path.exists():
        pytest.skip(skip_reason("the real test data", ensure_test_data() or f"{path} is missing"))
    return path


def need_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip(skip_reason("a CUDA GPU", "torch.cuda.is_available() is False here"))


@pytest.fixture
def shared_data() -> Path:
    return need_real_data(DATA)


@pytest.fixture
def cmu_slide() -> Path:
    """The real CC0 H&E slide CMU-1-Small-Region.svs (2220 x 2967 px at 0.499 mpp)."""
    return need_real_data(CMU_SMALL)


@pytest.fixture
def slides_dir() -> Path:
    return need_real_data(SLIDES)


@pytest.fixture
def mil_dir() -> Path:
    return need_real_data(MIL_DATA)


@pytest.fixture
def weights_dir() -> Path:
    return need_real_data(WEIGHTS)


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    # The CI machine has 2 cores; oversubscribing them with torch threads only slows tests down, and more so
    # when pytest-xdist runs a worker per core: each worker gets its share.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    try:
        import torch

        torch.set_num_threads(max(1, min(2, available_cpus() // workers)))
    except ImportError:
        pass


# --------------------------------------------------------------------------------------------- generated slides
# Realistic pyramidal slides made by tests/slide_factory.py (real H&E pixels from the real data).
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
