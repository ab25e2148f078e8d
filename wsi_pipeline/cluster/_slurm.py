"""Submitting the job chain with ``sbatch`` and waiting for it; a dry run prints the same commands as a script."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import WsiPipelineError
from ._plan import RunSpec, StageJob

__all__ = ["SubmittedJob", "job_environment", "dry_run_script", "submit_jobs", "wait_for_jobs", "SlurmError"]

Runner = Callable[..., subprocess.CompletedProcess]


class SlurmError(WsiPipelineError):
    """sbatch/squeue failed or is missing."""


@dataclass
class SubmittedJob:
    stage: str
    job_id: str
    tasks: int | None
    argv: list[str]


def job_environment(spec: RunSpec, shards: int | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment jobs start with: the caller's, the run's ``WSI_*`` variables, and this install first on PATH.

    Putting this interpreter's ``bin/`` first makes the jobs call the same ``wsi-pipeline`` as the submitter
    (sbatch passes the submitter's environment to the job).
    """
    env = dict(os.environ if base is None else base)
    env = {key: value for key, value in env.items() if not key.startswith("WSI_") or key == "WSI_PIPELINE_DEBUG"}
    env.update(spec.env(shards))
    bin_dir = str(Path(sys.executable).parent)
    if (Path(bin_dir) / "wsi-pipeline").exists() and env.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


def dry_run_script(jobs: Sequence[StageJob], spec: RunSpec, shards: int | None) -> str:
    """A bash script doing what ``submit`` would do: export the variables, sbatch each stage with its dependency."""
    lines = ["#!/usr/bin/env bash", "set -euo pipefail"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in spec.env(shards).items()]
    lines.append(f"mkdir -p {' '.join(shlex.quote(str(p)) for p in _log_dirs(jobs))}")
    for job in jobs:
        # The dependency names the previous stage's job id through a shell variable, so it is double-quoted.
        argv = job.sbatch_argv(f"${job.after.upper()}" if job.after else None)
        text = " ".join(f'"{arg}"' if "$" in arg else shlex.quote(arg) for arg in argv)
        lines.append(f"{job.stage.upper()}=$({text} | cut -d';' -f1)")
        lines.append(f'echo "{job.stage}: job ${job.stage.upper()}"')
    return "\n".join(lines) + "\n"


def _log_dirs(jobs: Sequence[StageJob]) -> list[Path]:
    dirs = []
    for job in jobs:
        for option in job.options:
            if option.startswith("--output="):
                dirs.append(Path(option.split("=", 1)[1]).parent)
    return dirs


def submit_jobs(
    jobs: Sequence[StageJob],
    spec: RunSpec,
    shards: int | None,
    *,
    runner: Runner = subprocess.run,
) -> list[SubmittedJob]:
    """Submit ``jobs`` in order, each depending on the previous one; record what was done under ``<out>``."""
    if runner is subprocess.run and shutil.which("sbatch") is None:
        raise SlurmError("sbatch not found: run this on a Slurm login node, or use --local to run on this machine")
    for folder in _log_dirs(jobs):
        folder.mkdir(parents=True, exist_ok=True)
    env = job_environment(spec, shards)
    submitted: list[SubmittedJob] = []
    ids: dict[str, str] = {}
    for job in jobs:
        argv = job.sbatch_argv(ids.get(job.after) if job.after else None)
        result = runner(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            done = ", ".join(f"{j.stage}={j.job_id}" for j in submitted) or "none"
            raise SlurmError(
                f"sbatch for the {job.stage} stage failed ({(result.stderr or result.stdout).strip()}); "
                f"jobs already submitted: {done}; fix the option (see --dry-run) and submit again, finished slides "
                "are skipped"
            )
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch printed {result.stdout.strip()!r} instead of a job id")
        ids[job.stage] = job_id
        submitted.append(SubmittedJob(job.stage, job_id, job.tasks, argv))
    _record(spec, submitted)
    return submitted


def _record(spec: RunSpec, submitted: Sequence[SubmittedJob]) -> Path:
    folder = spec.out / "submissions"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}-{submitted[0].job_id if submitted else 'none'}.json"
    path.write_text(
        json.dumps({"submitted": stamp, "env": spec.env(), "jobs": [job.__dict__ for job in submitted]}, indent=2)
    )
    return path


def wait_for_jobs(
    job_ids: Sequence[str],
    *,
    poll_s: float = 10.0,
    timeout_s: float | None = None,
    runner: Runner = subprocess.run,
    on_poll: Callable[[int], None] | None = None,
) -> None:
    """Block until none of ``job_ids`` (arrays included) is pending or running."""
    if not job_ids:
        return
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        result = runner(
            ["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True, check=False
        )
        # squeue exits non-zero with "Invalid job id" once every listed job has left the queue.
        left = [line for line in result.stdout.split() if line.strip()] if result.returncode == 0 else []
        if result.returncode != 0 and "Invalid job id" not in (result.stderr or ""):
            raise SlurmError(f"squeue failed: {(result.stderr or result.stdout).strip()}")
        if on_poll:
            on_poll(len(left))
        if not left:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise SlurmError(f"jobs {', '.join(job_ids)} still queued after {timeout_s:.0f}s")
        time.sleep(poll_s)
