"""``EncoderConfig``: everything needed to build an encoder and feed it pixels, in one JSON-safe dataclass.

Preprocessing travels with the encoder (as timm's ``PretrainedCfg`` does): input size, resize rule, interpolation
and mean/std are resolved in the order explicit overrides -> preset -> defaults, and the resolved values are what
``embed`` records next to the embeddings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import EncoderError

__all__ = ["EncoderConfig", "IMAGENET_MEAN", "IMAGENET_STD", "Pooling", "Precision"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Pooling = Literal["model", "cls", "cls_mean", "mean_patch"]
Precision = Literal["bf16", "fp16", "fp32"]
_RESIZE = ("resize", "center_crop")
_INTERPOLATION = ("bilinear", "bicubic", "area", "nearest")
_POOLING = ("model", "cls", "cls_mean", "mean_patch")
_PRECISION = ("bf16", "fp16", "fp32")
_REMAP = ("auto", "by_order")


@dataclass(frozen=True)
class EncoderConfig:
    """A patch-encoder preset.

    Parameters
    ----------
    name
        Stable preset name; also the name of the embeddings array in each store (``features/<name>``).
    timm_name
        timm architecture passed to ``timm.create_model`` (always with ``pretrained=False``; weights are loaded
        separately so that local files, the Hugging Face cache and offline mode all take the same path).
    timm_kwargs
        Keyword arguments for ``timm.create_model``. Values must be JSON-safe; layer classes are named by string
        (``"swiglu_packed"``, ``"silu"``, ``"ctranspath_conv_stem"``) and resolved when the model is built.
    input_size
        Side of the square image the encoder sees.
    resize
        ``"resize"``: the tile is resized to ``input_size``. ``"center_crop"``: resized to
        ``round(input_size / crop_pct)`` then centre-cropped (e.g. Prov-GigaPath's Resize(256)+CenterCrop(224)).
    pooling
        ``"model"``: the timm model's own pooled output (cls token for most ViTs, global average for CNNs);
        ``"cls"``: first token of ``forward_features``; ``"cls_mean"``: cls token concatenated with the mean of the
        patch tokens (register tokens excluded, as Virchow2 prescribes); ``"mean_patch"``: mean of patch tokens.
    precision
        Recommended autocast precision on CUDA (CPU runs in fp32 unless asked otherwise).
    hub_id
        Hugging Face repository holding the weights (``None``: no hub weights; pass a local file).
    weights_remap
        How checkpoint keys are matched to the model: ``"auto"`` (names, after stripping wrapper prefixes) or
        ``"by_order"`` (pair tensors in order when names differ but shapes line up one to one).
    truncate_after
        For ResNets: keep the stages up to this one (``"layer3"`` gives the 1024-d CLAM baseline).
    """

    name: str
    timm_name: str
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int = 224
    resize: str = "resize"
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    dim: int | None = None
    pooling: str = "model"
    precision: str = "bf16"
    hub_id: str | None = None
    hub_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    weights_remap: str = "auto"
    truncate_after: str | None = None
    random_init: bool = False
    license: str = ""
    gated: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        checks = [
            ("resize", self.resize, _RESIZE),
            ("interpolation", self.interpolation, _INTERPOLATION),
            ("pooling", self.pooling, _POOLING),
            ("precision", self.precision, _PRECISION),
            ("weights_remap", self.weights_remap, _REMAP),
        ]
        for key, value, valid in checks:
            if value not in valid:
                raise EncoderError(f"encoder {self.name!r}: {key}={value!r} is not one of {', '.join(valid)}")
        if self.input_size < 8:
            raise EncoderError(f"encoder {self.name!r}: input_size={self.input_size} is too small")
        if not 0 < self.crop_pct <= 1:
            raise EncoderError(f"encoder {self.name!r}: crop_pct must be in (0, 1], got {self.crop_pct}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise EncoderError(f"encoder {self.name!r}: mean and std need 3 values (RGB)")

    @property
    def resize_size(self) -> int:
        """Side the tile is resized to before any centre crop."""
        return self.input_size if self.resize == "resize" else round(self.input_size / self.crop_pct)

    def replace(self, **overrides: Any) -> EncoderConfig:
        """A copy with ``overrides`` applied; unknown keys raise ``EncoderError`` listing the valid ones."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise EncoderError(
                f"encoder {self.name!r}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        for key in ("mean", "std", "hub_files"):
            if key in overrides and overrides[key] is not None:
                overrides[key] = tuple(overrides[key])
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, recorded in the store next to the embeddings."""
        out = dataclasses.asdict(self)
        for key in ("mean", "std", "hub_files"):
            out[key] = list(out[key])
        return out
