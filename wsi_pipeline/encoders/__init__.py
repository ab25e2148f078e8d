"""Patch encoders: a registry of presets over timm models, weights loading and the ``Encoder`` wrapper.

Examples
--------
>>> from wsi_pipeline.encoders import create_encoder, list_encoders
>>> "uni2_h" in list_encoders()
True
>>> enc = create_encoder("tiny_test")  # random init, 64-d
"""

from . import cnn_baselines, vit_foundation  # noqa: F401 - registers the presets
from ._config import IMAGENET_MEAN, IMAGENET_STD, EncoderConfig
from ._encoder import Encoder, EncoderModule, build_encoder, build_timm_model
from ._registry import (
    create_encoder,
    describe_encoders,
    enc_name,
    encoders_markdown,
    get_encoder_config,
    is_encoder,
    list_encoders,
    register_encoder,
)
from ._weights import (
    WeightsInfo,
    file_sha256,
    find_checkpoint_file,
    hub_file,
    load_checkpoint,
    offline_requested,
    read_state_dict,
    remap_state_dict,
)

__all__ = [
    "EncoderConfig",
    "Encoder",
    "EncoderModule",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WeightsInfo",
    "build_encoder",
    "build_timm_model",
    "create_encoder",
    "describe_encoders",
    "enc_name",
    "encoders_markdown",
    "file_sha256",
    "find_checkpoint_file",
    "get_encoder_config",
    "hub_file",
    "is_encoder",
    "list_encoders",
    "load_checkpoint",
    "offline_requested",
    "read_state_dict",
    "register_encoder",
    "remap_state_dict",
]
