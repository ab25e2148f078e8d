"""The state of a run started by ``submit`` (Slurm or local): jobs, slides, logs, and how to resume.

``run_status(out)`` reads the newest submission record, asks Slurm (or the record, for a local run) what became of
each job and array task, and counts each per-slide stage's slides from its manifests: ok, failed (with the one-line
reason) and pending. Only this submission's manifest lines count (an older attempt's failure that is being retried
is pending, not failed). ``RunStatus.exit_code`` is 0 when every job completed and no slide failed, 1 when something
failed (whatever is still running), 2 while jobs are still pending or running with no failure so far.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from ..batch import SlideRecord, read_manifest
from ._jobs import SlurmClient, TaskState, query_states
from ._local import local_states
from ._record import SubmissionRecord, latest_record

__all__ = ["RunStatus", "StageStatus", "run_status", "status_of_record"]

MAX_LINES = 50  # per list in the report; the manifests and the logs have every line
_CLOCK_SLACK = timedelta(seconds=5)  # compute nodes' clocks may be a little behind the login node's


@dataclass
class StageStatus:
    """One stage of a run: its job's tasks and, for per-slide stages, slide counts from the manifests."""

    stage: str
    tasks: list[TaskState]
    expected: int | None = None  # slides this stage should process; None for train
    ok: int = 0
    failed: list[SlideRecord] = field(default_factory=list)
    pending: int = 0
    note: str = ""

    def jobs_summary(self) -> str:
        if not self.tasks:
            return "not submitted"
        counts = Counter(task.state for task in self.tasks)
        job = self.tasks[0].job_id.split("_")[0]
        size = f" ({len(self.tasks)} task{'s' if len(self.tasks) > 1 else ''})" if "_" in self.tasks[0].job_id else ""
        return f"{job}{size}: " + ", ".join(
            f"{n} {state}" if len(self.tasks) > 1 else state for state, n in counts.items()
        )

    def slides_summary(self) -> str:
        if self.expected is None:
            return self.note
        parts = [f"{self.ok} ok"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.pending:
            # Slides left when the stage's jobs have all ended will not be done by this submission.
            ended = bool(self.tasks) and not any(task.active for task in self.tasks)
            parts.append(f"{self.pending} {'not done' if ended else 'pending'}")
        return ", ".join(parts)


@dataclass
class RunStatus:
    out: Path
    record: SubmissionRecord
    stages: list[StageStatus]

    @property
    def tasks(self) -> list[TaskState]:
        return [task for stage in self.stages for task in stage.tasks]

    @property
    def problems(self) -> list[TaskState]:
        """Tasks that ended without completing (failed, timed out, out of memory, cancelled, not run, unknown)."""
        return [task for task in self.tasks if not task.active and not task.ok]

    @property
    def failed_slides(self) -> list[tuple[str, SlideRecord]]:
        return [(stage.stage, rec) for stage in self.stages for rec in stage.failed]

    @property
    def running(self) -> bool:
        return any(task.active for task in self.tasks)

    @property
    def exit_code(self) -> int:
        if self.record.status == "failed" or self.problems or self.failed_slides:
            return 1
        return 2 if self.running else 0

    def report(self) -> str:
        """The status as plain lines (no wrapping, so logs and terminals read the same)."""
        rec = self.record
        when = rec.created[:16].replace("T", " ")
        lines = [f"run {self.out}: {rec.mode} submission {rec.id} ({when} UTC), {len(rec.slide_ids)} slide(s)"]
        if rec.status == "failed":
            lines.append(f"submission failed: {rec.error}")
        rows = [("stage", "jobs", "slides")]
        rows += [(s.stage, s.jobs_summary(), s.slides_summary()) for s in self.stages]
        lines += _columns(rows)
        problems = self.problems
        if problems:
            lines += ["", "not completed:"]
            lines += [f"  {line}" for line in _columns(_problem_rows(problems))]
        failed = self.failed_slides
        if failed:
            lines += ["", "failed slides:"]
            rows = [(stage, rec.slide_id, rec.error or "failed") for stage, rec in failed[:MAX_LINES]]
            lines += [f"  {line}" for line in _columns(rows)]
            if len(failed) > MAX_LINES:
                lines.append(f"  ... {len(failed) - MAX_LINES} more: see the manifests under {self.out}")
        lines.append("")
        if self.running:
            lines.append(f"still running; follow it with: wsi-pipeline status {self.out}")
        elif self.exit_code == 0:
            lines.append("every job completed and every slide finished")
        else:
            lines.append("to resume (finished slides and trained folds are kept):")
            hints, extra = _resume_hints(self)
            lines += [f"  {hint}" for hint in hints]
            command = rec.resume_command() + "".join(f" {option}" for option in extra)
            lines.append(f"  {command}")
        return "\n".join(lines)


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def _problem_rows(problems: Sequence[TaskState]) -> list[tuple[str, str, str, str]]:
    """One row per task that ran (with its log); tasks that never started are grouped by job and state."""
    rows: list[tuple[str, str, str, str]] = []
    never: dict[tuple[str, str, str], list[str]] = {}
    for task in problems:
        if task.started:
            rows.append((task.stage, task.job_id, task.describe(), f"log {task.log}"))
        else:
            job = task.job_id.split("_")[0]
            never.setdefault((task.stage, job, task.describe()), []).append(task.job_id)
    shown = rows[:MAX_LINES]
    if len(rows) > MAX_LINES:
        shown.append(("", "", f"... {len(rows) - MAX_LINES} more", ""))
    for (stage, job, text), ids in never.items():
        if len(ids) == 1:
            name = ids[0]
        else:
            tasks = [int(i.split("_")[1]) for i in ids]
            name = f"{job}_[{_ranges(tasks)}]"
        shown.append((stage, name, text, "never started"))
    return shown


def _ranges(numbers: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts: list[list[int]] = []
    for number in sorted(numbers):
        if parts and number == parts[-1][1] + 1:
            parts[-1][1] = number
        else:
            parts.append([number, number])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


def _seconds(text: str) -> int | None:
    """Slurm time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in seconds."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        return None
    days, a, b, c = (int(x) if x else None for x in match.groups())
    if days is not None:
        hours, minutes, secs = a, b or 0, c or 0
    elif c is not None:
        hours, minutes, secs = a, b, c
    elif b is not None:
        hours, minutes, secs = 0, a, b
    else:
        hours, minutes, secs = 0, a, 0
    return (days or 0) * 86400 + (hours or 0) * 3600 + (minutes or 0) * 60 + (secs or 0)


def _slurm_time(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def _more_memory(text: str) -> str | None:
    match = re.fullmatch(r"(\d+)([KMGT]?)B?", text.strip().upper())
    return f"{int(match[1]) * 2}{match[2]}" if match else None


def _resume_hints(status: RunStatus) -> tuple[list[str], list[str]]:
    """What to change before resubmitting, and the ``--set`` options that change it."""
    hints, extra = [], []
    resources = status.record.submit_config
    for stage in dict.fromkeys(task.stage for task in status.problems if task.state == "TIMEOUT"):
        current = (resources.get(stage) or {}).get("time")
        seconds = _seconds(str(current)) if current else None
        longer = _slurm_time(2 * seconds) if seconds else "LONGER"
        hints.append(f"{stage} hit its time limit ({current or 'the default'}): give it more with --set {stage}.time")
        extra.append(f"--set {stage}.time={longer}")
    for stage in dict.fromkeys(task.stage for task in status.problems if task.state == "OUT_OF_MEMORY"):
        current = (resources.get(stage) or {}).get("mem")
        more = _more_memory(str(current)) if current else None
        hints.append(f"{stage} ran out of memory ({current or 'the default'}): give it more with --set {stage}.mem")
        extra.append(f"--set {stage}.mem={more or 'MORE'}")
    failed_jobs = [task for task in status.problems if task.state in {"FAILED", "UNKNOWN", "INTERRUPTED"}]
    if failed_jobs and not status.failed_slides:
        hints.append(f"read the log of {failed_jobs[0].stage} {failed_jobs[0].job_id} for the error")
    if status.failed_slides:
        hints.append("fix or remove the failed slides above (the next submission tries them again)")
    if status.record.status == "failed":
        hints.append("fix the sbatch option named above (`--dry-run` shows every command)")
    return hints, extra


# --------------------------------------------------------------------------------------------- building
def _manifest_source(record: SubmissionRecord, stage: str) -> tuple[Path, str] | None:
    env = record.env
    out = Path(env.get("WSI_OUT", record.out))
    stores = Path(env.get("WSI_STORES", out / "stores"))
    if stage == "tile":
        return stores, "tile"
    if stage == "embed" and env.get("WSI_ENCODER"):
        from ..embedding import embed_stage_name
        from ..store import features_name  # the encoders package would import torch (2 s) for a name

        return stores, embed_stage_name(features_name(env["WSI_ENCODER"]))
    if stage == "predict":
        return Path(env.get("WSI_PREDICTIONS", out / "predictions")), "predict"
    return None


def _this_attempt(records: Sequence[SlideRecord], since: datetime) -> dict[str, SlideRecord]:
    found = {}
    for rec in records:
        try:
            finished = datetime.fromisoformat(rec.finished_at)
        except ValueError:
            continue
        if finished >= since:
            found[rec.slide_id] = rec
    return found


def _train_note(record: SubmissionRecord) -> str:
    model = record.env.get("WSI_CHECKPOINT")
    run = Path(model) if model else None
    if run is None or run.suffix == ".pt":
        return ""
    folds = len(list(run.glob("fold_*/metrics.json")))
    done = "finished" if (run / "summary.json").is_file() else "not finished"
    return f"{run.name}: {folds} fold(s) trained, {done}"


def status_of_record(record: SubmissionRecord, states: Sequence[TaskState]) -> RunStatus:
    """Combine a record's task states with the slide counts of its manifests."""
    since = datetime.fromisoformat(record.created) - _CLOCK_SLACK
    expected = set(record.slide_ids)
    stages = []
    for stage in record.stages:
        tasks = [task for task in states if task.stage == stage]
        source = _manifest_source(record, stage)
        if source is None:
            stages.append(StageStatus(stage, tasks, note=_train_note(record) if stage == "train" else ""))
            continue
        folder, name = source
        seen = _this_attempt(read_manifest(folder, name), since) if (folder / "manifests").is_dir() else {}
        seen = {sid: rec for sid, rec in seen.items() if sid in expected}
        done = {
            sid
            for sid, rec in seen.items()
            if rec.status == "ok" or rec.status == "skipped" and not rec.error.startswith("locked")
        }
        failed = [rec for sid, rec in sorted(seen.items()) if rec.status == "failed"]
        stages.append(StageStatus(stage, tasks, len(expected), len(done), failed, len(expected - done) - len(failed)))
        expected -= {rec.slide_id for rec in failed}  # a slide that failed here is not expected downstream
    return RunStatus(record.out, record, stages)


def run_status(out: str | Path, *, client: SlurmClient | None = None, remember: bool = True) -> RunStatus:
    """The status of the newest submission in run folder ``out``; final job states Slurm reports are kept in its
    record (``remember``), since Slurm without accounting forgets them minutes after the jobs end."""
    record = latest_record(Path(out))
    if record.mode == "local":
        states = local_states(record)
    else:
        states = query_states(record.job_specs(), remembered=record.remembered(), client=client)
        if remember and record.remember(states):
            record.save()
    return status_of_record(record, states)
