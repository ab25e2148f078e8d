"""The installed ``wsi-pipeline`` command as a user runs it (a subprocess): usage mistakes give one clear error and
no traceback, and the light commands never import torch or timm."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINT = Path(sys.executable).with_name("wsi-pipeline")
HEAVY = {"torch", "timm", "torchvision"}


def run_cli(*args: str | Path, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run the installed entry point (``pip install -e .`` puts it beside the interpreter)."""
    assert ENTRY_POINT.is_file(), f"{ENTRY_POINT}: the package is not installed; run `make install`"
    env = {k: v for k, v in os.environ.items() if k != "WSI_PIPELINE_DEBUG"}
    env.update(COLUMNS="200", NO_COLOR="1")
    cmd = [sys.executable, *python_flags, str(ENTRY_POINT), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def _imported(result: subprocess.CompletedProcess) -> set[str]:
    """Top-level packages a ``python -X importtime`` run imported (its report is on stderr)."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", result.stderr, re.M)}


def _usage_error(result: subprocess.CompletedProcess, needle: str) -> None:
    """Click's convention: the usage line, then one error line; exit code 2; never a traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Usage: wsi-pipeline"), result.stderr
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr


def _one_line_error(result: subprocess.CompletedProcess, needle: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------- usage mistakes
def test_no_command_shows_the_help_and_exits_2() -> None:
    result = run_cli()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Usage: wsi-pipeline" in result.stderr + result.stdout and "convert-mil" in result.stderr + result.stdout


def test_command_without_its_input_shows_its_help() -> None:
    result = run_cli("tile")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "wsi-pipeline tile" in result.stderr + result.stdout and "--target-mpp" in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("tiles",), "Did you mean 'tile'?"),
        (("tile", "x", "--bogus"), "--bogus"),
        (("tile", "x", "--out", "o", "--target-mpp", "abc"), "'abc' is not a valid float"),
        (("train", "stores", "--out", "runs"), "Missing option '--labels'"),
        (("-v",), "Missing command"),
    ],
)
def test_usage_errors_are_the_usage_line_and_one_error(args: tuple[str, ...], needle: str) -> None:
    _usage_error(run_cli(*args), needle)


def test_out_that_is_a_file_is_a_usage_error(tmp_path: Path, cmu_slide: Path) -> None:
    a_file = tmp_path / "runs"
    a_file.write_text("not a folder")
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\n")
    _usage_error(run_cli("tile", cmu_slide, "--out", a_file), "'--out' / '-o': Directory")
    _usage_error(run_cli("train", tmp_path, "-l", labels, "--out", a_file), "is a file")
    _usage_error(run_cli("predict", labels, tmp_path, "--out", a_file), "is a file")


def test_missing_or_wrong_files_name_the_file_and_the_fix(tmp_path: Path, mil_dir: Path) -> None:
    _usage_error(run_cli("predict", tmp_path / "nope.pt", tmp_path, "-o", tmp_path / "p"), "nope.pt' does not exist")
    # A folder is taken as a training run: one that is not says what to pass.
    line = _one_line_error(run_cli("predict", tmp_path, tmp_path, "-o", tmp_path / "p"), str(tmp_path))
    assert "not a training run folder" in line and "checkpoint file" in line
    # A file that is no checkpoint: say what to pass, not "re-train".
    line = _one_line_error(run_cli("predict", mil_dir / "musk1.csv", tmp_path, "-o", tmp_path / "p"), "musk1.csv")
    assert "not a torch checkpoint" in line and "checkpoint_best.pt" in line and "re-train" not in line
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\na,x\nb,y\n")
    line = _one_line_error(run_cli("train", tmp_path / "no_stores", "-l", labels, "-o", tmp_path / "r"), "no_stores")
    assert "no such folder of slide stores" in line and "wsi-pipeline tile" in line and "CSV" not in line
    line = _one_line_error(run_cli("train", tmp_path, "-l", tmp_path / "nope.csv", "-o", tmp_path / "r"), "nope.csv")
    assert "labels CSV not found" in line and "--labels" in line


def test_embed_on_the_run_folder_points_at_its_stores(tiled_store: Path, tmp_path: Path) -> None:
    # The user passes the run folder instead of run/stores: an error naming run/stores, and nothing written.
    run = tmp_path / "run"
    shutil.copytree(tiled_store, run / "stores" / tiled_store.name)
    line = _one_line_error(run_cli("embed", run, "--encoder", "tiny_test"), str(run / "stores"))
    assert "no slide stores directly in this folder" in line
    assert not (run / "manifests").exists() and not (run / "stores" / "manifests").exists()
    (run / "empty").mkdir()
    assert "run `wsi-pipeline tile" in _one_line_error(
        run_cli("embed", run / "empty", "-e", "tiny_test"), "no finished"
    )


def test_version_and_list_models() -> None:
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("wsi-pipeline ")
    models = run_cli("train", "--list-models")
    assert models.returncode == 0 and {"abmil", "acmil", "asmil"} <= set(models.stdout.split())


