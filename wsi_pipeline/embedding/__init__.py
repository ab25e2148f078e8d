"""The ``embed`` stage: tile stores -> patch embeddings (``features/<encoder>``) with a timm encoder.

Examples
--------
>>> from wsi_pipeline.embedding import EmbedConfig, embed_stores
>>> result = embed_stores("stores/", config=EmbedConfig(encoder="uni2_h"))  # doctest: +SKIP
>>> print(result.summary())  # doctest: +SKIP
"""

from ._config import EmbedConfig
from ._embed import (
    EmbedProgress,
    embed_slide,
    embed_stage_name,
    embed_stores,
    features_signature,
    features_view,
)
from ._reader import TileReader, TileRef, encoder_view, to_model_input
from ._reuse import features_changes
from ._runtime import EmbedRuntime, load_encoder, resolve_device, resolve_num_workers, resolve_precision
from ._stream import SlideJob, TileStream

__all__ = [
    "EmbedConfig",
    "EmbedProgress",
    "EmbedRuntime",
    "SlideJob",
    "TileReader",
    "TileRef",
    "TileStream",
    "embed_slide",
    "embed_stage_name",
    "embed_stores",
    "encoder_view",
    "features_changes",
    "features_signature",
    "features_view",
    "load_encoder",
    "resolve_device",
    "resolve_num_workers",
    "resolve_precision",
    "to_model_input",
]
