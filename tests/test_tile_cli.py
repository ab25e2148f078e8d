"""`wsi-pipeline tile`: options reach the library, exit codes, and one real end-to-end run."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.slide_factory import make_pyramid_slide
from wsi_pipeline.batch import BatchResult, Shard
from wsi_pipeline.cli import app
from wsi_pipeline.store import list_stores

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict]:
    seen: list[dict] = []

    def fake(entries, out, **kwargs):
        seen.append({"entries": entries, "out": out, **kwargs})
        return BatchResult(records=[], manifest=Path(out) / "manifests" / "tile.csv")

    # The command imports the library when it runs (so --help never loads it): patch the library's name.
    monkeypatch.setattr(importlib.import_module("wsi_pipeline.tiling"), "tile_slides", fake)
    for name in ("a.svs", "b.svs"):
        (tmp_path / name).write_bytes(b"")
    return seen


def test_options_reach_the_library(calls: list[dict], tmp_path: Path) -> None:
    args = ["tile", str(tmp_path), "--out", str(tmp_path / "out"), "--target-mpp", "0.25", "--tile-size", "256"]
    args += ["--stride", "128", "--min-tissue", "0.3", "--set", "mask.pen_filter=true", "--set", "edge=pad"]
    args += ["--slide-mpp", "0.5", "--shard", "1/2", "--overwrite"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (call,) = calls
    cfg = call["config"]
    assert (cfg.target_mpp, cfg.tile_size, cfg.stride, cfg.min_tissue, cfg.edge) == (0.25, 256, 128, 0.3, "pad")
    assert cfg.mask.pen_filter is True
    assert call["shard"] == Shard(1, 2) and call["overwrite"] is True
    assert [(e.slide_id, e.mpp, e.default_mpp) for e in call["entries"]] == [("a", None, 0.5), ("b", None, 0.5)]


def test_config_preset_and_slurm_shard(calls: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    preset = ROOT / "configs" / "presets" / "20x-256px.yaml"
    result = runner.invoke(app, ["tile", str(tmp_path / "a.svs"), "-o", str(tmp_path / "o"), "-c", str(preset)])
    assert result.exit_code == 0, result.output
    assert calls[0]["config"].tile_size == 256 and calls[0]["shard"] == Shard(2, 4)


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tile", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "no such file or folder" in str(result.exception)
    result = runner.invoke(app, ["tile", str(tmp_path), "-o", str(tmp_path / "o"), "--set", "tile_sise=3"])
    assert result.exit_code != 0 and "unknown key" in str(result.exception)


def test_end_to_end_with_a_failing_slide(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    make_pyramid_slide(slides / "good.svs", width=2000, height=1500, mpp=0.5)
    (slides / "bad.svs").write_bytes(b"not a slide" * 100)
    out = tmp_path / "out"
    result = runner.invoke(app, ["tile", str(slides), "--out", str(out)])
    assert result.exit_code == 1
    assert "1 ok, 0 skipped, 1 failed" in result.output and "does not recognise" in result.output
    assert [p.name for p in list_stores(out)] == ["good.zarr"]
    assert (out / "qc" / "good.jpg").is_file() and (out / "geojson" / "good.geojson").is_file()
    assert (out / "manifests" / "tile.csv").is_file()
    again = runner.invoke(app, ["tile", str(slides / "good.svs"), "--out", str(out)])
    assert again.exit_code == 0 and "0 ok, 1 skipped, 0 failed" in again.output