@functools.cache
def _help(command: str) -> str:
    """``wsi-pipeline COMMAND --help``, run once per command for the tests below (each reads it)."""
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_has_no_type_placeholders_for_flags() -> None:
    # Flags (--overwrite, --recursive...) and the -v counter take no value: their help shows no type.
    for command in ("tile", "embed", "train", "predict", "submit", "convert-mil"):
        text = _help(command)
        assert "--overwrite" in text and not re.search(r"<bool>|BOOLEAN", text), command
    root = run_cli("--help").stdout
    assert "--verbose" in root and not re.search(r"<int>|INTEGER", root)


def test_short_options_are_the_same_in_every_command() -> None:
    # An option several commands take has one short form everywhere.
    shorts: dict[str, set[str]] = {}
    for command in ("tile", "embed", "train", "predict", "submit", "convert-mil"):
        for long, short in re.findall(r"(--[a-z][a-z-]+)\s+(-[a-zA-Z])\b", _help(command)):
            shorts.setdefault(long, set()).add(short)
    takers = {"--labels": ("train", "submit"), "--model": ("train", "submit"), "--recursive": ("tile", "submit")}
    for long, commands in takers.items():
        helps = [_help(c) for c in commands]
        assert all(re.search(rf"{long}\s+-[a-z]", text) for text in helps), long
    assert all(len(forms) == 1 for forms in shorts.values()), shorts


def _described(param: object) -> tuple:
    keys = ("name", "opts", "secondary_opts", "required", "help", "is_flag", "count", "multiple", "nargs")
    return (*(getattr(param, key, None) for key in keys), repr(getattr(param, "default", None)))


def test_a_command_runs_in_an_app_of_its_own_with_the_same_options() -> None:
    # main() builds only the command named on the line (typer converts every registered signature at start-up):
    # each command must have the same parameters and help there as in the whole app, which serves the top-level help.
    import typer

    from wsi_pipeline.cli import COMMANDS, app_for

    whole = typer.main.get_command(app_for(["--help"]))
    assert list(whole.commands) == list(COMMANDS)
    for name in COMMANDS:
        single = typer.main.get_command(app_for(["-v", name, "x"]))
        assert list(single.commands) == [name]
        alone, within = single.commands[name], whole.commands[name]
        assert alone.help == within.help
        assert [_described(p) for p in alone.params] == [_described(p) for p in within.params]
    assert [p.name for p in single.params] == [p.name for p in whole.params]  # the root options: -v, --version


# ------------------------------------------------------------------------------------------- light imports
def test_help_never_imports_torch() -> None:
    result = run_cli("--help", python_flags=("-X", "importtime"))
    assert result.returncode == 0
    imported = _imported(result)
    assert "typer" in imported and not imported & HEAVY, imported & HEAVY


def test_tile_convert_and_submit_never_import_torch(tmp_path: Path, cmu_slide: Path, mil_dir: Path) -> None:
    tile = run_cli("tile", cmu_slide, "--out", tmp_path / "stores", python_flags=("-X", "importtime"))
    assert tile.returncode == 0, tile.stderr[-2000:]
    assert "openslide" in _imported(tile) and not _imported(tile) & (HEAVY | {"zarr"})  # its store is plain files
    assert (tmp_path / "stores" / "CMU-1-Small-Region.zarr").is_dir()

    convert = run_cli("convert-mil", mil_dir / "musk1.csv", "-o", tmp_path / "mil", python_flags=("-X", "importtime"))
    assert convert.returncode == 0, convert.stderr[-2000:]
    assert "zarr" in _imported(convert) and not _imported(convert) & HEAVY

    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\nCMU-1-Small-Region,a\n")
    args = ("submit", cmu_slide, "-o", tmp_path / "run", "-e", "tiny_test", "-l", labels, "--dry-run")
    submit = run_cli(*args, python_flags=("-X", "importtime"))
    assert submit.returncode == 0, submit.stderr[-2000:]
    assert "sbatch" in submit.stdout and not _imported(submit) & HEAVY


def test_flat_png_is_tiled_with_slide_mpp(cmu_slide: Path, tmp_path: Path) -> None:
    import cv2

    from wsi_pipeline.slide import Slide

    with Slide(cmu_slide) as slide:
        pixels = slide.read_region((0, 0), 0, slide.dimensions)
    png = tmp_path / "crop.png"
    cv2.imwrite(str(png), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    without = run_cli("tile", png, "-o", tmp_path / "a")
    assert without.returncode == 1 and "Traceback" not in without.stderr
    assert "pass --slide-mpp" in without.stderr and "1 failed" in without.stderr
    tiled = run_cli("tile", png, "-o", tmp_path / "b", "--slide-mpp", "0.499")
    assert tiled.returncode == 0 and "1 ok, 0 skipped, 0 failed" in tiled.stderr, tiled.stderr
    assert (tmp_path / "b" / "crop.zarr").is_dir() and (tmp_path / "b" / "qc" / "crop.jpg").is_file()
