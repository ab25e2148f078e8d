"""What became of submitted jobs: the state of every job and array task, from Slurm or, once Slurm forgot, its log.

Sources, best first: ``sacct`` (where the cluster keeps accounting), ``scontrol show job`` (every Slurm; it forgets a
job ``MinJobAge`` seconds after it ends, 300 by default), the final states a submission record remembers, and the
last line the stage scripts write into each log (``[wsi-pipeline] ... exit N``, or Slurm's own ``CANCELLED ... DUE
TO TIME LIMIT`` line). A task no source knows is ``UNKNOWN``, never assumed done.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SlurmClient",
    "JobSpec",
    "TaskState",
    "ACTIVE_STATES",
    "query_states",
    "state_from_log",
    "wait_for_states",
    "expand_task_ids",
]

Runner = Callable[..., subprocess.CompletedProcess]

# States of a job that has not ended yet (Slurm's names).
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
    }
)
_LOG_TAIL_BYTES = 8192


@dataclass(frozen=True)
class JobSpec:
    """One submitted job: a stage's Slurm job (an array of ``tasks`` tasks, or one job when ``tasks`` is None) and
    the ``--output`` pattern of its logs (``%A`` array job id, ``%a`` task, ``%j`` job id)."""

    stage: str
    job_id: str
    tasks: int | None
    log_pattern: str | None = None

    def task_ids(self) -> list[str]:
        """``["12"]`` for a job, ``["12_0", "12_1", ...]`` for an array."""
        return [self.job_id] if self.tasks is None else [f"{self.job_id}_{i}" for i in range(self.tasks)]

    def log_of(self, task_id: str) -> Path | None:
        if not self.log_pattern:
            return None
        job, _, task = task_id.partition("_")
        text = self.log_pattern.replace("%A", job).replace("%a", task).replace("%j", job if not task else task_id)
        return Path(text)


@dataclass
class TaskState:
    """The state of one job or array task. ``state`` is Slurm's name (COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY,
    CANCELLED, PENDING, RUNNING...), or NOT_RUN / INTERRUPTED (local runs) or UNKNOWN; ``reason`` is Slurm's reason
    (DependencyNeverSatisfied, TimeLimit...) or ``exit N``; ``source`` says where it came from."""

    stage: str
    job_id: str
    state: str
    reason: str = ""
    log: Path | None = None
    source: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED"

    @property
    def started(self) -> bool:
        """Whether it ran at all (a log exists); a job cancelled while pending has none."""
        return self.log is not None and self.log.is_file()

    def describe(self) -> str:
        return f"{self.state} ({self.reason})" if self.reason else self.state

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "log": str(self.log) if self.log else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskState:
        log = data.get("log")
        fields = {key: data[key] for key in ("stage", "job_id", "state", "reason", "source") if key in data}
        return cls(**fields, log=Path(log) if log else None)


# --------------------------------------------------------------------------------------------- parsing
def expand_task_ids(text: str) -> list[int]:
    """Array task ids of ``"3"``, ``"0-3%2"``, ``"[4-7%2]"``, ``"1,3-4"`` -> ``[3]``, ``[0, 1, 2, 3]``..."""
    text = text.strip().strip("[]").split("%")[0]
    ids: list[int] = []
    for part in filter(None, text.split(",")):
        start, _, end = part.partition("-")
        if start.isdigit() and (not end or end.isdigit()):
            ids.extend(range(int(start), int(end or start) + 1))
    return ids


def _clean_state(state: str) -> str:
    # sacct writes "CANCELLED by 0"; scontrol may add "+" flags in some versions.
    return state.split()[0].rstrip("+").upper() if state.strip() else "UNKNOWN"


def _clean_reason(reason: str) -> str:
    return "" if reason.strip() in {"", "None", "(null)"} else reason.strip()


def _exit_reason(state: str, reason: str, exit_code: str) -> str:
    """Slurm's reason, or ``exit N`` for a job that failed on its own (``ExitCode=N:signal``)."""
    code = exit_code.split(":")[0] if exit_code else ""
    if state == "FAILED" and code.isdigit() and int(code):
        return f"exit {code}" + (f", {reason}" if reason and reason != "NonZeroExitCode" else "")
    return reason


