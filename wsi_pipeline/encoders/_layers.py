"""Layer classes that presets name in their ``timm_kwargs`` (``"embed_layer": "ctranspath_conv_stem"``), registered
by the module of their model family, so that the generic builder (``_encoder``) never imports a family's module."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from torch import nn

__all__ = ["register_layer", "family_layers"]

LayerT = TypeVar("LayerT", bound="type[nn.Module]")

_LAYERS: dict[str, type[nn.Module]] = {}


def register_layer(name: str) -> Callable[[LayerT], LayerT]:
    """Class decorator: presets may name the class ``name`` in their ``timm_kwargs``."""

    def register(cls: LayerT) -> LayerT:
        _LAYERS[name] = cls
        return cls

    return register


def family_layers() -> dict[str, type[nn.Module]]:
    """The registered layer classes by name, in registration order."""
    return dict(_LAYERS)
