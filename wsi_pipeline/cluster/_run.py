"""A whole submission from start to end: plan it, submit it (Slurm) or run it (local), wait for it, report it.

``submit`` (the CLI) is these calls in a row; each leaves a record under ``<out>/submissions/`` that ``status``
reads later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import config_to_dict
from ..discovery import discover_slides
from ..store import STORE_SUFFIX, list_stores
from ._config import SubmitConfig
from ._jobs import SlurmClient, TaskState, wait_for_states
from ._local import Runner, run_local, run_logged
from ._plan import RunSpec, StageJob, find_stages_dir, plan_jobs
from ._record import SubmissionRecord
from ._slurm import SubmittedJob, submit_jobs
from ._status import RunStatus, status_of_record

__all__ = ["Submission", "prepare_run", "submit_run", "run_here", "wait_for_run"]


@dataclass
class Submission:
    """A planned run: its spec, settings, the slides it starts from and the stage jobs."""

    spec: RunSpec
    config: SubmitConfig
    slide_ids: list[str]
    jobs: list[StageJob]

    @property
    def shards(self) -> int | None:
        """Array tasks of the per-slide stages (each task is shard i of this many)."""
        return next((job.tasks for job in self.jobs if job.tasks), None)

    def record(self, mode: str, command: Sequence[str]) -> SubmissionRecord:
        return SubmissionRecord(
            out=self.spec.out,
            mode=mode,  # type: ignore[arg-type]
            command=list(command),
            cwd=str(Path.cwd()),
            stages=list(self.spec.stages),
            slide_ids=self.slide_ids,
            env=self.spec.env(self.shards if mode == "slurm" else None),
            submit_config=config_to_dict(self.config),
        )


def _slide_ids(spec: RunSpec) -> list[str]:
    if spec.slides and "tile" in spec.stages:
        return [entry.slide_id for entry in discover_slides(spec.slides, recursive=spec.recursive)]
    # A run that starts after tile works on the stores already there.
    return [path.name[: -len(STORE_SUFFIX)] for path in list_stores(spec.stores)]


def prepare_run(spec: RunSpec, config: SubmitConfig, stages_dir: str | Path | None = None) -> Submission:
    """Check the inputs and plan the jobs; raises ``ConfigError`` naming what is missing. Writes nothing."""
    spec.validate()
    slide_ids = _slide_ids(spec)
    jobs = plan_jobs(spec, config, len(slide_ids), find_stages_dir(stages_dir))
    return Submission(spec, config, slide_ids, jobs)


def submit_run(
    submission: Submission, command: Sequence[str], *, client: SlurmClient | None = None
) -> tuple[SubmissionRecord, list[SubmittedJob]]:
    """Submit every job with ``sbatch``, all or nothing; the record is saved either way."""
    record = submission.record("slurm", command)
    submitted = submit_jobs(submission.jobs, submission.spec, submission.shards, record=record, client=client)
    return record, submitted


def run_here(
    submission: Submission,
    command: Sequence[str],
    *,
    runner: Runner = run_logged,
    echo: Callable[[str], None] = print,
) -> RunStatus:
    """Run every stage here, in order (``--local``), and return the run's status (its record is saved)."""
    record = submission.record("local", command)
    states = run_local(submission.jobs, submission.spec, record, runner=runner, echo=echo)
    return status_of_record(record, states)


def wait_for_run(
    record: SubmissionRecord,
    *,
    poll_s: float,
    client: SlurmClient | None = None,
    on_poll: Callable[[list[TaskState]], None] | None = None,
) -> RunStatus:
    """Wait until no job of ``record`` is pending or running; keep their final states in the record."""
    states = wait_for_states(record.job_specs(), poll_s=poll_s, client=client, on_poll=on_poll)
    if record.remember(states):
        record.save()
    return status_of_record(record, states)
