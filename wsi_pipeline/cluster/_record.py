"""Submission records: ``<out>/submissions/<id>.json``, one per ``submit`` (Slurm or local), the run's memory.

A record holds the command that made it (to resume), the run's settings, the slides it was given, its jobs (stage,
job id, array size, log pattern), and, once seen, each task's final state: Slurm without accounting forgets a job a
few minutes after it ends, so ``status`` keeps what it saw. Records are written atomically; the newest one is the
run's current attempt.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from ..files import atomic_write_text
from ._jobs import JobSpec, TaskState

__all__ = ["SubmissionRecord", "JobEntry", "latest_record", "list_records", "SUBMISSIONS"]

SUBMISSIONS = "submissions"


@dataclass
class JobEntry:
    """One job of a submission. Local runs use job id ``local`` and fill ``state``/``reason`` as they go."""

    stage: str
    job_id: str
    tasks: int | None = None
    log: str | None = None  # Slurm: the --output pattern; local: the log file
    argv: list[str] = field(default_factory=list)
    after: str | None = None
    dependency: str | None = None
    state: str | None = None  # local runs only: PENDING, RUNNING, COMPLETED, FAILED, NOT_RUN
    reason: str = ""

    def spec(self) -> JobSpec:
        return JobSpec(self.stage, self.job_id, self.tasks, self.log)


@dataclass
class SubmissionRecord:
    """What one ``submit`` did. ``status``: ``submitted`` (Slurm jobs queued), ``running``/``finished`` (local),
    or ``failed`` (an ``sbatch`` failed: the jobs already submitted were cancelled, see ``error``)."""

    out: Path
    mode: Literal["slurm", "local"]
    command: list[str]
    cwd: str
    stages: list[str]
    slide_ids: list[str]
    env: dict[str, str]
    submit_config: dict[str, Any] = field(default_factory=dict)
    jobs: list[JobEntry] = field(default_factory=list)
    status: str = "submitted"
    error: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="microseconds"))
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    final_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    id: str = ""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not self.id:
            stamp = datetime.fromisoformat(self.created).strftime("%Y%m%dT%H%M%S%fZ")
            self.id = f"{stamp}-{self.mode}-{self.pid}"

    @property
    def path(self) -> Path:
        return self.out / SUBMISSIONS / f"{self.id}.json"

    def save(self) -> Path:
        data = {key: value for key, value in self.__dict__.items() if key != "jobs"}
        data["out"] = str(self.out)
        data["jobs"] = [job.__dict__ for job in self.jobs]
        atomic_write_text(self.path, json.dumps(data, indent=1) + "\n")
        return self.path

    @classmethod
    def load(cls, path: Path) -> SubmissionRecord:
        try:
            data = json.loads(Path(path).read_text())
            data["jobs"] = [JobEntry(**job) for job in data.get("jobs", [])]
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"{path}: not a readable submission record ({err.__class__.__name__})") from err

    def job_specs(self) -> list[JobSpec]:
        return [job.spec() for job in self.jobs if self.mode == "slurm"]

    def remembered(self) -> dict[str, TaskState]:
        return {key: TaskState.from_json(value) for key, value in self.final_states.items()}

    def remember(self, states: Iterable[TaskState]) -> bool:
        """Keep the final states Slurm told us (it forgets them); True when something new was kept."""
        changed = False
        for state in states:
            if not state.active and state.state != "UNKNOWN" and state.source in {"sacct", "scontrol"}:
                value = state.to_json()
                if self.final_states.get(state.job_id) != value:
                    self.final_states[state.job_id] = value
                    changed = True
        return changed

    def resume_command(self) -> str:
        """The command that made this record, runnable from anywhere (it resumes: finished work is skipped)."""
        import shlex

        command = shlex.join(self.command)
        return command if Path.cwd() == Path(self.cwd) else f"cd {shlex.quote(self.cwd)} && {command}"


def list_records(out: Path) -> list[Path]:
    """The run's submission records, oldest first (their names start with a UTC time stamp)."""
    return sorted((Path(out) / SUBMISSIONS).glob("*.json"))


def latest_record(out: Path) -> SubmissionRecord:
    """The newest record of a run folder, or ``ConfigError`` saying how to make one."""
    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"{out}: no such run folder; pass the --out folder of a `wsi-pipeline submit`")
    records = list_records(out)
    if not records:
        raise ConfigError(
            f"{out}: no submission record in {out / SUBMISSIONS}; `wsi-pipeline status` follows runs started by "
            "`wsi-pipeline submit` (also with --local)"
        )
    return SubmissionRecord.load(records[-1])


def command_line(argv: Sequence[str]) -> list[str]:
    """How the user called us (``sys.argv``), as a command that runs from anywhere: ``wsi-pipeline ...`` when that
    name on PATH is this install, else this install's entry point by its path (``make`` runs ``python -m``)."""
    mine = Path(sys.executable).parent / "wsi-pipeline"
    found = shutil.which("wsi-pipeline")
    if found and mine.exists() and Path(found).resolve() == mine.resolve():
        head = ["wsi-pipeline"]
    elif mine.exists():
        head = [str(mine)]
    else:
        head = [sys.executable, "-m", "wsi_pipeline"]
    return [*head, *list(argv)[1:]]


__all__ += ["command_line"]
