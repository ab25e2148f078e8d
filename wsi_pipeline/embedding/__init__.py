"""The ``embed`` stage: tile stores -> patch embeddings (``features/<encoder>``) with a timm encoder.

Examples
--------
>>> from wsi_pipeline.embedding import EmbedConfig, embed_stores
>>> result = embed_stores("stores/", config=EmbedConfig(encoder="uni2_h"))  # doctest: +SKIP
>>> print(result.summary())  # doctest: +SKIP
"""

from .._lazy import lazy_exports

# Loaded on first use: `from wsi_pipeline.embedding import X` imports only X's module (and what it needs).
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "EmbedConfig": "._config",
        "EmbedProgress": "._embed",
        "embed_slide": "._embed",
        "embed_stage_name": "._config",
        "embed_stores": "._embed",
        "features_signature": "._embed",
        "features_view": "._embed",
        "TileReader": "._reader",
        "TileRef": "._reader",
        "encoder_view": "._reader",
        "to_model_input": "._reader",
        "features_changes": "._reuse",
        "EmbedRuntime": "._runtime",
        "load_encoder": "._runtime",
        "resolve_num_workers": "._runtime",
        "resolve_precision": "._runtime",
        "SlideJob": "._stream",
        "TileStream": "._stream",
        "clean_worker_error": "._stream",
    },
)

__all__ = [
    "EmbedConfig",
    "EmbedProgress",
    "EmbedRuntime",
    "SlideJob",
    "TileReader",
    "TileRef",
    "TileStream",
    "clean_worker_error",
    "embed_slide",
    "embed_stage_name",
    "embed_stores",
    "encoder_view",
    "features_changes",
    "features_signature",
    "features_view",
    "load_encoder",
    "resolve_num_workers",
    "resolve_precision",
    "to_model_input",
]
