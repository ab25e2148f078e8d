"""The encoder registry: ``@register_encoder`` presets, ``create_encoder`` as the one door (timm-style).

Names resolve in this order: a registered preset (``uni``, ``resnet50_trunc`` ...), then ``timm:NAME`` or a plain
timm model name (``resnet18``, ``vit_small_patch16_224.augreg_in21k``), then ``hf-hub:ORG/NAME`` (architecture and
preprocessing read from the repository's timm ``config.json``, from the cache when offline).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import EncoderError, WeightsError
from ..store import features_name
from ._config import EncoderConfig

if TYPE_CHECKING:
    from ._encoder import Encoder

__all__ = [
    "register_encoder",
    "list_encoders",
    "is_encoder",
    "get_encoder_config",
    "create_encoder",
    "enc_name",
    "describe_encoders",
    "encoders_markdown",
]

_ENCODERS: dict[str, Callable[..., EncoderConfig]] = {}


def register_encoder(fn: Callable[..., EncoderConfig]) -> Callable[..., EncoderConfig]:
    """Register a preset constructor under its function name (it returns an ``EncoderConfig``)."""
    name = fn.__name__
    if name in _ENCODERS:
        raise EncoderError(f"encoder preset {name!r} is registered twice")
    _ENCODERS[name] = fn
    return fn


def list_encoders() -> list[str]:
    """Registered preset names, sorted (any timm model name works too)."""
    return sorted(_ENCODERS)


def is_encoder(name: str) -> bool:
    return name in _ENCODERS


def enc_name(name: str) -> str:
    """The store array name of an encoder name (``features/<enc_name>``; ``store.features_name``)."""
    return features_name(name)


def _unknown(name: str) -> EncoderError:
    return EncoderError(
        f"unknown encoder {name!r}; presets: {', '.join(list_encoders())}; or any timm model name "
        "(`timm:NAME`, see timm.list_models()) or `hf-hub:ORG/NAME`"
    )


def _timm_config(name: str) -> EncoderConfig:
    import timm
    from timm.models import get_pretrained_cfg

    model_name = name.removeprefix("timm:")
    arch, _, tag = model_name.partition(".")
    if not timm.is_model(arch):
        raise _unknown(name)
    cfg = get_pretrained_cfg(model_name) if tag else get_pretrained_cfg(arch)
    pre = cfg.to_dict() if cfg is not None else {}
    hub_id = pre.get("hf_hub_id") or None
    return EncoderConfig(
        name=enc_name(model_name),
        timm_name=arch,
        # Headless: the loader drops the checkpoint's classifier, whatever its number of classes.
        timm_kwargs={"num_classes": 0},
        input_size=int(pre.get("input_size", (3, 224, 224))[-1]),
        resize="resize",
        interpolation=pre.get("interpolation") if pre.get("interpolation") in ("bilinear", "bicubic") else "bicubic",
        mean=tuple(pre.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(pre.get("std", (0.229, 0.224, 0.225))),
        pooling="model",
        hub_id=hub_id,
        random_init=hub_id is None,
        license=str(pre.get("license", "")),
        description=f"timm model {model_name}",
    )


def _hf_hub_config(name: str, offline: bool) -> EncoderConfig:
    from ._weights import hub_file

    repo = name.removeprefix("hf-hub:")
    path = hub_file(repo, ("config.json",), offline=offline, what=f"encoder {name}")
    try:
        data = json.loads(path.read_text())
        arch = data["architecture"]
    except (OSError, ValueError, KeyError) as err:
        raise WeightsError(f"{path}: not a timm config.json (no 'architecture'); use a timm model name") from err
    pre = data.get("pretrained_cfg", {})
    return EncoderConfig(
        name=enc_name(name),
        timm_name=arch,
        timm_kwargs=dict(data.get("model_args", {}), num_classes=0),
        input_size=int(pre.get("input_size", (3, 224, 224))[-1]),
        interpolation=pre.get("interpolation") if pre.get("interpolation") in ("bilinear", "bicubic") else "bicubic",
        mean=tuple(pre.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(pre.get("std", (0.229, 0.224, 0.225))),
        hub_id=repo,
        description=f"timm model from the Hugging Face repository {repo}",
    )


def get_encoder_config(name: str, *, offline: bool = False, **overrides: Any) -> EncoderConfig:
    """The resolved ``EncoderConfig`` of ``name`` with ``overrides`` applied (``None`` values are ignored).

    Raises ``EncoderError`` (a ``ValueError``) listing the presets when the name is unknown.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if name in _ENCODERS:
        cfg = _ENCODERS[name]()
    elif name.startswith("hf-hub:"):
        cfg = _hf_hub_config(name, offline)
    else:
        cfg = _timm_config(name)
    return cfg.replace(**overrides) if overrides else cfg


