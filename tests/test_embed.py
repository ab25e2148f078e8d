"""The embed stage on real slides: stored embeddings equal a one-tile-at-a-time computation, resume, overwrite,
failed slides, sharding, mixed precision on CPU, worker counts, and the CLI."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
import zarr
from typer.testing import CliRunner

from wsi_pipeline import __version__, store
from wsi_pipeline.batch import Shard, read_manifest
from wsi_pipeline.cli import app
from wsi_pipeline.config import config_to_dict
from wsi_pipeline.embedding import EmbedConfig, EmbedRuntime, embed_slide, embed_stores, resolve_num_workers
from wsi_pipeline.encoders import create_encoder, list_encoders
from wsi_pipeline.slide import Slide

from .conftest import CMU_SMALL, ROOT, SLIDES, need_real_data

ENC = "tiny_test"
FAST = EmbedConfig(encoder=ENC, batch_size=8, num_workers=0)


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tile stores made by the real tile stage: CMU-1-Small-Region.svs and a generated 2-level pyramid."""
    if not CMU_SMALL.exists():
        need_real_data(CMU_SMALL)
    from tests.slide_factory import make_pyramid_slide
    from wsi_pipeline.discovery import discover_slides
    from wsi_pipeline.tiling import QcConfig, TileConfig, tile_slides

    root = tmp_path_factory.mktemp("tiled")
    make_pyramid_slide(root / "slides" / "pyramid.svs", width=3000, height=2400, mpp=0.25)
    out = root / "stores"
    config = TileConfig(max_tiles=20, qc=QcConfig(enabled=False))
    result = tile_slides(discover_slides([CMU_SMALL, root / "slides" / "pyramid.svs"]), out, config=config)
    assert not result.failed, result.records
    return out


@pytest.fixture
def stores(tiled: Path, tmp_path: Path) -> Path:
    out = tmp_path / "stores"
    for path in store.list_stores(tiled):
        shutil.copytree(path, out / path.name)
    return out


