"""The MIL model registry: ``@register_model`` stores a constructor under its function name; ``create_model``
is the one door to build a model by name (timm-style)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = [
    "register_model",
    "create_model",
    "list_models",
    "is_model",
    "model_architecture",
    "checkpoint_model_kwargs",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its function name; the module's ``__all__`` gains the name too."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"MIL model {name!r} is registered twice")
    _MODELS[name] = fn
    module = sys.modules[fn.__module__]
    if hasattr(module, "__all__") and name not in module.__all__:
        module.__all__.append(name)
    return fn


def list_models() -> list[str]:
    """Names of the registered MIL models, sorted."""
    return sorted(_MODELS)


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``None`` kwargs are dropped so callers can pass unset options.

    Raises
    ------
    ValueError
        When ``name`` is not registered; the message lists the valid names.

    Examples
    --------
    >>> model = create_model("asmil", in_dim=1024, n_classes=2, n_tokens=None)
    """
    if name not in _MODELS:
        raise ValueError(f"unknown MIL model {name!r}; valid names: {', '.join(list_models())}")
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    model = _MODELS[name](**kwargs)
    model.model_name = name  # type: ignore[assignment]
    return model


def model_architecture(name: str, kwargs: dict[str, Any]) -> str | None:
    """A model's architecture variant for ``kwargs`` (e.g. ASMIL's ``per-branch``), where the model has variants
    whose default changed between versions; ``None`` for the others. Recorded in a run's identity."""
    hook = getattr(_MODELS.get(name), "architecture", None)
    return None if hook is None else hook(kwargs)


def checkpoint_model_kwargs(name: str, kwargs: dict[str, Any], state_dict: dict[str, Any]) -> dict[str, Any]:
    """The kwargs that rebuild a checkpoint's model: a model whose defaults changed reads which variant the
    checkpoint holds from its weights' names (the constructor's ``checkpoint_kwargs`` hook)."""
    hook = getattr(_MODELS.get(name), "checkpoint_kwargs", None)
    return kwargs if hook is None else hook(kwargs, state_dict)
