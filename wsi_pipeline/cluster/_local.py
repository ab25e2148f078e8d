"""The local mode: the same stage scripts, run with ``bash`` one after the other on this machine.

Like a Slurm run it leaves a submission record (``<out>/submissions/``, updated as each stage starts and ends) and
one log per stage (``<out>/logs/local/<stage>/<submission id>.out``; the output also goes to the terminal), so
``wsi-pipeline status`` reads both kinds of run the same way.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from ..locks import pid_alive
from ._jobs import TaskState
from ._plan import RunSpec, StageJob
from ._record import JobEntry, SubmissionRecord
from ._slurm import job_environment

__all__ = ["run_local", "run_logged"]

# runner(argv, env, log) -> exit code
Runner = Callable[[list[str], Mapping[str, str], Path], int]


def run_logged(argv: list[str], env: Mapping[str, str], log: Path, *, echo: IO[str] | None = None) -> int:
    """Run ``argv``, writing its output (stdout and stderr) to ``log`` and to ``echo`` (default: our stderr)."""
    echo = echo or sys.stderr
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        process = subprocess.Popen(
            argv, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                handle.write(line)
                handle.flush()
                echo.write(line)
                echo.flush()
        except BaseException:
            process.terminate()  # Ctrl-C: the stage gets SIGTERM, releases its locks and removes its temporaries
            process.wait()
            raise
        return process.wait()


def run_local(
    jobs: Sequence[StageJob],
    spec: RunSpec,
    record: SubmissionRecord,
    *,
    runner: Runner = run_logged,
    echo: Callable[[str], None] = print,
) -> list[TaskState]:
    """Run each job's script once over every slide, with the same dependency rules as the Slurm chain.

    A stage that exits non-zero (some slide failed) does not stop an ``afterany`` successor, whose own inputs
    only include finished slides; an ``afterok`` successor (predict after train) is not run. ``record`` is saved
    before and after each stage, so ``status`` shows a local run while it goes and after.
    """
    env = job_environment(spec, shards=None)
    # Inside a Slurm allocation the array variables would make every stage process only one shard.
    env = {key: value for key, value in env.items() if not key.startswith("SLURM_ARRAY_")}
    logs = spec.local_log_dir
    record.jobs = [
        JobEntry(
            job.stage,
            "local",
            None,
            str(logs / job.stage / f"{record.id}.out"),
            ["bash", str(job.script)],
            job.after,
            job.dependency if job.after else None,
            state="PENDING",
        )
        for job in jobs
    ]
    record.status = "running"
    record.save()
    by_stage = {entry.stage: entry for entry in record.jobs}
    try:
        for entry in record.jobs:
            before = by_stage.get(entry.after) if entry.after else None
            if before is not None and entry.dependency == "afterok" and before.state != "COMPLETED":
                entry.state, entry.reason = "NOT_RUN", f"{entry.after} did not complete"
                echo(f"[{entry.stage}] not run: {entry.after} did not complete")
                continue
            entry.state = "RUNNING"
            record.save()
            echo(f"[{entry.stage}] bash {entry.argv[1]} (log: {entry.log})")
            code = runner(entry.argv, env, Path(entry.log or ""))
            entry.state, entry.reason = ("COMPLETED", "") if code == 0 else ("FAILED", f"exit {code}")
            if code != 0:
                echo(f"[{entry.stage}] exited with {code} (see the report below and {entry.log})")
            record.save()
    except BaseException:
        for entry in record.jobs:
            if entry.state == "RUNNING":
                entry.state, entry.reason = "INTERRUPTED", "the local run was stopped"
            elif entry.state == "PENDING":
                entry.state, entry.reason = "NOT_RUN", "the local run was stopped"
        record.status = "finished"
        record.save()
        raise
    record.status = "finished"
    record.save()
    return local_states(record)


def local_states(record: SubmissionRecord) -> list[TaskState]:
    """The stages of a local run as task states; a RUNNING stage whose process is gone is INTERRUPTED."""
    gone = record.status != "finished" and record.host == socket.gethostname() and not pid_alive(record.pid)
    states = []
    for entry in record.jobs:
        state, reason = entry.state or "UNKNOWN", entry.reason
        if state in {"RUNNING", "PENDING"} and gone:
            state, reason = "INTERRUPTED", f"the local run (pid {record.pid}) is gone"
        log = Path(entry.log) if entry.log else None
        states.append(TaskState(entry.stage, entry.job_id, state, reason, log, "local"))
    return states


__all__ += ["local_states"]
