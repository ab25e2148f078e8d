"""Faults and bad input, as a user meets them through the installed ``wsi-pipeline`` (issue 20): stale results after
a changed input, failed re-tiling, symlink loops, config typos, CSV details, usage mistakes, and the reuse checks no
other test guards. Each test runs the CLI in a subprocess and asserts what the user sees: the exit code, one line
naming the file and the fix, the manifests, and that nothing stale survives."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CMU_SMALL, MIL_DATA, ROOT, SLIDES, need_real_data
from tests.slide_factory import make_pyramid_slide
from tests.test_cli import ENTRY_POINT
from wsi_pipeline.batch import read_manifest
from wsi_pipeline.store import read_attrs, store_path

QUICK = ["--set", "max_tiles=4", "--set", "qc.enabled=false"]
PREDICT = ["--no-heatmaps", "--no-report", "--device", "cpu"]  # the report has its own tests (test_report.py)
SMALL = SLIDES / "small.svs"  # a real 16 x 16 px Aperio slide


def cli(*args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed entry point in a subprocess, from ``cwd``."""
    environ = {k: v for k, v in os.environ.items() if k != "WSI_PIPELINE_DEBUG"}
    environ.update(COLUMNS="250", NO_COLOR="1", **(env or {}))
    cmd = [sys.executable, str(ENTRY_POINT), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=environ, cwd=cwd, timeout=300)


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr


