"""Patch encoders: a registry of presets over timm models, weights loading and the ``Encoder`` wrapper.

Examples
--------
>>> from wsi_pipeline.encoders import create_encoder, list_encoders
>>> "uni2_h" in list_encoders()
True
>>> enc = create_encoder("tiny_test")  # random init, 64-d
"""

from .._lazy import lazy_exports

# Loaded on first use: `from wsi_pipeline.encoders import enc_name` imports no torch; the presets are registered
# when the registry is first asked for them (``_registry._presets``).
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "EncoderConfig": "._config",
        "IMAGENET_MEAN": "._config",
        "IMAGENET_STD": "._config",
        "Encoder": "._encoder",
        "EncoderModule": "._encoder",
        "build_encoder": "._encoder",
        "build_timm_model": "._encoder",
        "create_encoder": "._registry",
        "describe_encoders": "._registry",
        "enc_name": "._registry",
        "encoders_markdown": "._registry",
        "get_encoder_config": "._registry",
        "is_encoder": "._registry",
        "list_encoders": "._registry",
        "register_encoder": "._registry",
        "WeightsInfo": "._weights",
        "file_sha256": "._weights",
        "find_checkpoint_file": "._weights",
        "hub_file": "._weights",
        "load_checkpoint": "._weights",
        "offline_requested": "._weights",
        "read_state_dict": "._weights",
        "remap_state_dict": "._weights",
    },
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
