"""``PredictConfig``: the settings of ``predict`` (torch-free, so the CLI checks them before loading a model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["PredictConfig"]


@dataclass
class PredictConfig:
    """Settings of ``predict`` (``configs/predict.yaml`` mirrors these defaults)."""

    heatmaps: bool = True
    top_k: int = 8  # top-attention tiles saved as PNG patches per slide (0: none)
    # relative: attention x N (1 = uniform) on a log scale, a flat map looks flat; rank/percentile/linear stretch
    # any map over every colour
    scaling: Literal["relative", "rank", "percentile", "linear"] = "relative"
    thumbnail_size: int = 2048
    write_scores: bool = True  # store per-tile attention as scores/<scores_name> in each store
    scores_name: str | None = None  # default: the run folder's name (+ _fold<k> for one fold), e.g. asmil_uni_cv5_seed0
    geojson: bool = True  # per-tile attention as QuPath detection objects: <out>/geojson/<slide_id>.geojson
    device: str = "auto"
    # <out>/report/: index.html + a page per slide with a deep-zoom viewer (OpenSeadragon), pyramids capped at
    # report_max_size px on the long side (`wsi-pipeline view` serves full resolution)
    report: bool = True
    report_max_size: int = 8192
    # Raw slide inputs only: the encoder weights file (its sha256 must be the one the checkpoint's features record;
    # default: where they record it), and the resolution of slides that state none, as for `tile`.
    weights: str | None = None
    slide_mpp: float | None = None
    mpp_csv: Path | None = None
