"""The local mode: the same stage scripts, run with ``bash`` one after the other on this machine."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..batch import read_manifest
from ._plan import RunSpec, StageJob
from ._slurm import job_environment

__all__ = ["StageOutcome", "run_local", "summarize_run"]

Runner = Callable[..., subprocess.CompletedProcess]


@dataclass
class StageOutcome:
    stage: str
    returncode: int | None  # None: not run, because the stage it needs failed (an afterok dependency)
    note: str = ""


def run_local(
    jobs: Sequence[StageJob],
    spec: RunSpec,
    *,
    runner: Runner = subprocess.run,
    echo: Callable[[str], None] = print,
) -> list[StageOutcome]:
    """Run each job's script once over every slide, with the same dependency rules as the Slurm chain.

    A stage that exits non-zero (some slide failed) does not stop an ``afterany`` successor, whose own inputs
    only include finished slides; an ``afterok`` successor (predict after train) is not run.
    """
    env = job_environment(spec, shards=None)
    # Inside a Slurm allocation the array variables would make every stage process only one shard.
    env = {key: value for key, value in env.items() if not key.startswith("SLURM_ARRAY_")}
    outcomes: dict[str, StageOutcome] = {}
    for job in jobs:
        before = outcomes.get(job.after) if job.after else None
        if before is not None and job.dependency == "afterok" and before.returncode != 0:
            outcomes[job.stage] = StageOutcome(job.stage, None, f"not run: {job.after} failed")
            echo(f"[{job.stage}] not run: {job.after} failed")
            continue
        echo(f"[{job.stage}] bash {job.script}")
        result = runner(["bash", str(job.script)], env=env, check=False)
        outcomes[job.stage] = StageOutcome(job.stage, result.returncode)
        if result.returncode != 0:
            echo(f"[{job.stage}] exited with {result.returncode} (some slides failed; see the manifest)")
    return list(outcomes.values())


def summarize_run(spec: RunSpec) -> dict[str, Counter]:
    """Slide statuses (ok/skipped/failed) of the per-slide stages, from the manifests of every shard."""
    manifests = {"tile": (spec.stores, "tile"), "predict": (spec.predictions, "predict")}  # stage -> (folder, name)
    if spec.encoder:
        from ..embedding import embed_stage_name
        from ..encoders import enc_name

        manifests["embed"] = (spec.stores, embed_stage_name(enc_name(spec.encoder)))
    summary = {}
    for stage in spec.stages:
        folder, name = manifests.get(stage, (None, ""))
        if folder is not None and (folder / "manifests").is_dir():
            records = read_manifest(folder, name)
            if records:
                summary[stage] = Counter(record.status for record in records)
    return summary
