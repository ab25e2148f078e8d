"""The ``embed`` stage: tile stores -> patch embeddings (``features/<encoder>``) with a timm encoder.

Examples
--------
>>> from wsi_pipeline.embedding import EmbedConfig, embed_stores
>>> result = embed_stores("stores/", config=EmbedConfig(encoder="uni2_h"))  # doctest: +SKIP
>>> print(result.summary())  # doctest: +SKIP
"""

from ._config import EmbedConfig
from ._dataset import TileDataset, prepare_tile, to_model_input
from ._embed import (
    EmbedRuntime,
    embed_slide,
    embed_stage_name,
    embed_stores,
    load_encoder,
    resolve_device,
    resolve_num_workers,
    resolve_precision,
)
from ._reuse import features_changes, features_signature

__all__ = [
    "EmbedConfig",
    "EmbedRuntime",
    "TileDataset",
    "embed_slide",
    "embed_stage_name",
    "embed_stores",
    "features_changes",
    "features_signature",
    "load_encoder",
    "prepare_tile",
    "resolve_device",
    "resolve_num_workers",
    "resolve_precision",
    "to_model_input",
]