def refusal(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """The one ``error:`` line of a refused command (exit ``code``, no traceback)."""
    assert result.returncode == code, result.stdout + result.stderr
    no_traceback(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def records(out_dir: Path, stage: str) -> dict[str, tuple[str, str]]:
    """``slide_id -> (status, reason)`` from the stage's manifest."""
    return {rec.slide_id: (rec.status, rec.error or "") for rec in read_manifest(out_dir, stage)}


def predictions(out_dir: Path) -> dict[str, dict[str, str]]:
    with (out_dir / "predictions.csv").open(newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle)}


def copies(source: Path, folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}{source.suffix}" for name in names]
    for path in paths:
        shutil.copyfile(source, path)
    return paths


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ABMIL run (``make_run``)."""
    return make_run(tmp_path_factory.mktemp("faults_run"))


def make_run(root: Path) -> Path:
    """An ABMIL run (2 folds, 1 epoch) on four copies of the real slide, 4 tiles each, embedded with a seeded random
    EfficientNet-Lite0 (slide files can then be predicted without a weights file); ``root/stores`` holds them."""
    need_real_data(CMU_SMALL)
    from wsi_pipeline.embedding import EmbedConfig, embed_stores
    from wsi_pipeline.tiling import QcConfig, TileConfig, tile_slides
    from wsi_pipeline.training import TrainConfig, train

    slides = copies(CMU_SMALL, root / "slides", ["a", "b", "c", "d"])
    assert not tile_slides(slides, root / "stores", config=TileConfig(max_tiles=4, qc=QcConfig(enabled=False))).failed
    embed = EmbedConfig(encoder="efficientnet_lite0", weights="random", num_workers=0, device="cpu")
    assert not embed_stores(root / "stores", config=embed).failed
    labels = root / "labels.csv"
    labels.write_text("slide_id,label\na,x\nb,x\nc,y\nd,y\n")
    config = TrainConfig(model="abmil", folds=2, epochs=1, val_fraction=0.0, plots=False, device="cpu")
    return train(root / "stores", labels, root / "runs", config).run_dir


# --------------------------------------------------------------------------------------------- case 1
@pytest.mark.slow
def test_predict_slide_files_never_reuses_a_result_of_a_replaced_slide(run: Path, tmp_path: Path) -> None:
    """Issue 20 case 1: a slide file replaced by another under the same name, predicted into the same folder, fails
    with what changed and ``--overwrite``; its old result leaves predictions.csv; ``--overwrite`` redoes it."""
    need_real_data(SMALL)
    slide = copies(CMU_SMALL, tmp_path / "in", ["s"])[0]
    first = cli("predict", run, slide, "-o", tmp_path / "pred", *PREDICT)
    assert first.returncode == 0, first.stderr
    assert "s" in predictions(tmp_path / "pred")

    shutil.copyfile(SMALL, slide)  # another slide under the same name
    again = cli("predict", run, slide, "-o", tmp_path / "pred", *PREDICT)
    assert again.returncode == 1, again.stderr
    no_traceback(again)
    status, reason = records(tmp_path / "pred", "predict")["s"]
    assert status == "failed", reason
    assert "made from another slide file (slide size 2220x2967 -> 16x16" in reason and "--overwrite" in reason
    assert "s" not in predictions(tmp_path / "pred")  # the old result is not presented as this slide's

    # --overwrite redoes it: the 16 px slide has no tissue, so it fails, and the old store goes too.
    redo = cli("predict", run, slide, "-o", tmp_path / "pred", *PREDICT, "--overwrite")
    assert redo.returncode == 1
    no_traceback(redo)
    status, reason = records(tmp_path / "pred", "predict")["s"]
    assert status == "failed" and "no tissue found" in reason and "its old store was removed" in reason, reason
    assert not store_path(tmp_path / "pred" / "stores", "s").exists()


@pytest.mark.slow
def test_predict_slide_files_never_reuses_a_result_made_at_another_slide_mpp(run: Path, tmp_path: Path) -> None:
    """Issue 20 case 1: a slide without its own resolution predicted with ``--slide-mpp 0.25``, then ``0.5``, into
    the same folder: the second run fails the slide with the change instead of keeping the 0.25 result."""
    bare = make_pyramid_slide(tmp_path / "bare.tiff", width=2000, height=1600, mpp=None, vendor="generic").path
    first = cli("predict", run, bare, "-o", tmp_path / "pred", *PREDICT, "--slide-mpp", "0.25")
    assert first.returncode == 0, first.stderr
    other = cli("predict", run, bare, "-o", tmp_path / "pred", *PREDICT, "--slide-mpp", "0.5")
    assert other.returncode == 1, other.stderr
    no_traceback(other)
    status, reason = records(tmp_path / "pred", "predict")["bare"]
    assert status == "failed" and "slide mpp 0.25 -> 0.5" in reason and "--overwrite" in reason
    assert "bare" not in predictions(tmp_path / "pred")
    same = cli("predict", run, bare, "-o", tmp_path / "pred", *PREDICT, "--slide-mpp", "0.25")
    assert same.returncode == 0, same.stderr
    assert records(tmp_path / "pred", "predict")["bare"][0] in ("ok", "skipped")


# --------------------------------------------------------------------------------------------- case 2
EMBED = ["-e", "efficientnet_lite0", "-w", "random", "-j", "0", "--device", "cpu"]


def embed_config():  # noqa: ANN201 - an EmbedConfig, imported when used
    """``EMBED`` as a library config, for set-ups and clean runs done in process (faster than the CLI)."""
    from wsi_pipeline.embedding import EmbedConfig

    return EmbedConfig(encoder="efficientnet_lite0", weights="random", num_workers=0, device="cpu")


def test_a_failed_tile_overwrite_leaves_no_old_store_looking_finished(tmp_path: Path) -> None:
    """Issue 20 case 2: slides replaced by a corrupt file and by a tissue-free one; ``tile --overwrite`` fails them,
    and their old stores (with embeddings) are gone, so the next ``embed`` cannot call them done."""
    need_real_data(SLIDES / "broken.svs")
    from wsi_pipeline.embedding import embed_stores

    slides = copies(CMU_SMALL, tmp_path / "slides", ["corrupt", "blank", "kept"])
    assert cli("tile", tmp_path / "slides", "-o", tmp_path / "stores", *QUICK).returncode == 0
    assert not embed_stores(tmp_path / "stores", config=embed_config()).failed  # set-up: in process, faster

    shutil.copyfile(SLIDES / "broken.svs", slides[0])
    make_pyramid_slide(tmp_path / "blank.tiff", width=1200, height=1000, mpp=0.5, tissue_boxes=[])
    shutil.copyfile(tmp_path / "blank.tiff", slides[1])
    retiled = cli("tile", tmp_path / "slides", "-o", tmp_path / "stores", *QUICK, "--overwrite")
    assert retiled.returncode == 1
    no_traceback(retiled)
    tiled = records(tmp_path / "stores", "tile")
    assert tiled["kept"][0] == "ok"
    for sid in ("corrupt", "blank"):
        status, reason = tiled[sid]
        assert status == "failed" and "its old store was removed" in reason, reason
        assert not store_path(tmp_path / "stores", sid).exists()
        assert not (tmp_path / "stores" / "qc" / f"{sid}.jpg").exists()

    again = cli("embed", tmp_path / "stores", *EMBED)
    no_traceback(again)
    assert again.returncode == 0, again.stderr  # only "kept" is a store now, and it is done
    manifest = read_manifest(tmp_path / "stores", "embed-efficientnet_lite0")
    assert [rec.slide_id for rec in manifest if rec.status == "skipped"] == ["kept"]


# --------------------------------------------------------------------------------------------- case 5
@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("tiles:\n  tile_size: 512\n", ["unknown section 'tiles'", "did you mean 'tile'?", "tile, embed"]),
        ("tile_size: 512\n", ["'tile_size' is a key of the tile: section", "under 'tile:'"]),
        ("tile:\n  tile_sise: 512\n", ["unknown key 'tile_sise'", "did you mean 'tile_size'?", "valid keys: edge"]),
        ("tile:\n  mask:\n    pen_filtre: true\n", ["tile.mask: unknown key 'pen_filtre'", "'pen_filter'?"]),
        ("tile:\n  tile_size: [512\n  stride: 3\n", ["c.yaml:3:", "not valid YAML (line 3, column"]),
        ("tile:\n\ttile_size: 512\n", ["c.yaml:2:1", "line 2, column 1"]),
    ],
)
def test_config_typos_are_errors_naming_the_key_and_the_closest_one(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    """Issue 20 case 5: a misspelt section, flat keys, a misspelt (nested) key and YAML syntax errors are refused
    before any slide is touched, in one line naming the file, the valid names and the closest match (or the line
    and column)."""
    config = tmp_path / "c.yaml"
    config.write_text(text)
    line = refusal(cli("tile", CMU_SMALL, "-o", tmp_path / "out", "-c", config))
    assert str(config) in line
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "out").exists()


def test_usage_mistakes_in_set_and_shard_exit_2(tmp_path: Path) -> None:
    """Issue 20 case 6 (last item): ``--set``/``--shard`` mistakes are usage mistakes: exit 2, one error line."""
    for args, needle in [
        (["--set", "tile_sise=3"], "--set tile_sise: unknown key 'tile_sise' in tile; did you mean 'tile_size'?"),
        (["--set", "novalue"], "expected KEY=VALUE"),
        (["--set", "mask.nope=1"], "unknown key 'nope' in mask"),
        (["--shard", "3/2"], "--shard 3/2: need 0 <= i < n"),
        (["--shard", "x"], "--shard 'x': expected i/n"),
    ]:
        line = refusal(cli("tile", CMU_SMALL, "-o", tmp_path / "out", *args), code=2)
        assert needle in line, line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- case 3
def test_symlink_loops_and_missing_slides_fail_alone(tmp_path: Path) -> None:
    """Issue 20 case 3: symlink loops (to itself, between two links), a dangling link and a folder named like a
    slide inside a slide folder, and a loop or a missing file named as an argument: each such slide is a failed
    record saying what is wrong (the folder a warning), and the real slide is tiled."""
    folder = tmp_path / "slides"
    copies(CMU_SMALL, folder, ["real"])
    (folder / "self.svs").symlink_to("self.svs")
    (folder / "a.svs").symlink_to("b.svs")
    (folder / "b.svs").symlink_to("a.svs")
    (folder / "dangling.svs").symlink_to("nowhere.svs")
    (folder / "y.svs").mkdir()
    result = cli("tile", folder, "-o", tmp_path / "out", *QUICK)
    assert result.returncode == 1
    no_traceback(result)
    tiled = records(tmp_path / "out", "tile")
    assert tiled.pop("real")[0] == "ok"
    for sid in ("self", "a", "b"):
        assert tiled.pop(sid) == ("failed", f"{folder / sid}.svs: {LOOP}")
    status, reason = tiled.pop("dangling")
    assert status == "failed" and "a symbolic link to nowhere.svs, which does not exist" in reason
    assert not tiled
    assert f"{folder / 'y.svs'} is a folder, not a slide file: skipped" in result.stderr

    named = cli(
        "tile", folder / "self.svs", tmp_path / "missing.svs", folder / "real.svs", "-o", tmp_path / "o2", *QUICK
    )
    assert named.returncode == 1
    no_traceback(named)
    tiled = records(tmp_path / "o2", "tile")
    assert tiled["real"][0] == "ok" and tiled["self"] == ("failed", f"{folder / 'self.svs'}: {LOOP}")
    assert tiled["missing"] == ("failed", f"{tmp_path / 'missing.svs'}: no such file; check the slide path or manifest")


LOOP = "a symbolic link loop (it leads back to itself); point it at the slide or remove it"


# --------------------------------------------------------------------------------------------- case 6
def test_manifests_with_a_bom_keep_non_ascii_ids_and_refuse_one_file_under_two_ids(tmp_path: Path) -> None:
    """Issue 20 case 6: a manifest saved by Excel (UTF-8 BOM, CRLF) is read; slide names that differ only in
    non-ASCII letters stay two slides with their own ids; one file listed under two ids is refused, naming both."""
    folder = tmp_path / "slides"
    cafe, cafe2 = copies(CMU_SMALL, folder, ["café", "cafë"])
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(f"path\r\n{cafe}\r\n{cafe2}\r\n".encode("utf-8-sig"))
    result = cli("tile", manifest, "-o", tmp_path / "out", *QUICK)
    assert result.returncode == 0, result.stderr
    assert {sid: status for sid, (status, _) in records(tmp_path / "out", "tile").items()} == {
        "café": "ok",
        "cafë": "ok",
    }

    twice = tmp_path / "twice.csv"
    twice.write_bytes(f"path,slide_id\n{cafe},A\n{cafe},B\n".encode("utf-8-sig"))
    line = refusal(cli("tile", twice, "-o", tmp_path / "o2", *QUICK))
    assert f"{cafe}: listed twice, as slide ids 'A' and 'B'" in line and "list it once" in line

    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(f"path\n{cafe}\n".encode("latin-1"))
    line = refusal(cli("tile", latin1, "-o", tmp_path / "o3", *QUICK))
    assert f"{latin1}: not UTF-8 text" in line and "save the slide manifest as UTF-8" in line


@pytest.mark.slow
def test_labels_with_a_bom_and_duplicates_then_predicting_other_stores(tmp_path: Path) -> None:
    """Issue 20 case 6: a labels CSV with a BOM and an identical duplicate row trains (the duplicate is said, once
    counted); stores without embeddings get `embed` as the fix, not an empty encoder list; a model trained on
    converted MIL bags, given slide stores, says so instead of suggesting an `embed --encoder mil-features` that
    does not exist."""
    need_real_data(MIL_DATA / "musk1.csv")
    assert cli("convert-mil", MIL_DATA / "musk1.csv", "-o", tmp_path / "mil").returncode == 0
    bags, labels = tmp_path / "mil" / "musk1" / "stores", tmp_path / "mil" / "musk1" / "labels.csv"
    rows = labels.read_text().splitlines()
    labels_bom = tmp_path / "labels.csv"
    labels_bom.write_bytes(("\r\n".join([*rows, rows[1]]) + "\r\n").encode("utf-8-sig"))
    args = ["-l", labels_bom, "-m", "abmil", "--device", "cpu", "--set", "epochs=1", "--set", "folds=2"]
    trained = cli("train", bags, "-o", tmp_path / "runs", *args)
    assert trained.returncode == 0, trained.stderr
    sid = rows[1].split(",")[0]
    assert f"slide '{sid}' is listed again (line 2, same label); it counts once" in trained.stderr

    stores = tmp_path / "stores"
    assert cli("tile", *copies(CMU_SMALL, tmp_path / "slides", ["p", "q"]), "-o", stores, *QUICK).returncode == 0
    (tmp_path / "pq.csv").write_text("slide_id,label\np,x\nq,y\n")
    line = refusal(cli("train", stores, "-l", tmp_path / "pq.csv", "-o", tmp_path / "r2"))
    assert "the stores hold no embeddings yet; run `wsi-pipeline embed" in line, line

    run = next((tmp_path / "runs").iterdir())
    line = refusal(cli("predict", run, stores, "-o", tmp_path / "pred", *PREDICT))
    assert "that `wsi-pipeline embed` does not make" in line and "embed --encoder mil-features" not in line, line


def test_submit_without_a_reachable_slurm_suggests_local(tmp_path: Path) -> None:
    """Issue 20 case 6: ``submit`` where sbatch cannot reach a Slurm controller points at ``--local``."""
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/sh\necho "sbatch: error: Batch job submission failed: Unable to contact slurm controller" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    copies(CMU_SMALL, tmp_path / "slides", ["a"])
    (tmp_path / "labels.csv").write_text("slide_id,label\na,x\n")
    env = {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    args = [
        "submit",
        tmp_path / "slides",
        "--out",
        tmp_path / "run",
        "-e",
        "efficientnet_lite0",
        "-l",
        tmp_path / "labels.csv",
    ]
    line = refusal(cli(*args, env=env))
    assert "Unable to contact slurm controller" in line and "add --local to run the stages on this machine" in line


# --------------------------------------------------------------------------------------------- case 7
def test_retiling_a_slide_without_its_own_mpp_at_another_slide_mpp_is_refused_then_redone(tmp_path: Path) -> None:
    """Issue 20 case 7 (guards the slide-mpp comparison of ``store_changes``): a slide that states no resolution,
    tiled with ``--slide-mpp 0.25``, then again with ``0.5`` into the same folder: failed with the change and the
    fix, never skipped as done; ``--overwrite`` re-tiles it at the new resolution; the same value is skipped."""
    bare = make_pyramid_slide(tmp_path / "bare.tiff", width=2000, height=1600, mpp=None, vendor="generic").path
    out = tmp_path / "out"
    assert cli("tile", bare, "-o", out, *QUICK, "--slide-mpp", "0.25").returncode == 0
    other = cli("tile", bare, "-o", out, *QUICK, "--slide-mpp", "0.5")
    assert other.returncode == 1, other.stderr
    no_traceback(other)
    status, reason = records(out, "tile")["bare"]
    assert status == "failed" and "slide mpp 0.25 -> 0.5" in reason and "--overwrite" in reason, reason
    assert read_attrs(store_path(out, "bare"))["slide"]["mpp"] == 0.25

    redone = cli("tile", bare, "-o", out, *QUICK, "--slide-mpp", "0.5", "--overwrite")
    assert redone.returncode == 0, redone.stderr
    assert read_attrs(store_path(out, "bare"))["slide"]["mpp"] == 0.5
    same = cli("tile", bare, "-o", out, *QUICK, "--slide-mpp", "0.5")
    assert same.returncode == 0 and records(out, "tile")["bare"][0] == "skipped"


def test_every_shipped_config_passes_the_checks() -> None:
    """The defaults and presets in configs/ hold only known sections and keys (a renamed setting fails here, not in
    a user's run)."""
    from wsi_pipeline.annotations import AnnotateConfig
    from wsi_pipeline.cluster import SubmitConfig
    from wsi_pipeline.cohort import CohortConfig
    from wsi_pipeline.config import check_keys, check_sections, read_yaml
    from wsi_pipeline.embedding import EmbedConfig
    from wsi_pipeline.predict import PredictConfig
    from wsi_pipeline.tiling import TileConfig
    from wsi_pipeline.training import TrainConfig

    classes = {
        "tile": TileConfig,
        "embed": EmbedConfig,
        "annotate": AnnotateConfig,
        "train": TrainConfig,
        "predict": PredictConfig,
        "submit": SubmitConfig,
        "cohort": CohortConfig,
    }
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(files) > 10
    for path in files:
        data = read_yaml(path)
        check_sections(path, data)
        for section, values in data.items():
            check_keys(classes[section], values or {}, f"{path}: {section}")


# --------------------------------------------------------------------------------------------- case 4: predict
def _predictions(out: Path) -> dict[str, tuple[str, ...]]:
    with (out / "predictions.csv").open(newline="") as handle:
        return {row["slide_id"]: tuple(row.values()) for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_predict_on_a_full_disk_and_killed_at_several_points_ends_as_a_clean_run(run: Path, tmp_path: Path) -> None:
    """``predict`` onto a full file system fails each slide in one line and leaves nothing behind; killed with
    SIGKILL at its 1st, 3rd and 5th rename, the rerun gives the predictions of a clean run (the fault module's
    tools; here to share the trained run)."""
    from tests.test_fault_fs import FIX, NO_SPACE, killed_at, leftovers, small_fs

    stores = run.parents[1] / "stores"
    shutil.copytree(stores, tmp_path / "clean_stores")
    args = [run, "--no-heatmaps", "--device", "cpu"]
    clean = cli("predict", *args[:1], tmp_path / "clean_stores", "-o", tmp_path / "clean", *args[1:])
    assert clean.returncode == 0, clean.stderr
    with small_fs(tmp_path / "disk", "16m") as disk:
        shutil.copytree(stores, disk / "stores")
        ballast = disk / "ballast"
        with contextlib.suppress(OSError), ballast.open("wb") as handle:
            while True:
                handle.write(b"\0" * 65536)
        full = cli("predict", run, disk / "stores", "-o", disk / "pred", *args[1:])
        assert full.returncode == 1
        no_traceback(full)
        assert NO_SPACE in full.stderr and FIX in full.stderr
        assert leftovers(disk) == []
        ballast.unlink()
        for n in (1, 3, 5):
            killed = killed_at(n, "predict", run, disk / "stores", "-o", disk / "pred", *args[1:], tmp_path=tmp_path)
            assert killed.returncode == -9, killed.stderr
        again = cli("predict", run, disk / "stores", "-o", disk / "pred", *args[1:])
        assert again.returncode == 0, again.stderr
        assert leftovers(disk) == []
        assert _predictions(disk / "pred") == _predictions(tmp_path / "clean")
