"""A full run on a real one-machine Slurm cluster: job arrays with dependencies give the local mode's outputs.

Needs Debian's slurmctld, slurmd and slurm-client (``.ci/run`` installs them); skips with the reason otherwise.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from wsi_pipeline.batch import read_manifest
from wsi_pipeline.cluster import STAGES
from wsi_pipeline.store import has_features, read_coords, read_features

from .data import skip_reason
from .slide_factory import make_pyramid_slide
from .slurm_cluster import SlurmCluster, SlurmUnavailable

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ENCODER = "tiny_test"  # a tiny random-init timm ViT: fast on CPU, and seeded, so every process builds the same one
GENERATED = 4
SLIDES = ("CMU-1-Small-Region.svs", "small.svs", "broken.svs")  # real H&E, a 16x16 crop (no tissue), a truncated file
CLI = [sys.executable, "-m", "wsi_pipeline"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as err:
        pytest.skip(skip_reason("a local Slurm cluster", str(err)))
    try:
        yield cluster
    finally:
        cluster.stop()


def test_cluster_runs_arrays_with_dependencies(slurm: SlurmCluster, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(f'#!/bin/bash\necho "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT" >> {tmp_path}/tasks.txt\n')
    first = slurm.run("sbatch", "--parsable", "--array=0-2%2", f"--output={tmp_path}/%A_%a.out", str(script))
    job = first.stdout.strip().split(";")[0]
    slurm.run(
        "sbatch", "--wait", f"--dependency=afterok:{job}", f"--output={tmp_path}/after.out", str(script), timeout=120
    )
    assert sorted((tmp_path / "tasks.txt").read_text().split()) == ["/", "0/3", "1/3", "2/3"]


@pytest.fixture
def slide_folder(slides_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in SLIDES:
        (folder / name).symlink_to(slides_dir / name)
    # Realistic pyramidal slides, so that train has a few bags of each class.
    for i in range(GENERATED):
        make_pyramid_slide(folder / f"gen{i}.svs", width=1200, height=900, mpp=0.5, seed=i)
    return folder


@pytest.fixture
def run_files(slide_folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    ids = ["CMU-1-Small-Region", "small", "broken", *(f"gen{i}" for i in range(GENERATED))]
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(f"{sid},{i % 2}\n" for i, sid in enumerate(ids)))
    config = tmp_path / "config.yaml"  # a short training, to keep the test quick
    config.write_text("train:\n  folds: 2\n  epochs: 2\n  val_fraction: 0.0\n  plots: false\n")
    return labels, config


def test_full_run_as_job_arrays_equals_the_local_run(
    slurm: SlurmCluster, slide_folder: Path, run_files: tuple[Path, Path], tmp_path: Path
) -> None:
    labels, config = run_files
    env = {**slurm.env, "OMP_NUM_THREADS": "1", "WSI_PIPELINE_DEBUG": ""}

    def submit(out: Path, *extra: str) -> subprocess.CompletedProcess:
        command = [*CLI, "submit", str(slide_folder), "--out", str(out), "--encoder", ENCODER]
        command += ["--labels", str(labels), "--config", str(config), *extra]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)

    local = submit(tmp_path / "local", "--local")
    assert local.returncode == 1, local.stderr  # broken.svs and small.svs fail; the chain goes on without them
    good = GENERATED + 1
    assert f"tile: {good} ok, 0 skipped, 2 failed" in local.stdout and f"embed: {good} ok" in local.stdout

    started = time.monotonic()
    cluster_opts = [
        "--slides-per-task=4",  # 7 slides -> 2 array tasks per stage
        "--max-concurrent=2",
        "--set=tile.cpus=1",
        "--set=embed.cpus=1",
        "--set=embed.gpus=0",  # no GPU here: --gres=none beats the script's #SBATCH --gres=gpu:1
        "--set=train.cpus=1",
        "--set=predict.cpus=1",
        "--set=train.gpus=0",
        "--set=predict.gpus=0",
        *(f"--set={stage}.{key}={value}" for stage in STAGES for key, value in (("mem", "3G"), ("time", "00:10:00"))),
        "--wait",
    ]
    remote = submit(tmp_path / "slurm", *cluster_opts)
    assert remote.returncode == 1, f"{remote.stdout}\n{remote.stderr}"
    jobs = dict(line.split(": job ") for line in remote.stdout.splitlines() if ": job " in line)
    assert list(jobs) == list(STAGES)
    states = {stage: list(slurm.job_states(jobs[stage].split()[0]).values()) for stage in STAGES}
    # A tile task with a failed slide exits 1; afterany still runs embed and train on the good slides.
    assert len(states["tile"]) == 2 and "FAILED" in states["tile"]
    assert states["embed"] == ["COMPLETED", "COMPLETED"]
    assert states["train"] == ["COMPLETED"]
    assert states["predict"] == ["COMPLETED", "COMPLETED"]  # predict is an array too: both shards write one folder
    logs = sorted((tmp_path / "slurm" / "logs" / "slurm" / "tile").glob("*.out"))
    assert len(logs) == 2 and any("broken" in log.read_text() for log in logs)
    assert len(list((tmp_path / "slurm" / "logs" / "slurm" / "predict").glob("*.out"))) == 2
    predictions = tmp_path / "slurm" / "predictions"
    assert sorted(p.name for p in (predictions / "manifests").glob("predict*.csv")) == [
        "predict.shard-0-of-2.csv",
        "predict.shard-1-of-2.csv",
    ]
    print(f"slurm run: {time.monotonic() - started:.0f}s")

    _assert_same_outputs(tmp_path / "local" / "stores", tmp_path / "slurm" / "stores")
    local_pred = _read_csv(tmp_path / "local" / "predictions" / "predictions.csv")
    remote_pred = _read_csv(tmp_path / "slurm" / "predictions" / "predictions.csv")
    assert (
        sorted(local_pred)
        == sorted(remote_pred)
        == sorted(["CMU-1-Small-Region", *(f"gen{i}" for i in range(GENERATED))])
    )
    for sid, row in local_pred.items():
        assert row["predicted_class"] == remote_pred[sid]["predicted_class"]
        assert abs(float(row["prob_1"]) - float(remote_pred[sid]["prob_1"])) < 1e-3

    # Submitting again resumes: every finished slide is skipped, the bad ones are tried (and fail) again.
    before = {p: p.stat().st_mtime_ns for p in (predictions / "slides").glob("*.json")}
    again = submit(tmp_path / "slurm", *cluster_opts, "--stages=tile,embed,predict")
    assert again.returncode == 1
    statuses = {r.slide_id: r.status for r in read_manifest(tmp_path / "slurm" / "stores", "tile")}
    assert statuses.pop("broken") == statuses.pop("small") == "failed"
    assert set(statuses.values()) == {"skipped"}
    predicted = {r.slide_id: r.status for r in read_manifest(predictions, "predict")}
    assert predicted == dict.fromkeys(remote_pred, "skipped")
    assert {p: p.stat().st_mtime_ns for p in (predictions / "slides").glob("*.json")} == before and len(before) == 5
    assert _read_csv(predictions / "predictions.csv") == remote_pred
    assert not list((predictions / ".locks").rglob("*.lock"))


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle)}


def _assert_same_outputs(local: Path, remote: Path) -> None:
    for stage in ("tile", f"embed-{ENCODER}"):
        local_records = {r.slide_id: r.status for r in read_manifest(local, stage)}
        remote_records = {r.slide_id: r.status for r in read_manifest(remote, stage)}
        assert local_records == remote_records, stage
    tiled = {r.slide_id: r.status for r in read_manifest(local, "tile")}
    assert tiled["CMU-1-Small-Region"] == "ok" and tiled["broken"] == "failed"
    local_stores = sorted(p.name for p in local.glob("*.zarr"))
    assert local_stores == sorted(p.name for p in remote.glob("*.zarr")) and local_stores
    for name in local_stores:
        np.testing.assert_array_equal(read_coords(local / name), read_coords(remote / name))
        if has_features(local / name, ENCODER):
            assert has_features(remote / name, ENCODER)
            np.testing.assert_allclose(
                read_features(local / name, ENCODER).astype(np.float32),
                read_features(remote / name, ENCODER).astype(np.float32),
                rtol=1e-2,
                atol=1e-2,
            )
    assert not list(remote.glob(".*.tmp-*")) and not list((remote / ".locks").rglob("*.lock"))
