"""``predict``: class probabilities, survival risks or several targets' predictions, attention heatmaps and QuPath
tile objects from a training run or checkpoint; ``predict_slide`` answers for one store, ``predict_slides`` for a
cohort (resumable, shardable, raw slide files too)."""

from .._lazy import lazy_exports

# Loaded on first use: `from wsi_pipeline.predict import X` imports only X's module (and what it needs).
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "attention_geojson": "._geojson",
        "write_attention_geojson": "._geojson",
        "NEARLY_UNIFORM_RATIO": "._heatmap",
        "colormap_for": "._heatmap",
        "colour_bar_ticks": "._heatmap",
        "draw_heatmap": "._heatmap",
        "save_top_tiles": "._heatmap",
        "scale_scores": "._heatmap",
        "relative_attention": "._heatmap",
        "uniformity_note": "._heatmap",
        "FoldModel": "._models",
        "ModelSet": "._models",
        "SlidePlan": "._models",
        "load_models": "._models",
        "PredictConfig": "._config",
        "PredictResult": "._predict",
        "check_store": "._predict",
        "predict_slides": "._predict",
        "predict_store": "._predict",
        "predict_slide": "._predict",
        "SlideAnswer": "._predict",
        "scores_name_for": "._predict",
        "cohort_metrics": "._results",
        "read_slide_result": "._results",
        "slide_result_path": "._results",
    },
)

__all__ = [
    "PredictConfig",
    "PredictResult",
    "check_store",
    "predict_slides",
    "predict_store",
    "predict_slide",
    "SlideAnswer",
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
    "relative_attention",
    "colormap_for",
    "NEARLY_UNIFORM_RATIO",
    "attention_geojson",
    "write_attention_geojson",
]
