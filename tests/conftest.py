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
