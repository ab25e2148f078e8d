"""wsi_pipeline: whole-slide images to diagnosis.

Stages, each a library function with a thin CLI command on top:
``tile`` (tissue tiles into per-slide zarr stores), ``embed`` (timm patch embeddings into those stores),
``train`` (ASMIL and baselines on the stored bags) and ``predict`` (probabilities and attention heatmaps).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsi-pipeline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
