"""wsi_pipeline: whole-slide images to diagnosis.

Stages, each a library function with a thin CLI command on top:
``tile`` (tissue tiles into per-slide zarr stores), ``embed`` (timm patch embeddings into those stores),
``train`` (ASMIL and baselines on the stored bags) and ``predict`` (probabilities and attention heatmaps).
"""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # The version is looked up when first asked for: importlib.metadata costs ~40 ms, a third of `--help`.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("wsi-pipeline")
    except PackageNotFoundError:  # running from a source tree that was never installed
        value = "0+unknown"
    globals()["__version__"] = value
    return value
