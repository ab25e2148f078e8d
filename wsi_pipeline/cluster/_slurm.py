"""Submitting the job chain with ``sbatch``, all or nothing; a dry run prints the same commands as a script."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import WsiPipelineError
from ._jobs import SlurmClient
from ._plan import RunSpec, StageJob
from ._record import JobEntry, SubmissionRecord

__all__ = ["SubmittedJob", "job_environment", "dry_run_script", "submit_jobs", "SlurmError"]


class SlurmError(WsiPipelineError):
    """sbatch/scancel failed or is missing."""


@dataclass
class SubmittedJob:
    stage: str
    job_id: str
    tasks: int | None
    argv: list[str]


def _bin_dir() -> str | None:
    """This interpreter's ``bin/`` when it holds our entry point (a virtual environment not activated, say)."""
    bin_dir = str(Path(sys.executable).parent)
    return bin_dir if (Path(bin_dir) / "wsi-pipeline").exists() else None


def job_environment(spec: RunSpec, shards: int | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment jobs start with: the caller's, the run's ``WSI_*`` variables, and this install first on PATH.

    Putting this interpreter's ``bin/`` first makes the jobs call the same ``wsi-pipeline`` as the submitter
    (sbatch passes the submitter's environment to the job).
    """
    env = dict(os.environ if base is None else base)
    env = {key: value for key, value in env.items() if not key.startswith("WSI_") or key == "WSI_PIPELINE_DEBUG"}
    env.update(spec.env(shards))
    bin_dir = _bin_dir()
    if bin_dir and env.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


def dry_run_script(jobs: Sequence[StageJob], spec: RunSpec, shards: int | None) -> str:
    """A bash script doing what ``submit`` would do: export the variables, sbatch each stage with its dependency.

    It puts this install's ``bin/`` first on PATH, as ``submit`` does, so the jobs find ``wsi-pipeline`` even when
    its virtual environment is not activated where the script runs.
    """
    lines = ["#!/usr/bin/env bash", "set -euo pipefail"]
    bin_dir = _bin_dir()
    if bin_dir:
        lines.append(f'export PATH={shlex.quote(bin_dir)}:"$PATH"')
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
    return [Path(job.log_pattern).parent for job in jobs if job.log_pattern]


def submit_jobs(
    jobs: Sequence[StageJob],
    spec: RunSpec,
    shards: int | None,
    *,
    record: SubmissionRecord,
    client: SlurmClient | None = None,
) -> list[SubmittedJob]:
    """Submit ``jobs`` in order, each depending on the previous one, all or nothing, and save ``record``.

    When an ``sbatch`` fails, the jobs this submission already queued are cancelled (nothing half-submitted is left
    behind), the record says so (``status: failed``) and ``SlurmError`` names the stage, Slurm's message and the
    cancelled jobs.
    """
    client = client or SlurmClient()
    if client.runner is subprocess.run and shutil.which("sbatch") is None:
        raise SlurmError("sbatch not found: run this on a Slurm login node, or use --local to run on this machine")
    for folder in _log_dirs(jobs):
        folder.mkdir(parents=True, exist_ok=True)
    client.env = job_environment(spec, shards)
    submitted: list[SubmittedJob] = []
    ids: dict[str, str] = {}
    for job in jobs:
        argv = job.sbatch_argv(ids.get(job.after) if job.after else None)
        try:
            result = client.runner(argv, env=client.env, capture_output=True, text=True, check=False)
        except OSError as err:
            result = None
            message = f"{argv[0]}: {err.strerror or err}"
        else:
            message = (result.stderr or result.stdout).strip().replace("\n", " ")
        job_id = result.stdout.strip().split(";")[0] if result is not None and result.returncode == 0 else ""
        if not job_id.isdigit():
            if result is not None and result.returncode == 0:
                message = f"sbatch printed {result.stdout.strip()!r} instead of a job id"
            raise SlurmError(_abandon(record, submitted, client, job.stage, message))
        ids[job.stage] = job_id
        submitted.append(SubmittedJob(job.stage, job_id, job.tasks, argv))
        record.jobs.append(
            JobEntry(
                job.stage, job_id, job.tasks, job.log_pattern, argv, job.after, job.dependency if job.after else None
            )
        )
    record.status = "submitted"
    record.save()
    return submitted


def _abandon(
    record: SubmissionRecord, submitted: Sequence[SubmittedJob], client: SlurmClient, stage: str, message: str
) -> str:
    """Cancel what this submission queued, record the failure, and say both in one line."""
    head = f"sbatch for the {stage} stage failed ({message})"
    fix = "fix the option (see --dry-run and configs/submit.yaml) and submit again; finished slides are skipped"
    if re.search(r"unable to contact|controller|connection refused|no such file|slurm_load", message, re.I):
        fix = (
            "Slurm is not reachable from here: submit from a Slurm login node, or add --local to run the stages on "
            "this machine; finished slides are skipped"
        )
    if not submitted:
        note = "nothing was submitted"
    else:
        ids = [job.job_id for job in submitted]
        named = ", ".join(f"{job.stage} {job.job_id}" for job in submitted)
        cancel = client.cancel(ids)
        if cancel is not None and cancel.returncode == 0:
            note = f"cancelled the jobs this submission had queued ({named}), so none of it runs"
        else:
            why = (cancel.stderr or cancel.stdout).strip() if cancel is not None else "scancel not found"
            note = (
                f"could not cancel the jobs already queued ({named}: {why}); cancel them with `scancel {' '.join(ids)}`"
            )
    record.status = "failed"
    record.error = f"{head}; {note}"
    record.save()
    return f"{head}; {note}; {fix}"
