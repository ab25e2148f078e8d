"""Pathology foundation ViTs that timm builds: UNI, UNI2-h, Virchow2, H-optimus-0, Prov-GigaPath.

Sources: the model cards on the Hugging Face hub (MahmoodLab/UNI, MahmoodLab/UNI2-h, paige-ai/Virchow2,
bioptimus/H-optimus-0, prov-gigapath/prov-gigapath) and their timm ``config.json``; the precision recommendations
follow the cards and mahmoodlab/TRIDENT. All of these weights are gated: accept the terms on the model page,
``hf auth login``, or pass a downloaded file with ``--weights``.

Phikon-v2 (owkin/phikon-v2) is not shipped: its weights are a ``transformers`` Dinov2 checkpoint, not a timm model.
"""

from __future__ import annotations

from ._config import EncoderConfig
from ._registry import register_encoder

__all__: list[str] = []

_GATED = "gated on the Hugging Face hub (accept the terms on the model page, then `hf auth login`)"


@register_encoder
def uni() -> EncoderConfig:
    return EncoderConfig(
        name="uni",
        timm_name="vit_large_patch16_224",
        timm_kwargs={
            "img_size": 224,
            "patch_size": 16,
            "init_values": 1e-5,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
        input_size=224,
        interpolation="bicubic",
        dim=1024,
        pooling="model",  # cls token
        precision="fp16",
        hub_id="MahmoodLab/UNI",
        hub_files=("pytorch_model.bin", "model.safetensors"),
        license="CC-BY-NC-ND-4.0",
        gated=True,
        description=f"UNI ViT-L/16 (Mass General Brigham, 100M tiles); {_GATED}",
    )


@register_encoder
def uni2_h() -> EncoderConfig:
    return EncoderConfig(
        name="uni2_h",
        timm_name="vit_giant_patch14_224",
        timm_kwargs={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "num_classes": 0,
            "no_embed_class": True,
            "mlp_layer": "swiglu_packed",
            "act_layer": "silu",
            "reg_tokens": 8,
            "dynamic_img_size": True,
        },
        input_size=224,
        dim=1536,
        pooling="model",  # cls token
        precision="bf16",
        hub_id="MahmoodLab/UNI2-h",
        hub_files=("pytorch_model.bin", "model.safetensors"),
        license="CC-BY-NC-ND-4.0",
        gated=True,
        description=f"UNI2-h ViT-H/14 with 8 registers (200M tiles); {_GATED}",
    )


@register_encoder
def virchow2() -> EncoderConfig:
    return EncoderConfig(
        name="virchow2",
        timm_name="vit_huge_patch14_224",
        timm_kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "mlp_ratio": 5.3375,
            "reg_tokens": 4,
            "global_pool": "",
            "dynamic_img_size": True,
            "mlp_layer": "swiglu_packed",
            "act_layer": "silu",
        },
        input_size=224,
        dim=2560,
        pooling="cls_mean",  # the card's embedding: cls token + mean of the 256 patch tokens (registers excluded)
        precision="fp16",
        hub_id="paige-ai/Virchow2",
        license="CC-BY-NC-ND-4.0",
        gated=True,
        description=f"Virchow2 ViT-H/14 with 4 registers (Paige); {_GATED}",
    )


@register_encoder
def h_optimus_0() -> EncoderConfig:
    return EncoderConfig(
        name="h_optimus_0",
        timm_name="vit_giant_patch14_reg4_dinov2",
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": False},
        input_size=224,
        mean=(0.707223, 0.578729, 0.703617),
        std=(0.211883, 0.230117, 0.177517),
        dim=1536,
        pooling="model",  # cls token
        precision="fp16",
        hub_id="bioptimus/H-optimus-0",
        license="Apache-2.0",
        gated=True,
        description=f"H-optimus-0 ViT-g/14 with 4 registers (Bioptimus); {_GATED}",
    )


@register_encoder
def prov_gigapath() -> EncoderConfig:
    return EncoderConfig(
        name="prov_gigapath",
        timm_name="vit_giant_patch14_dinov2",
        timm_kwargs={"img_size": 224, "in_chans": 3, "num_classes": 0, "global_pool": "token"},
        input_size=224,
        resize="center_crop",  # the card's Resize(256) + CenterCrop(224)
        crop_pct=224 / 256,
        dim=1536,
        pooling="model",  # cls token
        precision="fp16",
        hub_id="prov-gigapath/prov-gigapath",
        license="Apache-2.0",
        gated=True,
        description=f"Prov-GigaPath tile encoder ViT-g/14 (Providence, 1.3B tiles); {_GATED}",
    )
