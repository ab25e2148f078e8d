"""``predict``: class probabilities and attention heatmaps from a trained checkpoint."""

from ._heatmap import colour_bar_ticks, draw_heatmap, save_top_tiles, scale_scores, uniformity_note
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
    "colour_bar_ticks",
    "uniformity_note",
    "save_top_tiles",
    "scale_scores",
]
