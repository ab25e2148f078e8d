"""Weights: real ImageNet EfficientNet-Lite0 weights through the local-checkpoint path (pairing keys by order),
checked on a real photo and on real H&E tiles; key remapping of wrapped checkpoints; offline errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from wsi_pipeline.encoders import create_encoder, file_sha256, load_checkpoint, read_state_dict
from wsi_pipeline.errors import WeightsError
from wsi_pipeline.slide import Slide

from .conftest import CMU_SMALL, WEIGHTS, need_real_data

LITE0 = WEIGHTS / "efficientnet-lite0-57934424.pth"


@pytest.fixture
def lite0(weights_dir: Path) -> Path:
    return weights_dir / LITE0.name


def _cat_photo() -> np.ndarray:
    """scikit-image's chelsea.png, a real photo of a cat shipped in its wheel (never copied into this repo)."""
    spec = importlib.util.find_spec("skimage")
    path = Path(spec.submodule_search_locations[0]) / "data" / "chelsea.png" if spec else None
    if path is None or not path.is_file():
        pytest.skip("no real cat photo available (pip install scikit-image ships data/chelsea.png)")
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_real_weights_load_by_order_and_recognise_a_cat(lite0: Path) -> None:
    model = timm.create_model("tf_efficientnet_lite0").eval()
    with pytest.raises(WeightsError, match="by_order"):  # names differ: the error says which remap fits
        load_checkpoint(model, lite0)
    info = load_checkpoint(model, lite0, remap="by_order")
    assert info.source == "local" and info.sha256 == file_sha256(lite0) and info.sha256.startswith("57934424")
    img = cv2.resize(_cat_photo(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = torch.from_numpy((img - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.inference_mode():
        probs = model(x).softmax(-1)[0]
    top = int(probs.argmax())
    assert 281 <= top <= 285, f"top class {top} is not a cat"  # ImageNet 281-285: domestic cats
    assert probs[281:286].sum() > 0.5


def _tissue_tiles(n: int = 6) -> tuple[list[np.ndarray], np.ndarray]:
    tiles = []
    with Slide(CMU_SMALL) as slide:
        for y in range(0, 2967 - 224, 224):
            for x in range(0, 2220 - 224, 224):
                rgb = slide.read_region((x, y), 0, (224, 224))
                if rgb.mean() < 200:  # mostly stained tissue
                    tiles.append(rgb)
                if len(tiles) == n:
                    return tiles, np.full((224, 224, 3), 245, np.uint8)
    return tiles, np.full((224, 224, 3), 245, np.uint8)


def test_real_weights_give_stable_meaningful_embeddings(lite0: Path) -> None:
    if not CMU_SMALL.exists():
        need_real_data(CMU_SMALL)
    enc = create_encoder("efficientnet_lite0", weights=str(lite0))
    assert enc.weights.source == "local" and enc.weights.sha256 == file_sha256(lite0) and enc.dim == 1280
    tiles, blank = _tissue_tiles()
    assert len(tiles) == 6
    batch = np.stack([*tiles, blank]).astype(np.float32) / 255
    x = torch.from_numpy((batch - 0.5) / 0.5).permute(0, 3, 1, 2)
    with torch.inference_mode():
        emb = enc.model(x)
        again = torch.cat([enc.model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(emb, again, rtol=1e-4, atol=1e-4)  # stable: same tile, same numbers, any batch
    unit = torch.nn.functional.normalize(emb, dim=1)
    sim = unit @ unit.T
    tissue = sim[:6, :6][~torch.eye(6, dtype=torch.bool)]
    to_blank = sim[:6, 6]
    assert tissue.mean() > to_blank.mean() + 0.1, (tissue.mean(), to_blank.mean())
    assert tissue.min() > to_blank.max()  # every H&E tile is closer to the others than to blank glass


def _tiny_state() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=0)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("filename", "wrap"),
    [
        ("plain.pth", lambda sd: sd),
        ("wrapped.pth", lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}),
        ("model.bin", lambda sd: {"model": {f"backbone.{k}": v for k, v in sd.items()}}),
        ("weights.safetensors", lambda sd: {f"model.{k}": v.contiguous() for k, v in sd.items()}),
    ],
)
def test_wrapped_and_prefixed_checkpoints_load(tmp_path: Path, filename: str, wrap) -> None:  # noqa: ANN001
    source, state = _tiny_state()
    path = tmp_path / filename
    data = wrap(state)
    if filename.endswith(".safetensors"):
        save_file(data, str(path))
    else:
        torch.save(data, path)
    torch.manual_seed(1)
    target = timm.create_model("test_resnet", num_classes=0)
    info = load_checkpoint(target, path)
    assert info.sha256 == file_sha256(path)
    for key, value in target.state_dict().items():
        torch.testing.assert_close(value, state[key])
    assert read_state_dict(tmp_path) is not None  # a folder holding one checkpoint works too


def test_classifier_is_dropped_for_headless_models(tmp_path: Path) -> None:
    full = timm.create_model("test_resnet")  # with its 1000-class head
    torch.save(full.state_dict(), tmp_path / "full.pth")
    headless = timm.create_model("test_resnet", num_classes=0)
    load_checkpoint(headless, tmp_path / "full.pth")


def test_wrong_checkpoints_fail_clearly(tmp_path: Path) -> None:
    _, state = _tiny_state()
    torch.save(state, tmp_path / "resnet.pth")
    vit = timm.create_model("test_vit", num_classes=0)
    with pytest.raises(WeightsError, match="keys do not match"):
        load_checkpoint(vit, tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match="cannot pair by order"):
        load_checkpoint(vit, tmp_path / "resnet.pth", remap="by_order")
    with pytest.raises(WeightsError, match="no such weights file"):
        load_checkpoint(vit, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        load_checkpoint(vit, tmp_path / "junk.pth")


def test_offline_mode_fails_with_how_to_provide_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        create_encoder("uni2_h")
    message = str(err.value)
    assert "offline" in message and "MahmoodLab/UNI2-h" in message and "--weights PATH" in message
    assert "\n" not in message
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(WeightsError, match="not in the Hugging Face cache"):
        create_encoder("efficientnet_lite0", offline=True)


def test_unreachable_hub_fails_at_once_with_how_to_provide_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # A dead network is found with one connection attempt, not after huggingface_hub's retries with backoff.
    import socket

    from wsi_pipeline.encoders import hub_file

    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    with pytest.raises(WeightsError) as err:
        hub_file("someorg/not-cached-model", ["model.safetensors"], what="encoder x")
    message = str(err.value)
    assert f"127.0.0.1:{port} cannot be reached" in message and "not in the Hugging Face cache" in message
    assert "--weights PATH" in message and "\n" not in message


def test_explicit_local_file_wins_over_the_hub(lite0: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local file never needs the network
    enc = create_encoder("efficientnet_lite0", weights=str(lite0))
    assert enc.attrs()["weights"]["location"] == str(lite0.resolve())


def test_hf_hub_encoder_name_offline_needs_the_cached_config() -> None:
    with pytest.raises(WeightsError, match=r"config\.json of someorg/somemodel: offline.*--weights PATH"):
        create_encoder("hf-hub:someorg/somemodel", offline=True)


def test_timm_name_loads_a_checkpoint_with_any_head(tmp_path: Path) -> None:
    torch.save(timm.create_model("test_resnet", num_classes=21843).state_dict(), tmp_path / "in21k.pth")
    enc = create_encoder("timm:test_resnet", weights=str(tmp_path / "in21k.pth"))
    assert enc.dim == 96 and enc.weights.source == "local"


def test_hub_weights_path_with_a_stand_in_for_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub path, without network: hf_hub_download replaced by a stand-in that serves a local file."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    state = timm.create_model("tf_efficientnet_lite0").state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    calls = []

    def fake_download(repo_id: str, filename: str, *, local_files_only: bool = False) -> str:
        calls.append((repo_id, filename, local_files_only))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    enc = create_encoder("efficientnet_lite0", offline=True)
    assert calls == [("timm/tf_efficientnet_lite0.in1k", "model.safetensors", True)]
    assert enc.weights.source == "hf-hub:timm/tf_efficientnet_lite0.in1k"
    assert enc.weights.sha256 == file_sha256(tmp_path / "model.safetensors")

    def gated(repo_id: str, filename: str, *, local_files_only: bool = False) -> str:
        err = GatedRepoError.__new__(GatedRepoError)
        Exception.__init__(err, "403 gated")
        raise err

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(WeightsError, match=r"MahmoodLab/UNI2-h is gated.*request access.*--weights PATH"):
        create_encoder("uni2_h")