def _expand_record(job_id: str, task_field: str, state: str, reason: str) -> dict[str, tuple[str, str]]:
    if not task_field:
        return {job_id: (state, reason)}
    return {f"{job_id}_{i}": (state, reason) for i in expand_task_ids(task_field)}


def parse_sacct(text: str) -> dict[str, tuple[str, str]]:
    """``sacct -n -P -X --format=JobID,State,ExitCode,Reason`` lines -> ``{task id: (state, reason)}``."""
    found: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or not parts[0]:
            continue
        job_field, state, exit_code, reason = parts[0], _clean_state(parts[1]), parts[2], _clean_reason(parts[3])
        job_id, _, task_field = job_field.partition("_")
        found.update(_expand_record(job_id, task_field, state, _exit_reason(state, reason, exit_code)))
    return found


_SCONTROL_FIELD = re.compile(r"(?:^|\s)(JobId|ArrayJobId|ArrayTaskId|JobState|Reason|ExitCode)=(\S*)")


def parse_scontrol(text: str) -> dict[str, tuple[str, str]]:
    """``scontrol -o show job ID`` lines (one per job, array task, or pending rest of an array) -> states."""
    found: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        fields = dict(_SCONTROL_FIELD.findall(line))
        if "JobState" not in fields:
            continue
        state = _clean_state(fields["JobState"])
        reason = _exit_reason(state, _clean_reason(fields.get("Reason", "")), fields.get("ExitCode", ""))
        job_id = fields.get("ArrayJobId") or fields.get("JobId", "")
        task_field = fields.get("ArrayTaskId", "") if fields.get("ArrayJobId") else ""
        found.update(_expand_record(job_id, task_field, state, reason))
    return found


def state_from_log(log: Path | None) -> tuple[str, str] | None:
    """The end of a task as its log tells it, or None when the log says nothing final (or does not exist)."""
    if log is None or not log.is_file():
        return None
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - _LOG_TAIL_BYTES))
        tail = handle.read().decode(errors="replace")
    if "DUE TO TIME LIMIT" in tail:
        return "TIMEOUT", "TimeLimit"
    if "DUE TO PREEMPTION" in tail:
        return "PREEMPTED", ""
    if "oom-kill" in tail or "Out Of Memory" in tail or "OUT_OF_MEMORY" in tail:
        return "OUT_OF_MEMORY", ""
    if "CANCELLED AT" in tail:
        return "CANCELLED", ""
    exits = re.findall(r"^\[wsi-pipeline\] \S+ exit (\d+)\s*$", tail, flags=re.MULTILINE)
    if exits:
        code = int(exits[-1])
        return ("COMPLETED", "") if code == 0 else ("FAILED", f"exit {code}")
    return None


