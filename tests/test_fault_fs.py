"""Fault tests, as a user meets faults: a full disk under each stage (a real small tmpfs, mounted when the tests run
as root, as CI does; skipped with the reason otherwise) and processes killed with SIGKILL at several points, then
rerun and compared with a clean run. Issue 20 case 4 and the fault-test module it asks for. ``predict`` on a full
disk and killed is in ``tests/test_faults.py``, beside the trained run it shares."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CMU_SMALL, MIL_DATA, ROOT, need_real_data
from tests.data import skip_reason
from tests.test_cli import ENTRY_POINT
from tests.test_faults import EMBED, QUICK, cli, copies, embed_config, no_traceback, records, refusal
from wsi_pipeline.store import read_coords, read_features, store_path

NO_SPACE = "no space left on device"
FIX = "free some space there (or write to another --out) and re-run"


@contextlib.contextmanager
def small_fs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` for the test (root only; else the test is skipped, saying why)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip(skip_reason("root and mount(8)", "a small real file system is a tmpfs mount"))
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(skip_reason("a tmpfs mount", mounted.stderr.decode().strip() or "mount failed"))
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def grow(where: Path, size: str) -> None:
    """Give the mounted tmpfs more room (the user freed some space)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def leftovers(folder: Path) -> list[Path]:
    """Temporary files and lock files anywhere under ``folder``: after a failed or killed run there must be none
    that takes space or blocks the rerun."""
    return [
        path
        for path in folder.rglob("*")
        if ".tmp-" in path.name or (path.is_file() and path.suffix in (".lock", ".takeover", ".partial"))
    ]


# --------------------------------------------------------------------------------------------- a full disk
def test_tile_on_a_full_disk_fails_each_slide_in_one_line_and_the_rerun_finishes(tmp_path: Path) -> None:
    """Two slides with QC pictures (~630 KB each) onto a 512 KB file system: each fails with the path and the fix,
    the batch goes on to the second, no temporary or lock file stays; once there is room, the rerun tiles them as a
    clean run."""
    need_real_data(CMU_SMALL)
    copies(CMU_SMALL, tmp_path / "slides", ["a", "b"])
    clean = cli("tile", tmp_path / "slides", "-o", tmp_path / "clean", "--set", "max_tiles=8")
    assert clean.returncode == 0, clean.stderr
    with small_fs(tmp_path / "disk", "512k") as disk:
        full = cli("tile", tmp_path / "slides", "-o", disk / "out", "--set", "max_tiles=8")
        assert full.returncode == 1
        no_traceback(full)
        tiled = records(disk / "out", "tile")
        assert sorted(tiled) == ["a", "b"]  # the batch went on after the first
        for status, reason in tiled.values():
            assert status == "failed" and str(disk / "out") in reason and NO_SPACE in reason and FIX in reason
        assert leftovers(disk / "out") == []

        grow(disk, "64m")
        again = cli("tile", tmp_path / "slides", "-o", disk / "out", "--set", "max_tiles=8")
        assert again.returncode == 0, again.stderr
        assert {sid: status for sid, (status, _) in records(disk / "out", "tile").items()} == {"a": "ok", "b": "ok"}
        for sid in ("a", "b"):
            np.testing.assert_array_equal(
                read_coords(store_path(disk / "out", sid)), read_coords(store_path(tmp_path / "clean", sid))
            )


@pytest.mark.slow
def test_train_on_a_full_disk_says_which_file_and_leaves_no_half_checkpoint(tmp_path: Path) -> None:
    """Training into a 300 KB file system: one line naming the checkpoint and the fix (no torch traceback), no
    temporary checkpoint keeping the disk full; with room, the rerun finishes as a clean run does."""
    need_real_data(MIL_DATA / "musk1.csv")
    assert cli("convert-mil", MIL_DATA / "musk1.csv", "-o", tmp_path / "mil").returncode == 0
    bags, labels = tmp_path / "mil" / "musk1" / "stores", tmp_path / "mil" / "musk1" / "labels.csv"
    args = ["-l", labels, "-m", "abmil", "--device", "cpu", "--set", "epochs=1", "--set", "folds=2"]
    with small_fs(tmp_path / "disk", "300k") as disk:
        line = refusal(cli("train", bags, "-o", disk / "runs", *args))
        assert "checkpoint" in line and NO_SPACE in line and FIX in line, line
        assert leftovers(disk / "runs") == []
        grow(disk, "64m")
        again = cli("train", bags, "-o", disk / "runs", *args)
        assert again.returncode == 0, again.stderr
        assert list((disk / "runs").glob("*/summary.json"))


