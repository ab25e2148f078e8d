"""Settings of a cluster submission: Slurm resources per stage, array sizes, dependencies.

``configs/submit.yaml`` mirrors these defaults (a test keeps them equal). Override them in the ``submit:`` section of
a ``--config FILE`` or with ``wsi-pipeline submit --set embed.gpus=2 --set partition=gpu``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["StageResources", "SubmitConfig", "STAGES", "SHARDED_STAGES"]

STAGES = ("tile", "embed", "train", "predict")
# Array stages (per-slide, `--shard i/n`); train is one job over every slide.
SHARDED_STAGES = ("tile", "embed", "predict")


@dataclass
class StageResources:
    """What one job (or one array task) of a stage asks Slurm for; ``None`` leaves the script's ``#SBATCH`` line."""

    time: str | None = "04:00:00"  # --time, D-HH:MM:SS or HH:MM:SS
    cpus: int | None = 8  # --cpus-per-task; stages size their worker pools from SLURM_CPUS_PER_TASK
    mem: str | None = "32G"  # --mem per node (i.e. per task)
    gpus: int = 0  # --gres=gpu:N; 0 asks for none (--gres=none), overriding the script's default
    gpu_type: str | None = None  # e.g. a100 gives --gres=gpu:a100:N
    partition: str | None = None  # overrides SubmitConfig.partition for this stage
    extra_args: list[str] = field(default_factory=list)  # more sbatch options for this stage only


@dataclass
class SubmitConfig:
    """A full run as Slurm job arrays: tile -> embed -> train -> predict.

    The per-slide stages (tile, embed, predict) run as arrays of ``ceil(n_slides / slides_per_task)`` tasks (at most
    ``max_array_size``), ``max_concurrent`` at a time. ``dependency`` is how a stage waits for the one before:
    ``afterany`` (default) starts it even when some slides failed (the stage CLIs exit 1 then), and the stage only
    sees slides whose earlier stage finished; ``afterok`` stops the chain at the first failed task.
    ``predict`` always waits on ``train`` with ``afterok``: without a checkpoint there is nothing to apply.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    max_concurrent: int = 16  # array throttle: --array=0-(n-1)%max_concurrent
    slides_per_task: int = 25
    max_array_size: int = 1000  # the cluster's MaxArraySize; more slides means more slides per task
    dependency: Literal["afterany", "afterok"] = "afterany"
    log_dir: str | None = None  # default <out>/logs/slurm; one folder per stage, one file per task
    extra_sbatch_args: list[str] = field(default_factory=list)  # for every job, e.g. ["--mail-type=FAIL"]
    tile: StageResources = field(default_factory=lambda: StageResources(time="04:00:00", cpus=8, mem="16G"))
    embed: StageResources = field(default_factory=lambda: StageResources(time="08:00:00", cpus=8, mem="32G", gpus=1))
    train: StageResources = field(default_factory=lambda: StageResources(time="12:00:00", cpus=8, mem="64G", gpus=1))
    predict: StageResources = field(default_factory=lambda: StageResources(time="04:00:00", cpus=8, mem="32G", gpus=1))

    def __post_init__(self) -> None:
        for name in ("max_concurrent", "slides_per_task", "max_array_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def resources(self, stage: str) -> StageResources:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(STAGES)}")
        return getattr(self, stage)
