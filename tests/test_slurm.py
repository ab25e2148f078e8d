"""Runs on a real one-machine Slurm cluster (no GPU, no gres, no accounting): job arrays with dependencies give the
local mode's outputs; a job that times out, a failing sbatch, a CPU-only run, and `status` on each.

Needs Debian's slurmctld, slurmd and slurm-client (``.ci/run`` installs them); skips with the reason otherwise.
The run that times out is started first (module fixture) and checked last, so its minute of waiting for Slurm's
time limit overlaps the other tests.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from wsi_pipeline.batch import read_manifest
from wsi_pipeline.cluster import STAGES, latest_record
from wsi_pipeline.mil_datasets import convert_mil_csv
from wsi_pipeline.store import has_features, read_coords, read_features

from .conftest import MIL_DATA, need_real_data
from .data import skip_reason
from .slide_factory import make_pyramid_slide
from .slurm_cluster import SlurmCluster, SlurmUnavailable

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ENCODER = "tiny_test"  # a tiny random-init timm ViT: fast on CPU, and seeded, so every process builds the same one
GENERATED = 4
SLIDES = ("CMU-1-Small-Region.svs", "small.svs", "broken.svs")  # real H&E, a 16x16 crop (no tissue), a truncated file
# The installed entry point, as a user runs it.
ENTRY = Path(sys.executable).parent / "wsi-pipeline"
CLI = [str(ENTRY)] if ENTRY.exists() else [sys.executable, "-m", "wsi_pipeline"]
# One CPU and little memory per job, so the 2-CPU test node runs two at once; wait polls every second.
SMALL = [f"--set={stage}.{key}={value}" for stage in STAGES for key, value in (("cpus", 1), ("mem", "2G"))]
SMALL.append("--set=poll_seconds=1")


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


def _env(slurm: SlurmCluster) -> dict[str, str]:
    return {**slurm.env, "OMP_NUM_THREADS": "1", "WSI_PIPELINE_DEBUG": ""}


def _cli(slurm: SlurmCluster, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=_env(slurm), capture_output=True, text=True, timeout=timeout)


def _mil_run(mil_dir: Path, out: Path, per_class: int = 12, **train: object) -> tuple[Path, Path]:
    """A run folder whose stores are real Musk1 bags (no tile/embed needed; ``per_class`` of each label, to keep
    the jobs short), its labels and a config."""
    stores, labels = convert_mil_csv(mil_dir / "musk1.csv", out)
    with labels.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    keep = [row for label in ("0", "1") for row in [r for r in rows if r["label"] == label][:per_class]]
    for row in rows:
        if row not in keep:
            shutil.rmtree(stores / f"{row['slide_id']}.zarr")
    config = out.parent / f"{out.name}.yaml"
    settings = {"model": "abmil", "folds": 2, "val_fraction": 0.0, "plots": False, **train}
    config.write_text("train:\n" + "".join(f"  {key}: {value}\n" for key, value in settings.items()))
    return labels, config


def _mil_submit(out: Path, labels: Path, config: Path, *extra: str) -> list[str]:
    argv = ["submit", "--out", str(out), "--encoder", "mil-features", "--labels", str(labels), "--config", str(config)]
    return [*argv, "--stages=train,predict", "--slides-per-task=100", *SMALL, *extra]


def _report(stdout: str) -> str:
    """The run report at the end of `submit --wait`'s output (after the job ids), as `status` prints it."""
    return stdout[stdout.index("\nrun ") + 1 :]


def _line(report: str, start: str) -> str:
    """The first line of a status report that starts with ``start``, runs of spaces (column padding) made one."""
    lines = [re.sub(r"\s+", " ", line.strip()) for line in report.splitlines()]
    found = [line for line in lines if line.startswith(start)]
    assert found, f"no line starting with {start!r} in:\n{report}"
    return found[0]