# --------------------------------------------------------------------------------------------- querying
class SlurmClient:
    """Asks Slurm about jobs with ``runner`` (``subprocess.run``; tests pass a fake) in ``env``, and remembers
    whether ``sacct`` works here (it fails where accounting is off, and is then not asked again)."""

    def __init__(self, runner: Runner = subprocess.run, env: Mapping[str, str] | None = None) -> None:
        self.runner = runner
        self.env = env
        self.sacct_works: bool | None = None

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess | None:
        try:
            return self.runner(argv, capture_output=True, text=True, check=False, env=self.env, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None

    def sacct(self, job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        if self.sacct_works is False or not job_ids:
            return {}
        result = self._run(["sacct", "-n", "-P", "-X", "--format=JobID,State,ExitCode,Reason", "-j", ",".join(job_ids)])
        # "Slurm accounting storage is disabled", or no sacct at all: scontrol only, from now on.
        self.sacct_works = result is not None and result.returncode == 0
        return parse_sacct(result.stdout) if self.sacct_works and result is not None else {}

    def scontrol(self, job_id: str) -> dict[str, tuple[str, str]]:
        result = self._run(["scontrol", "-o", "show", "job", job_id])
        if result is None or result.returncode != 0:
            return {}  # "Invalid job id specified": Slurm has forgotten it
        return parse_scontrol(result.stdout)

    def cancel(self, job_ids: Sequence[str]) -> subprocess.CompletedProcess | None:
        return self._run(["scancel", *job_ids])


def query_states(
    jobs: Sequence[JobSpec],
    *,
    remembered: Mapping[str, TaskState] | None = None,
    client: SlurmClient | None = None,
) -> list[TaskState]:
    """The state of every task of ``jobs``: from sacct, else scontrol, else ``remembered``, else the task's log.

    ``remembered`` holds final states seen earlier (a submission record keeps them, because Slurm without
    accounting forgets a job a few minutes after it ends).
    """
    client = client or SlurmClient()
    remembered = remembered or {}
    found = {task: (*value, "sacct") for task, value in client.sacct([job.job_id for job in jobs]).items()}
    for job in jobs:
        if all(task in found for task in job.task_ids()):
            continue
        for task, (state, reason) in client.scontrol(job.job_id).items():
            found.setdefault(task, (state, reason, "scontrol"))
    states = []
    for job in jobs:
        for task in job.task_ids():
            log = job.log_of(task)
            if task in found:
                state, reason, source = found[task]
            elif task in remembered and not remembered[task].active:
                states.append(remembered[task])
                continue
            elif (from_log := state_from_log(log)) is not None:
                (state, reason), source = from_log, "log"
            elif log is not None and log.is_file():
                state, reason, source = "UNKNOWN", "Slurm no longer knows it and its log has no final line", "log"
            else:
                state, reason, source = "UNKNOWN", "Slurm no longer knows it and it never wrote a log", ""
            states.append(TaskState(job.stage, task, state, reason, log, source))
    return states


def wait_for_states(
    jobs: Sequence[JobSpec],
    *,
    poll_s: float = 30.0,
    timeout_s: float | None = None,
    client: SlurmClient | None = None,
    on_poll: Callable[[list[TaskState]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[TaskState]:
    """Poll until no task of ``jobs`` is pending or running; return the final states.

    Raises ``TimeoutError`` after ``timeout_s`` (the jobs keep running).
    """
    client = client or SlurmClient()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    remembered: dict[str, TaskState] = {}
    while True:
        states = query_states(jobs, remembered=remembered, client=client)
        remembered.update({s.job_id: s for s in states if not s.active and s.state != "UNKNOWN"})
        if on_poll is not None:
            on_poll(states)
        if not any(state.active for state in states):
            return states
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"jobs {', '.join(job.job_id for job in jobs)} still running after {timeout_s:.0f}s")
        sleep(poll_s)


def progress_line(states: Iterable[TaskState]) -> str:
    """``tile 2/2 done (1 FAILED) | embed 1 running, 1 pending | train pending``: one line per poll."""
    by_stage: dict[str, list[TaskState]] = {}
    for state in states:
        by_stage.setdefault(state.stage, []).append(state)
    parts = []
    for stage, tasks in by_stage.items():
        done = [t for t in tasks if not t.active]
        running = sum(t.state == "RUNNING" for t in tasks)
        pending = len(tasks) - len(done) - running
        bad: dict[str, int] = {}
        for task in done:
            if not task.ok:
                bad[task.state] = bad.get(task.state, 0) + 1
        text = f"{stage} {len(done)}/{len(tasks)} done"
        if bad:
            text += " (" + ", ".join(f"{n} {state}" for state, n in sorted(bad.items())) + ")"
        if running:
            text += f", {running} running"
        if pending:
            text += f", {pending} pending"
        parts.append(text)
    return " | ".join(parts)


__all__ += ["progress_line", "parse_sacct", "parse_scontrol"]