@pytest.mark.slow
def test_embed_on_a_full_disk_fails_the_slides_and_the_rerun_finishes(tmp_path: Path) -> None:
    """Stores on a file system filled up to the last bytes: embed fails each slide with the path and the fix and
    leaves no temporary array or lock; with room again the rerun embeds them as a clean run does."""
    need_real_data(CMU_SMALL)
    from wsi_pipeline.embedding import embed_stores

    copies(CMU_SMALL, tmp_path / "slides", ["a", "b"])
    with small_fs(tmp_path / "disk", "8m") as disk:
        assert cli("tile", tmp_path / "slides", "-o", disk / "stores", *QUICK).returncode == 0
        shutil.copytree(disk / "stores", tmp_path / "clean")
        ballast = disk / "ballast"
        with contextlib.suppress(OSError), ballast.open("wb") as handle:
            while True:
                handle.write(b"\0" * 65536)
        full = cli("embed", disk / "stores", *EMBED)
        assert full.returncode == 1
        no_traceback(full)
        # Not even the manifest has room: each slide's line is in the log (a Slurm job's output).
        for sid in ("a", "b"):
            line = next(line for line in full.stderr.splitlines() if f"embed-efficientnet_lite0 {sid}: failed" in line)
            assert str(disk / "stores") in line and NO_SPACE in line and FIX in line, line
        assert leftovers(disk / "stores") == []
        ballast.unlink()
        assert cli("embed", disk / "stores", *EMBED).returncode == 0
        assert not embed_stores(tmp_path / "clean", config=embed_config()).failed
        for sid in ("a", "b"):
            np.testing.assert_array_equal(
                read_features(store_path(disk / "stores", sid), "efficientnet_lite0"),
                read_features(store_path(tmp_path / "clean", sid), "efficientnet_lite0"),
            )


def test_a_lock_without_an_owner_is_abandoned_at_once(tmp_path: Path) -> None:
    """An ownerless (empty) lock file, as a full disk made older versions leave, does not block the slide for 15
    minutes: the next run takes it over."""
    need_real_data(CMU_SMALL)
    copies(CMU_SMALL, tmp_path / "slides", ["a"])
    lock = tmp_path / "out" / ".locks" / "tile" / "a.lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    os.utime(lock, (lock.stat().st_atime - 30, lock.stat().st_mtime - 30))
    result = cli("tile", tmp_path / "slides", "-o", tmp_path / "out", *QUICK)
    assert result.returncode == 0, result.stderr
    assert records(tmp_path / "out", "tile")["a"][0] == "ok"


# --------------------------------------------------------------------------------------------- SIGKILL
KILLER = textwrap.dedent(
    """
    import os, signal, sys

    AT = int(os.environ["KILL_AT_RENAME"])
    _replace, count = os.replace, [0]

    def replace(src, dst, *args, **kwargs):  # every output is renamed into place when complete
        count[0] += 1
        if count[0] == AT:
            os.kill(os.getpid(), signal.SIGKILL)  # killed with the temporary written, before its rename
        return _replace(src, dst, *args, **kwargs)

    os.replace = replace
    from wsi_pipeline.cli import main
    sys.argv[0] = "wsi-pipeline"
    main()
    """
)


def killed_at(n: int, *args: str | Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the CLI, killed with SIGKILL at its ``n``-th rename of a finished output into place."""
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    environ = {k: v for k, v in os.environ.items() if k != "WSI_PIPELINE_DEBUG"}
    environ.update(KILL_AT_RENAME=str(n), COLUMNS="250", NO_COLOR="1")
    cmd = [sys.executable, str(script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=environ, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_tile_and_embed_killed_at_several_points_resume_to_the_clean_result(tmp_path: Path) -> None:
    """``tile`` killed at its 1st and 4th rename of a finished output (a QC picture, a store of the first slide,
    the manifest...) and ``embed`` at its 1st and 3rd: the reruns leave no temporary or lock behind and give the
    stores, tiles, QC pictures and embeddings of a clean run."""
    need_real_data(CMU_SMALL)
    from wsi_pipeline.embedding import embed_stores

    assert ENTRY_POINT.is_file()
    copies(CMU_SMALL, tmp_path / "slides", ["a", "b"])
    tile_args = ["tile", tmp_path / "slides", "--set", "max_tiles=4"]
    assert cli(*tile_args, "-o", tmp_path / "clean").returncode == 0
    assert not embed_stores(tmp_path / "clean", config=embed_config()).failed
    out = tmp_path / "out"
    for n in (1, 4):
        killed = killed_at(n, *tile_args, "-o", out, tmp_path=tmp_path)
        assert killed.returncode == -9, killed.stderr
    assert cli(*tile_args, "-o", out).returncode == 0
    assert leftovers(out) == []
    for n in (1, 3):
        killed = killed_at(n, "embed", out, *EMBED, tmp_path=tmp_path)
        assert killed.returncode == -9, killed.stderr
    resumed = cli("embed", out, *EMBED)
    assert resumed.returncode == 0, resumed.stderr
    assert leftovers(out) == []
    for sid in ("a", "b"):
        clean = store_path(tmp_path / "clean", sid)
        np.testing.assert_array_equal(read_coords(store_path(out, sid)), read_coords(clean))
        np.testing.assert_array_equal(
            read_features(store_path(out, sid), "efficientnet_lite0"), read_features(clean, "efficientnet_lite0")
        )
        assert (out / "qc" / f"{sid}.jpg").read_bytes() == (tmp_path / "clean" / "qc" / f"{sid}.jpg").read_bytes()