def _direct(store_path: Path, encoder_name: str = ENC) -> np.ndarray:
    """Reference: read each tile with OpenSlide, resize, normalise in numpy, run the model on it alone (fp32)."""
    enc = create_encoder(encoder_name)
    attrs = store.read_attrs(store_path)
    level, size = attrs["tiling"]["read_level"], attrs["tiling"]["read_size"]
    spec = enc.config
    rows = []
    with Slide(attrs["slide"]["path"]) as slide, torch.inference_mode():
        for x, y in store.read_coords(store_path):
            rgb = slide.read_region((int(x), int(y)), level, (size, size))
            rgb = cv2.resize(rgb, (spec.input_size, spec.input_size), interpolation=cv2.INTER_AREA)
            img = (rgb.astype(np.float32) / 255 - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
            rows.append(enc.model(torch.from_numpy(img).permute(2, 0, 1)[None])[0].numpy())
    return np.stack(rows)


@pytest.mark.parametrize("workers", [0, 2])
def test_embeddings_match_one_tile_at_a_time(stores: Path, workers: int) -> None:
    config = dataclasses.replace(FAST, num_workers=workers)
    result = embed_stores(stores, config=config)
    assert [r.status for r in result.records] == ["ok", "ok"]
    for path in store.list_stores(stores):  # CMU (level 0, 224 px) and the pyramid (448 px read, resized)
        feats = store.read_features(path, ENC)
        n = len(store.read_coords(path))
        assert feats.shape == (n, 64) and feats.dtype == np.float16 and n > 5
        np.testing.assert_allclose(feats.astype(np.float32), _direct(path), atol=2e-2, rtol=1e-2)
        assert np.isfinite(feats).all() and feats.std(axis=0).mean() > 1e-3  # tiles differ from each other


def test_features_attrs_record_provenance(stores: Path) -> None:
    embed_stores(stores, config=FAST)
    path = store.list_stores(stores)[0]
    array = zarr.open_array(str(path / "features" / ENC), mode="r")
    attrs = array.attrs.asdict()
    assert attrs["complete"] is True
    assert attrs["encoder"] == ENC and attrs["timm_name"] == "test_vit"
    assert attrs["weights"] == {"source": "random", "location": "", "sha256": None}
    assert attrs["precision"] == "fp32" and attrs["input_size"] == 64
    assert attrs["mean"] == [0.5, 0.5, 0.5] and attrs["std"] == [0.5, 0.5, 0.5]
    assert attrs["package_version"] == __version__ and attrs["config"]["encoder"] == ENC
    assert array.chunks[0] >= array.shape[0]  # the whole bag is one chunk: one read


def test_resume_skips_and_overwrite_redoes(stores: Path) -> None:
    first = embed_stores(stores, config=FAST)
    assert [r.status for r in first.records] == ["ok", "ok"]
    path = store.list_stores(stores)[0]
    before = (path / "features" / ENC / "zarr.json").stat().st_mtime_ns
    again = embed_stores(stores, config=FAST)
    assert [r.status for r in again.records] == ["skipped", "skipped"]
    assert (path / "features" / ENC / "zarr.json").stat().st_mtime_ns == before
    redo = embed_stores(stores, config=FAST, overwrite=True)
    assert [r.status for r in redo.records] == ["ok", "ok"]
    assert (path / "features" / ENC / "zarr.json").stat().st_mtime_ns != before
    records = read_manifest(stores, "embed-tiny_test")
    assert [r.status for r in records] == ["ok", "ok"] and all(r.n_tiles and r.seconds is not None for r in records)


def test_interrupted_slide_never_looks_finished(stores: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_forward = EmbedRuntime.forward

    def dying_forward(self: EmbedRuntime, tiles: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        # Batch 3 (the end of the first slide, the start of the second) fails, and the first slide fails again when
        # retried alone; the second, retried alone, succeeds.
        if calls["n"] in (3, 4):
            raise RuntimeError("killed mid-slide")
        return real_forward(self, tiles)

    monkeypatch.setattr(EmbedRuntime, "forward", dying_forward)
    result = embed_stores(stores, config=FAST)
    assert result.records[0].status == "failed" and "killed mid-slide" in result.records[0].error
    assert "retried alone" in result.records[0].error and result.records[1].status == "ok"
    first = store.list_stores(stores)[0]
    assert not store.has_features(first, ENC)
    assert [p.name for p in (first / "features").iterdir() if p.is_dir()] == []  # the temporary array is gone
    monkeypatch.setattr(EmbedRuntime, "forward", real_forward)
    killed = first / "features" / f".{ENC}.tmp-otherhost-12345"  # what a SIGKILLed run leaves behind
    shutil.copytree(store.list_stores(stores)[1] / "features" / ENC, killed)
    assert not store.has_features(first, ENC)  # a leftover temporary never counts as finished
    resumed = embed_stores(stores, config=FAST)
    assert [r.status for r in resumed.records] == ["ok", "skipped"]
    assert not killed.exists() and store.has_features(first, ENC)


def test_unreadable_slide_is_recorded_and_batch_goes_on(stores: Path) -> None:
    bad = SLIDES / "unreadable.svs"
    good_attrs = store.read_attrs(store.list_stores(stores)[0])
    attrs = {k: good_attrs[k] for k in ("tiling", "config")}
    with Slide(bad) as slide:  # the store describes that very file: it opens, but its tiles cannot be decoded
        identity = slide.identity()
    attrs["slide"] = {**good_attrs["slide"], "path": str(bad), "id": "a-unreadable", "identity": identity}
    store.write_tile_store(store.store_path(stores, "a-unreadable"), [[0, 0], [224, 0]], [1.0, 1.0], attrs)
    result = embed_stores(stores, config=dataclasses.replace(FAST, num_workers=1))
    status = {r.slide_id: r for r in result.records}
    assert status["a-unreadable"].status == "failed"
    assert "unreadable.svs" in status["a-unreadable"].error and "cannot decode" in status["a-unreadable"].error
    assert "\n" not in status["a-unreadable"].error and "Traceback" not in status["a-unreadable"].error
    assert sorted(r.status for r in result.records) == ["failed", "ok", "ok"]
    assert not store.has_features(store.store_path(stores, "a-unreadable"), ENC)


def test_overflowing_embeddings_are_never_committed(stores: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_forward = EmbedRuntime.forward
    monkeypatch.setattr(EmbedRuntime, "forward", lambda self, tiles: real_forward(self, tiles) * 1e6)
    result = embed_stores(stores, config=FAST)  # 1e6 does not fit in float16
    assert all(r.status == "failed" and "non-finite" in r.error for r in result.records)
    assert not any(store.has_features(p, ENC) for p in store.list_stores(stores))
    ok = embed_stores(stores, config=dataclasses.replace(FAST, dtype="float32"))
    assert all(r.status == "ok" for r in ok.records)


def test_store_without_tiling_attrs_fails_with_the_command(stores: Path) -> None:
    store.write_tile_store(store.store_path(stores, "a-bare"), [[0, 0]], [1.0], {"slide": {"id": "a-bare"}})
    result = embed_stores(stores, config=FAST)
    record = next(r for r in result.records if r.slide_id == "a-bare")
    assert record.status == "failed" and "wsi-pipeline tile" in record.error


def test_empty_store_gets_empty_embeddings(stores: Path) -> None:
    attrs = store.read_attrs(store.list_stores(stores)[0])
    path = store.write_tile_store(store.store_path(stores, "a-empty"), np.zeros((0, 2)), np.zeros(0), attrs)
    enc = create_encoder(ENC)
    assert embed_slide(path, enc, config=FAST) == 0
    assert store.read_features(path, ENC).shape == (0, 64)


def test_shards_split_the_slides(stores: Path) -> None:
    parts = [embed_stores(stores, config=FAST, shard=Shard(i, 2)) for i in range(2)]
    assert sorted(r.slide_id for p in parts for r in p.records) == ["CMU-1-Small-Region", "pyramid"]
    assert all(len(p.records) == 1 for p in parts)
    assert {p.manifest.name for p in parts} == {"embed-tiny_test.shard-0-of-2.csv", "embed-tiny_test.shard-1-of-2.csv"}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_autocast_on_cpu(stores: Path, precision: str) -> None:
    path = store.list_stores(stores)[0]
    enc = create_encoder(ENC)
    config = dataclasses.replace(FAST, precision=precision, device="cpu")
    runtime = EmbedRuntime.create(enc, config)
    try:
        with runtime.autocast():
            torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
    except RuntimeError as err:  # pragma: no cover - older torch without CPU fp16 autocast
        pytest.skip(f"torch has no CPU autocast for {precision}: {err}")
    embed_slide(path, runtime, config=config)
    attrs = zarr.open_array(str(path / "features" / ENC), mode="r").attrs.asdict()
    assert attrs["precision"] == precision
    low = store.read_features(path, ENC).astype(np.float32)
    ref = _direct(path)
    cosine = (low * ref).sum(1) / (np.linalg.norm(low, axis=1) * np.linalg.norm(ref, axis=1))
    assert cosine.min() > 0.98  # reduced precision, same embeddings
    assert not np.array_equal(low, ref.astype(np.float16).astype(np.float32))  # really ran in low precision


def test_precision_auto_is_fp32_on_cpu() -> None:
    runtime = EmbedRuntime.create(create_encoder(ENC), FAST)
    assert runtime.device.type == "cpu" and runtime.precision == "fp32"


def test_cpu_embedding_keeps_freed_memory_only_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc's malloc keeps the encoder's freed memory for its next batch while tiles are embedded (no page faults
    per batch); after, the freed memory is handed back and large blocks are mapped again, so what runs next (a
    predict's fold models and heatmap) does not come on top of it."""
    from wsi_pipeline import _memory
    from wsi_pipeline.embedding import _runtime

    calls: list[tuple[str, int, int]] = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append(("mallopt", param, value))
            return 1

        def malloc_trim(self, pad: int) -> int:
            calls.append(("malloc_trim", pad, 0))
            return 1

    monkeypatch.setattr(_memory, "_libc", Libc)
    monkeypatch.setattr(_runtime, "CPU_CHUNK", 4)
    runtime = EmbedRuntime.create(create_encoder(ENC), dataclasses.replace(FAST, device="cpu"))
    assert not calls  # making the runtime changes no process-wide setting
    with runtime.cpu_threads():
        assert calls == [("mallopt", -3, 32 << 20), ("mallopt", -1, 1 << 30)]
    assert calls[2:] == [("mallopt", -3, 8 << 20), ("mallopt", -1, 16 << 20), ("malloc_trim", 0, 0)]


def test_a_command_that_loaded_torch_gives_the_freed_heap_back_before_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """At exit the libraries of torch's CUDA build page in ~120 MiB of their own: the CLI hands the freed heap back
    first (malloc_trim), so that moment is not the process's peak."""
    import sys

    from wsi_pipeline import _memory, cli

    trims: list[int] = []

    class Libc:
        def malloc_trim(self, pad: int) -> int:
            trims.append(pad)
            return 1

    monkeypatch.setattr(_memory, "_libc", Libc)
    monkeypatch.setattr(sys, "argv", ["wsi-pipeline", "--version"])
    assert "torch" in sys.modules  # this test process has loaded it, as embed, train and predict do
    cli.main()
    assert trims == [0]


def test_worker_count_respects_slurm_and_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_num_workers(EmbedConfig(), cuda, {"SLURM_CPUS_PER_TASK": "6"}) == 5
    assert resolve_num_workers(EmbedConfig(), cpu, {"SLURM_CPUS_PER_TASK": "6"}) == 3
    assert resolve_num_workers(EmbedConfig(), cuda, {"SLURM_CPUS_PER_TASK": "1"}) == 0
    assert resolve_num_workers(EmbedConfig(num_workers=7), cuda, {"SLURM_CPUS_PER_TASK": "2"}) == 7
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert EmbedRuntime.create(create_encoder(ENC), EmbedConfig(encoder=ENC, device="cpu")).num_workers == 2
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    import os

    affinity = len(os.sched_getaffinity(0))
    assert resolve_num_workers(EmbedConfig(), cuda, {}) == min(affinity - 1, 16)


def test_worker_errors_keep_their_one_line_message() -> None:
    from wsi_pipeline.errors import SlideReadError

    wrapped = SlideReadError(
        "Caught SlideReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nwsi_pipeline.errors.SlideReadError: a.svs: cannot decode the region\n'
    )
    from wsi_pipeline.embedding import clean_worker_error

    clean = clean_worker_error(wrapped)
    assert isinstance(clean, SlideReadError) and str(clean) == "a.svs: cannot decode the region"


def test_config_file_mirrors_dataclass_defaults() -> None:
    data = yaml.safe_load((ROOT / "configs" / "embed.yaml").read_text())
    assert data["embed"] == config_to_dict(EmbedConfig())


def test_cli_embeds_and_lists(stores: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["embed", str(stores), "--encoder", ENC, "-j", "0", "-b", "4", "--set", "seed=0"])
    assert result.exit_code == 0, result.output
    assert all(store.has_features(p, ENC) for p in store.list_stores(stores))
    n_tiles = sum(len(store.read_coords(p)) for p in store.list_stores(stores))
    assert f"{ENC}: 2/2 slides" in result.output and f"{n_tiles}/{n_tiles}" in result.output  # one bar for the run
    listed = runner.invoke(app, ["embed", "--list"])
    assert listed.exit_code == 0
    assert all(name in listed.output for name in list_encoders())


def test_cli_passes_options_to_the_library(stores: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def fake_embed_stores(stores_dir, *, config, shard, overwrite, progress, encoder):  # noqa: ANN001
        seen.update(stores_dir=stores_dir, config=config, shard=shard, overwrite=overwrite)
        from wsi_pipeline.batch import BatchResult

        return BatchResult(records=[], manifest=Path(stores_dir) / "manifests" / "embed.csv")

    monkeypatch.setattr("wsi_pipeline.embedding.embed_stores", fake_embed_stores)
    args = ["embed", str(stores), "-e", ENC, "--precision", "bf16", "--batch-size", "16", "--shard", "1/3"]
    result = CliRunner().invoke(app, [*args, "--overwrite", "--offline", "--set", "dtype=float32"])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.encoder, config.precision, config.batch_size, config.dtype) == (ENC, "bf16", 16, "float32")
    assert config.offline is True and seen["overwrite"] is True and seen["shard"] == Shard(1, 3)


def test_cli_unknown_encoder_is_one_line_error(stores: Path) -> None:
    result = CliRunner().invoke(app, ["embed", str(stores), "--encoder", "no_such_model"], standalone_mode=False)
    assert result.exception is not None and "unknown encoder 'no_such_model'" in str(result.exception)
