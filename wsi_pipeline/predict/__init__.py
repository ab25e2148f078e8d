"""``predict``: class probabilities, attention heatmaps and QuPath tile objects from a training run or checkpoint."""

from ._geojson import attention_geojson, write_attention_geojson
from ._heatmap import colour_bar_ticks, draw_heatmap, save_top_tiles, scale_scores, uniformity_note
from ._models import FoldModel, ModelSet, SlidePlan, load_models
from ._predict import PredictConfig, PredictResult, check_store, predict_slides, predict_store, scores_name_for
from ._results import cohort_metrics, read_slide_result, slide_result_path

__all__ = [
    "PredictConfig",
    "PredictResult",
    "check_store",
    "predict_slides",
    "predict_store",
    "scores_name_for",
    "FoldModel",
    "ModelSet",
    "SlidePlan",
    "load_models",
    "cohort_metrics",
    "read_slide_result",
    "slide_result_path",
    "draw_heatmap",
    "colour_bar_ticks",
    "uniformity_note",
    "save_top_tiles",
    "scale_scores",
    "attention_geojson",
    "write_attention_geojson",
]
