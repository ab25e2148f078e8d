"""``Encoder``: a built timm model with its pooling, preprocessing spec, precision and weights provenance."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import EncoderError, WeightsError
from ._config import EncoderConfig
from ._layers import family_layers
from ._weights import WeightsInfo, find_checkpoint_file, hub_file, load_checkpoint, offline_requested

__all__ = ["Encoder", "EncoderModule", "build_encoder", "build_timm_model", "resolve_layer_names"]

log = logging.getLogger(__name__)


def resolve_layer_names(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn the JSON-safe layer names of a preset's ``timm_kwargs`` into the classes timm expects."""
    from timm.layers import SwiGLUPacked

    # A family's own layers (CTransPath's conv stem) are registered by its module (``_layers.register_layer``).
    layers = {
        "swiglu_packed": SwiGLUPacked,
        "silu": nn.SiLU,
        "gelu": nn.GELU,
        **family_layers(),
    }
    out = dict(kwargs)
    for key in ("mlp_layer", "act_layer", "embed_layer"):
        if isinstance(out.get(key), str):
            if out[key] not in layers:
                raise EncoderError(f"timm_kwargs.{key}={out[key]!r}: unknown layer; known: {', '.join(layers)}")
            out[key] = layers[out[key]]
    return out


def build_timm_model(cfg: EncoderConfig, *, device: str | torch.device | None = None) -> nn.Module:
    """The bare timm architecture of ``cfg`` (random init, ``pretrained=False``: weights are loaded separately)."""
    import timm

    kwargs = resolve_layer_names(cfg.timm_kwargs)
    try:
        if device is not None:
            with torch.device(device):
                return timm.create_model(cfg.timm_name, pretrained=False, **kwargs)
        return timm.create_model(cfg.timm_name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError) as err:
        raise EncoderError(
            f"encoder {cfg.name!r}: timm cannot build {cfg.timm_name} with {cfg.timm_kwargs} ({err})"
        ) from err


class EncoderModule(nn.Module):
    """Normalised float images (B, 3, S, S) -> embeddings (B, D), pooled as the preset says."""

    def __init__(self, model: nn.Module, pooling: str, truncate_after: str | None = None) -> None:
        super().__init__()
        if truncate_after is not None:
            _truncate(model, truncate_after)
        if pooling == "model" and hasattr(model, "reset_classifier"):
            model.reset_classifier(0)  # headless: the forward gives the pooled features
        self.model = model
        self.pooling = pooling
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling == "model":
            out = self.model(x)  # (B, D)
            if out.ndim == 3:  # a ViT built with global_pool="": take its cls token
                out = out[:, 0]
            return out
        tokens = self.model.forward_features(x)  # (B, T, C)
        if tokens.ndim != 3:
            raise EncoderError(f"pooling={self.pooling!r} needs a token model (got features of rank {tokens.ndim})")
        if self.pooling == "cls":
            return tokens[:, 0]  # (B, C)
        patches = tokens[:, self.num_prefix_tokens :].mean(dim=1)  # (B, C): register tokens excluded
        if self.pooling == "mean_patch":
            return patches
        return torch.cat([tokens[:, 0], patches], dim=-1)  # (B, 2C)


def _truncate(model: nn.Module, after: str) -> None:
    """Replace the ResNet stages after ``after`` by identities (the pooled width becomes that stage's)."""
    stages = ["layer1", "layer2", "layer3", "layer4"]
    if after not in stages or not all(hasattr(model, s) for s in stages):
        raise EncoderError(f"truncate_after={after!r} needs a ResNet-like model with stages {', '.join(stages)}")
    for stage in stages[stages.index(after) + 1 :]:
        setattr(model, stage, nn.Identity())
    last = getattr(model, after)
    width = last[-1].conv3.out_channels if hasattr(last[-1], "conv3") else last[-1].conv2.out_channels
    model.num_features = width  # type: ignore[assignment]
    model.head_hidden_size = width  # type: ignore[assignment]


@dataclass
class Encoder:
    """A ready encoder: ``model`` maps normalised float images to ``(B, dim)`` embeddings.

    ``config`` holds the preprocessing (input size, resize rule, interpolation, mean/std) and the recommended
    ``precision``; ``enc_name`` names the embeddings array in the stores.
    """

    model: EncoderModule
    config: EncoderConfig
    weights: WeightsInfo
    dim: int

    @property
    def enc_name(self) -> str:
        return self.config.name

    @property
    def precision(self) -> str:
        return self.config.precision

    def attrs(self) -> dict[str, Any]:
        """Provenance stored with the embeddings."""
        cfg = self.config
        return {
            "encoder": cfg.name,
            "timm_name": cfg.timm_name,
            "timm_kwargs": cfg.timm_kwargs,
            "dim": self.dim,
            "pooling": cfg.pooling,
            "input_size": cfg.input_size,
            "resize": cfg.resize,
            "resize_size": cfg.resize_size,
            "interpolation": cfg.interpolation,
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "weights": self.weights.to_dict(),
            "package_version": __version__,
            "preset": cfg.to_dict(),
        }


def _locate_weights(cfg: EncoderConfig, weights: str | None, offline: bool) -> tuple[str, str | None]:
    """``(source, local file)`` of the weights to load, found before the (possibly huge) model is built."""
    if weights == "random" or (weights is None and cfg.random_init):
        return "random", None
    if weights is not None and not weights.startswith("hf-hub:"):
        return "local", str(find_checkpoint_file(weights))
    repo = weights.removeprefix("hf-hub:") if weights is not None else cfg.hub_id
    if repo is None:
        raise WeightsError(
            f"encoder {cfg.name!r} has no downloadable weights; pass the checkpoint file with --weights PATH "
            "(or --weights random for a random init)"
        )
    gated = " (gated: request access on its page first)" if cfg.gated and weights is None else ""
    file = hub_file(repo, cfg.hub_files, offline=offline, what=f"encoder {cfg.name}{gated}")
    return f"hf-hub:{repo}", str(file)


def build_encoder(cfg: EncoderConfig, *, weights: str | None = None, offline: bool = False, seed: int = 0) -> Encoder:
    """Build ``cfg``'s model, load its weights, make it headless and measure its output width."""
    offline = offline_requested(offline)
    source, file = _locate_weights(cfg, weights, offline)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # random init is reproducible (tests, benchmarks)
        model = build_timm_model(cfg)
    # Weights are loaded into the full architecture (classifier included) before any truncation or head removal,
    # so checkpoints saved from the whole model load strictly.
    if file is None:
        info = WeightsInfo(source="random")
    else:
        info = load_checkpoint(model, file, remap=cfg.weights_remap)
        if source != "local":
            info = WeightsInfo(source=source, location=info.location, sha256=info.sha256)
    module = EncoderModule(model, cfg.pooling, cfg.truncate_after).eval()
    with torch.inference_mode():
        probe = torch.zeros(1, 3, cfg.input_size, cfg.input_size)
        dim = int(module(probe).shape[-1])
    if cfg.dim is not None and cfg.dim != dim:
        raise EncoderError(f"encoder {cfg.name!r}: the preset says dim {cfg.dim} but the model gives {dim}")
    return Encoder(model=module, config=cfg, weights=info, dim=dim)