def create_encoder(
    name: str,
    *,
    weights: str | None = None,
    offline: bool = False,
    seed: int = 0,
    **overrides: Any,
) -> Encoder:
    """Build an encoder ready for inference (eval mode, on CPU): the one door to every encoder.

    Parameters
    ----------
    name
        A preset (``list_encoders()``), a timm model name (``timm:resnet18`` or ``resnet18``) or ``hf-hub:ORG/NAME``.
    weights
        ``None``: the preset's default (its Hugging Face repository, or timm's pretrained weights);
        ``"random"``: random init (seeded by ``seed``, for tests and benchmarks); a local ``.pth``/``.bin``/
        ``.safetensors`` file (or a folder holding one); or ``hf-hub:ORG/NAME`` to take weights from that repository.
    offline
        Never touch the network: hub weights must already be in the Hugging Face cache (also set by
        ``HF_HUB_OFFLINE=1``); otherwise a ``WeightsError`` says how to provide the file.
    overrides
        ``EncoderConfig`` fields to change (``input_size``, ``precision``, ``weights_remap`` ...); ``None`` ignored.

    Examples
    --------
    >>> enc = create_encoder("tiny_test", weights="random")
    >>> enc.enc_name, enc.dim
    ('tiny_test', 64)
    """
    from ._encoder import build_encoder

    cfg = get_encoder_config(name, offline=offline, **overrides)
    return build_encoder(cfg, weights=weights, offline=offline, seed=seed)


def _pooling_words(cfg: EncoderConfig) -> str:
    if cfg.pooling == "model":
        return "cls token" if "vit" in cfg.timm_name else "global avg pool"
    return {"cls": "cls token", "cls_mean": "cls + mean of patch tokens", "mean_patch": "mean of patch tokens"}[
        cfg.pooling
    ]


def describe_encoders() -> list[dict[str, Any]]:
    """One row per preset (name, timm model, dim, input, pooling, precision, weights, license), from the registry."""
    rows = []
    for name in list_encoders():
        cfg = _ENCODERS[name]()
        if cfg.random_init:
            weights = "random init"
        elif cfg.hub_id:
            weights = f"hf-hub:{cfg.hub_id}" + (" (gated)" if cfg.gated else "")
        else:
            weights = "local file (--weights)"
        resize = f"{cfg.resize_size}->crop {cfg.input_size}" if cfg.resize == "center_crop" else str(cfg.input_size)
        rows.append(
            {
                "name": name,
                "timm_name": cfg.timm_name,
                "dim": cfg.dim,
                "input": resize,
                "pooling": _pooling_words(cfg),
                "precision": cfg.precision,
                "weights": weights,
                "license": cfg.license,
                "description": cfg.description.split(";")[0],
            }
        )
    return rows


def encoders_markdown() -> str:
    """The preset table in Markdown, generated from the registry (pasted into the README; a test keeps it current)."""
    columns = ["name", "timm_name", "dim", "input", "pooling", "precision", "weights", "license", "description"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in describe_encoders():
        cells = [f"`{row['name']}`", f"`{row['timm_name']}`", *(str(row[c]) for c in columns[2:])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
