"""Baselines: ResNet50 truncated after layer3 (CLAM), CTransPath (Swin-T with a convolutional stem), Swin-T and
EfficientNet-Lite0 ImageNet models, and a tiny random-init ViT for tests.

Sources: mahmoodlab/CLAM ``resnet_custom.py`` (ResNet50 up to layer3 + global average pool, 1024-d),
Xiyue-Wang/TransPath ``ctran.py`` (``ConvStem``), timm's pretrained configs for the ImageNet weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ._config import EncoderConfig
from ._layers import register_layer
from ._registry import register_encoder

__all__ = ["CTransPathConvStem"]


@register_layer("ctranspath_conv_stem")  # the name the ctranspath preset's timm_kwargs use
class CTransPathConvStem(nn.Module):
    """CTransPath's patch embedding: two stride-2 3x3 convs (BN, ReLU) and a 1x1 projection; NHWC output.

    Takes the keyword arguments timm's Swin passes to its ``embed_layer``; parameter names match the released
    CTransPath checkpoint (``patch_embed.proj.{0,1,3,4,6}``, ``patch_embed.norm``).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: type[nn.Module] | None = None,
        output_fmt: str = "NHWC",
        **_: object,
    ) -> None:
        super().__init__()
        if patch_size != 4:
            raise ValueError("the CTransPath stem downsamples by 4 (patch_size=4)")
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        stem: list[nn.Module] = []
        in_dim, out_dim = in_chans, embed_dim // 8
        for _ in range(2):
            stem += [nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out_dim)]
            stem.append(nn.ReLU(inplace=True))
            in_dim, out_dim = out_dim, out_dim * 2
        stem.append(nn.Conv2d(in_dim, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*stem)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C, H/4, W/4)
        return self.norm(x.permute(0, 2, 3, 1))  # (B, H/4, W/4, C)


@register_encoder
def resnet50_trunc() -> EncoderConfig:
    return EncoderConfig(
        name="resnet50_trunc",
        timm_name="resnet50",
        input_size=224,
        interpolation="bilinear",
        dim=1024,
        pooling="model",  # global average pool of layer3
        precision="fp16",
        hub_id="timm/resnet50.tv_in1k",
        truncate_after="layer3",
        license="BSD-3-Clause",
        description="ResNet50 (torchvision ImageNet weights) up to layer3 + global average pool, as in CLAM",
    )


@register_encoder
def ctranspath() -> EncoderConfig:
    return EncoderConfig(
        name="ctranspath",
        timm_name="swin_tiny_patch4_window7_224",
        timm_kwargs={"embed_layer": "ctranspath_conv_stem", "num_classes": 0},
        input_size=224,
        interpolation="bilinear",
        dim=768,
        pooling="model",
        precision="fp16",
        hub_id=None,
        license="GPL-3.0",
        description="CTransPath Swin-T with a conv stem; weights: ctranspath.pth from the TransPath repo (--weights)",
    )


@register_encoder
def swin_tiny_imagenet() -> EncoderConfig:
    return EncoderConfig(
        name="swin_tiny_imagenet",
        timm_name="swin_tiny_patch4_window7_224",
        input_size=224,
        dim=768,
        pooling="model",
        precision="bf16",
        hub_id="timm/swin_tiny_patch4_window7_224.ms_in1k",
        license="MIT",
        description="Swin-T ImageNet-1k (the CTransPath backbone without pathology pretraining)",
    )


@register_encoder
def efficientnet_lite0() -> EncoderConfig:
    return EncoderConfig(
        name="efficientnet_lite0",
        timm_name="tf_efficientnet_lite0",
        input_size=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        dim=1280,
        pooling="model",
        precision="bf16",
        hub_id="timm/tf_efficientnet_lite0.in1k",
        # Pairing by order (shapes checked) loads both timm's file and the lukemelas-named one in ../shared.
        weights_remap="by_order",
        license="Apache-2.0",
        description="EfficientNet-Lite0 ImageNet-1k (small, fast CPU baseline)",
    )


@register_encoder
def tiny_test() -> EncoderConfig:
    return EncoderConfig(
        name="tiny_test",
        timm_name="test_vit",
        timm_kwargs={"img_size": 64, "num_classes": 0},
        input_size=64,
        interpolation="area",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        dim=64,
        pooling="model",
        precision="bf16",
        random_init=True,
        license="Apache-2.0",
        description="tiny random-init ViT (timm test_vit) for tests and smoke runs",
    )
