"""The encoder registry: every preset builds (big ViTs on the meta device), pools to its documented width, and
names/overrides/errors behave like timm's ``create_model``. Nothing here downloads."""

from __future__ import annotations

import pytest
import timm
import torch

from wsi_pipeline.encoders import (
    EncoderConfig,
    EncoderModule,
    build_timm_model,
    create_encoder,
    describe_encoders,
    enc_name,
    get_encoder_config,
    list_encoders,
    register_encoder,
)
from wsi_pipeline.errors import EncoderError, WeightsError

# Presets small enough to build for real and run on CPU in a test (random init, never downloaded).
RUNNABLE = ["tiny_test", "efficientnet_lite0", "resnet50_trunc", "swin_tiny_imagenet", "ctranspath"]
FOUNDATION = ["uni", "uni2_h", "virchow2", "h_optimus_0", "prov_gigapath"]


def test_registry_ships_the_promised_presets() -> None:
    assert set(RUNNABLE + FOUNDATION) <= set(list_encoders())
    assert [row["name"] for row in describe_encoders()] == list_encoders()


@pytest.mark.parametrize("name", list_encoders())
def test_preset_metadata_is_complete(name: str) -> None:
    cfg = get_encoder_config(name)
    assert cfg.name == name == enc_name(name)
    assert timm.is_model(cfg.timm_name)
    assert cfg.dim and cfg.dim > 0 and cfg.input_size >= 32
    assert len(cfg.mean) == 3 and len(cfg.std) == 3 and all(s > 0 for s in cfg.std)
    assert cfg.precision in ("bf16", "fp16", "fp32") and cfg.license
    assert cfg.random_init or cfg.hub_id or "--weights" in cfg.description
    if cfg.gated:
        assert cfg.hub_id and not cfg.random_init  # gated weights are never fetched without the user's access


@pytest.mark.parametrize("name", list_encoders())
def test_preset_architecture_pools_to_its_dim_on_meta(name: str) -> None:
    # The meta device builds even the 1.1B-parameter ViTs instantly and checks shapes without any memory.
    cfg = get_encoder_config(name)
    module = EncoderModule(build_timm_model(cfg, device="meta"), cfg.pooling, cfg.truncate_after)
    out = module(torch.empty(2, 3, cfg.input_size, cfg.input_size, device="meta"))
    assert tuple(out.shape) == (2, cfg.dim)


@pytest.mark.parametrize("name", RUNNABLE)
def test_small_presets_embed_for_real(name: str) -> None:
    enc = create_encoder(name, weights="random")
    assert enc.enc_name == name and enc.dim == get_encoder_config(name).dim
    x = torch.randn(2, 3, enc.config.input_size, enc.config.input_size)
    with torch.inference_mode():
        out = enc.model(x)
    assert out.shape == (2, enc.dim) and torch.isfinite(out).all()
    assert enc.attrs()["weights"]["source"] == "random"


def test_random_init_is_seeded() -> None:
    a, b = create_encoder("tiny_test"), create_encoder("tiny_test")
    c = create_encoder("tiny_test", seed=1)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(a.model(x), b.model(x)) and not torch.equal(a.model(x), c.model(x))


def test_resnet50_trunc_is_layer3_average_pool() -> None:
    enc = create_encoder("resnet50_trunc", weights="random", seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        ref = timm.create_model("resnet50", pretrained=False).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        h = ref.maxpool(ref.act1(ref.bn1(ref.conv1(x))))
        expected = ref.layer3(ref.layer2(ref.layer1(h))).mean(dim=(2, 3))  # (2, 1024)
        torch.testing.assert_close(enc.model(x), expected, rtol=1e-4, atol=1e-5)


def test_cls_mean_pooling_skips_register_tokens() -> None:
    model = timm.create_model("test_vit", img_size=64, reg_tokens=2, global_pool="", num_classes=0).eval()
    module = EncoderModule(model, "cls_mean")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        tokens = model.forward_features(x)  # (2, 1 + 2 + 16, 64)
        out = module(x)
    assert module.num_prefix_tokens == 3 and out.shape == (2, 128)
    torch.testing.assert_close(out, torch.cat([tokens[:, 0], tokens[:, 3:].mean(1)], dim=-1))


def test_any_timm_model_name_works_directly() -> None:
    for name in ("timm:test_resnet", "test_resnet"):
        enc = create_encoder(name, weights="random")
        assert enc.enc_name == "test_resnet" and enc.config.timm_name == "test_resnet"
    assert enc_name("hf-hub:MahmoodLab/UNI2-h") == "hf-MahmoodLab--UNI2-h"


def test_overrides_apply_and_none_is_ignored() -> None:
    cfg = get_encoder_config("tiny_test", input_size=96, precision=None)
    assert cfg.input_size == 96 and cfg.precision == "bf16"
    assert create_encoder("tiny_test", input_size=None).config.input_size == 64
    with pytest.raises(EncoderError, match="unknown option.*colour"):
        get_encoder_config("tiny_test", colour="red")
    with pytest.raises(EncoderError, match="pooling"):
        get_encoder_config("tiny_test", pooling="max")


def test_unknown_name_is_a_value_error_listing_presets() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'not_a_model'.*uni2_h"):
        create_encoder("not_a_model")

    def tiny_test() -> EncoderConfig:  # same name as a shipped preset
        raise AssertionError("never called")

    with pytest.raises(EncoderError, match="registered twice"):
        register_encoder(tiny_test)


def test_center_crop_rule() -> None:
    cfg = get_encoder_config("prov_gigapath")
    assert cfg.resize == "center_crop" and cfg.resize_size == 256 and cfg.input_size == 224
    assert get_encoder_config("uni").resize_size == 224


def test_preset_without_hub_weights_asks_for_a_file() -> None:
    with pytest.raises(WeightsError, match="--weights PATH"):
        create_encoder("ctranspath")


def test_config_is_json_safe() -> None:
    import json

    for name in list_encoders():
        cfg = get_encoder_config(name)
        assert EncoderConfig(**{**json.loads(json.dumps(cfg.to_dict()))}).to_dict() == cfg.to_dict()


def test_readme_table_is_generated_from_the_registry() -> None:
    from pathlib import Path

    from wsi_pipeline.encoders import encoders_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "embed.md"
    assert encoders_markdown() in doc.read_text(), "regenerate it with wsi_pipeline.encoders.encoders_markdown()"