@pytest.fixture(scope="module")
def timing_out_run(slurm: SlurmCluster, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """`submit --wait` of a train that cannot finish in its 1-minute limit (an endless number of epochs), started
    in the background; the tests below watch it while it runs and after Slurm has killed it."""
    need_real_data(MIL_DATA)
    out = tmp_path_factory.mktemp("timeout") / "run"
    labels, config = _mil_run(MIL_DATA, out, epochs=1_000_000)
    argv = _mil_submit(out, labels, config, "--device=cpu", "--set=train.time=00:01:00", "--wait")
    process = subprocess.Popen(
        [*CLI, *argv], env=_env(slurm), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process, out
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_status_follows_a_running_run(slurm: SlurmCluster, timing_out_run) -> None:  # noqa: ANN001
    process, out = timing_out_run
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = _cli(slurm, "status", str(out), timeout=60)
        if status.returncode == 2 and re.search(r"^train +\d+: RUNNING", status.stdout, flags=re.MULTILINE):
            break
        time.sleep(1)
    else:
        pytest.fail(f"train never showed as running:\n{status.stdout}\n{status.stderr}\n{process.poll()}")
    assert re.fullmatch(r"predict \d+ \(1 task\): PENDING 0 ok, 24 pending", _line(status.stdout, "predict"))
    assert f"still running; follow it with: wsi-pipeline status {out}" in status.stdout


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
    """The README command, CPU-only (`--device cpu`: no job asks this gres-less node for a GPU), with two bad slides:
    `--wait` and `--local` exit 1 and name the task that failed, its log and each failed slide with its reason."""
    labels, config = run_files

    def submit(out: Path, *extra: str) -> subprocess.CompletedProcess:
        argv = ["submit", str(slide_folder), "--out", str(out), "--encoder", ENCODER, "--device", "cpu"]
        return _cli(slurm, *argv, "--labels", str(labels), "--config", str(config), *extra)

    local = submit(tmp_path / "local", "--local")
    assert local.returncode == 1, local.stderr  # broken.svs and small.svs fail; the chain goes on without them
    good = GENERATED + 1
    assert f"tile: {good} ok, 0 skipped, 2 failed" in local.stderr and f"embed: {good} ok" in local.stderr
    assert _line(local.stdout, "tile ") == f"tile local: FAILED {good} ok, 2 failed"
    assert _line(local.stdout, "predict ") == f"predict local: COMPLETED {good} ok"
    record = latest_record(tmp_path / "local")  # a local run leaves a record and logs like a Slurm run
    assert record.mode == "local" and [job.state for job in record.jobs] == ["FAILED", *["COMPLETED"] * 3]
    assert all(Path(job.log).is_file() for job in record.jobs)
    assert _line(local.stdout, "tile local FAILED") == f"tile local FAILED (exit 1) log {record.jobs[0].log}"

    started = time.monotonic()
    cluster_opts = ["--slides-per-task=4", "--max-concurrent=2", *SMALL, "--wait"]  # 7 slides: 2 tasks per stage
    remote = submit(tmp_path / "slurm", *cluster_opts)
    assert remote.returncode == 1, f"{remote.stdout}\n{remote.stderr}"
    jobs = dict(line.split(": job ") for line in remote.stdout.splitlines() if ": job " in line)
    assert list(jobs) == list(STAGES)
    ids = {stage: jobs[stage].split()[0] for stage in STAGES}
    submitted = latest_record(tmp_path / "slurm")
    assert not any(arg.startswith(("--gres", "--gpus")) for job in submitted.jobs for arg in job.argv)
    states = {stage: slurm.job_states(ids[stage]) for stage in STAGES}
    # Both tile tasks met a bad slide and exit 1 (shard 0: small, shard 1: broken); afterany still runs embed and
    # train on the good slides.
    assert list(states["tile"].values()) == ["FAILED", "FAILED"]
    assert list(states["embed"].values()) == ["COMPLETED", "COMPLETED"]
    assert list(states["train"].values()) == ["COMPLETED"]
    assert list(states["predict"].values()) == ["COMPLETED", "COMPLETED"]  # both shards write one folder
    # The report names exactly the tasks that did not complete with their logs, and each failed slide's reason.
    logs = tmp_path / "slurm" / "logs" / "slurm"
    not_completed = remote.stdout.split("not completed:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [re.sub(r"\s+", " ", line.strip()) for line in not_completed] == [
        f"tile {task} FAILED (exit 1) log {logs / 'tile' / f'{task}.out'}" for task in sorted(states["tile"])
    ]
    assert _line(remote.stdout, "tile broken ").startswith(f"tile broken {slide_folder / 'broken.svs'}: ")
    assert _line(remote.stdout, "tile small ").startswith(f"tile small {slide_folder / 'small.svs'}: ")
    assert re.search(r"^\[\d\d:\d\d:\d\d\] tile 0/2 done", remote.stderr, flags=re.MULTILINE)  # progress lines
    assert re.search(r"^\[\d\d:\d\d:\d\d\] .*predict 2/2 done$", remote.stderr, flags=re.MULTILINE)
    # `status` on the finished, failing run says the same, and the command that resumes it.
    status = _cli(slurm, "status", str(tmp_path / "slurm"))
    assert status.returncode == 1 and status.stdout == _report(remote.stdout)
    assert status.stdout.rstrip().endswith(shlex.join(submitted.command))
    # In the job's log a failed slide is one unwrapped WARNING line with the whole path.
    task_log = (logs / "tile" / f"{ids['tile']}_1.out").read_text().splitlines()
    warning = next(line for line in task_log if " WARNING " in line and "broken" in line)
    assert f"tile broken: failed {slide_folder / 'broken.svs'}: " in warning
    assert len(list((logs / "predict").glob("*.out"))) == 2
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

    # The chain predicted with the whole run its train stage wrote: out-of-fold for these labelled slides.
    assert {row["source"] for row in remote_pred.values()} == {"out-of-fold"}
    assert json.loads((predictions / "metrics.json").read_text())["n"] == len(remote_pred)

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


def test_a_failing_sbatch_cancels_the_jobs_already_submitted(slurm: SlurmCluster, tmp_path: Path) -> None:
    """The issue's CPU-only trap: train given no GPU, predict still asking for one on a node without gres."""
    need_real_data(MIL_DATA)
    out = tmp_path / "run"
    labels, config = _mil_run(MIL_DATA, out, epochs=1_000)
    result = _cli(slurm, *_mil_submit(out, labels, config, "--set=train.gpus=0", "--set=predict.gpus=1"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert (
        "sbatch for the predict stage failed (sbatch: error: Invalid generic resource (gres) specification)" in message
    )
    record = latest_record(out)
    (train,) = record.jobs
    assert record.status == "failed" and train.stage == "train"
    assert f"cancelled the jobs this submission had queued (train {train.job_id}), so none of it runs" in message
    assert slurm.job_states(train.job_id) == {train.job_id: "CANCELLED"}
    status = _cli(slurm, "status", str(out))
    assert status.returncode == 1 and f"submission failed: {record.error}" in status.stdout
    assert re.fullmatch(rf"train {train.job_id} CANCELLED .*", _line(status.stdout, f"train {train.job_id} "))


def test_a_cpu_only_run_completes_and_status_says_so(slurm: SlurmCluster, tmp_path: Path) -> None:
    """Default resources ask embed/train/predict for a GPU; --device cpu asks for none, so the gres-less node runs
    everything; `--wait` and `status` exit 0."""
    need_real_data(MIL_DATA)
    out = tmp_path / "run"
    labels, config = _mil_run(MIL_DATA, out, epochs=2)
    done = _cli(slurm, *_mil_submit(out, labels, config, "--device=cpu", "--wait"))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "not completed" not in done.stdout and "every job completed and every slide finished" in done.stdout
    assert re.fullmatch(r"predict \d+ \(1 task\): COMPLETED 24 ok", _line(_report(done.stdout), "predict "))
    status = _cli(slurm, "status", str(out))
    assert status.returncode == 0 and status.stdout == _report(done.stdout)
    with (out / "predictions" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and {row["source"] for row in rows} == {"out-of-fold"}


def test_a_job_that_times_out_fails_the_wait_and_names_its_log(slurm: SlurmCluster, timing_out_run) -> None:  # noqa: ANN001
    process, out = timing_out_run
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, f"{stdout}\n{stderr}"
    record = latest_record(out)
    train, predict = record.jobs
    log = out / "logs" / "slurm" / "train" / f"{train.job_id}.out"
    assert _line(stdout, f"train {train.job_id} TIMEOUT") == f"train {train.job_id} TIMEOUT (TimeLimit) log {log}"
    assert _line(stdout, f"predict {predict.job_id}_0") == (
        f"predict {predict.job_id}_0 CANCELLED (DependencyNeverSatisfied) never started"
    )
    assert "DUE TO TIME LIMIT" in log.read_text()
    status = _cli(slurm, "status", str(out))
    assert status.returncode == 1
    assert "train hit its time limit (00:01:00): give it more with --set train.time" in status.stdout
    assert status.stdout.rstrip().endswith(f"{shlex.join(record.command)} --set train.time=00:02:00")
    assert record.final_states[train.job_id]["state"] == "TIMEOUT"  # kept: Slurm forgets it after MinJobAge
