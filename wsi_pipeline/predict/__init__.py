"""``predict``: class probabilities and attention heatmaps from a trained checkpoint."""

from ._heatmap import draw_heatmap, save_top_tiles, scale_scores
from ._predict import PredictConfig, PredictResult, check_store, predict_slides, predict_store, scores_name_for
from ._results import read_slide_result, slide_result_path

__all__ = [
    "PredictConfig",
    "PredictResult",
    "check_store",
    "predict_slides",
    "predict_store",
    "scores_name_for",
    "read_slide_result",
    "slide_result_path",
    "draw_heatmap",
    "save_top_tiles",
    "scale_scores",
]
