"""Settings of a cluster submission: Slurm resources per stage, array sizes, dependencies, how to ask for GPUs.

These dataclass defaults are the one source of the resources: ``configs/submit.yaml`` mirrors them and the
``#SBATCH`` lines of ``stages/*.sbatch`` are ``sbatch_header()`` of them (tests keep all three equal). Override them
in the ``submit:`` section of a ``--config FILE`` or with ``wsi-pipeline submit --set embed.gpus=2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["StageResources", "SubmitConfig", "STAGES", "SHARDED_STAGES", "GPU_STAGES", "sbatch_header"]

STAGES = ("tile", "embed", "train", "predict")
# Array stages (per-slide, `--shard i/n`); train is one job over every slide.
SHARDED_STAGES = ("tile", "embed", "predict")
# Stages that use a GPU when they get one; `--device cpu` takes it away from all of them.
GPU_STAGES = ("embed", "train", "predict")


@dataclass
class StageResources:
    """What one job (or one array task) of a stage asks Slurm for; ``None`` asks for nothing (cluster default)."""

    time: str | None = "04:00:00"  # --time, D-HH:MM:SS or HH:MM:SS
    cpus: int | None = 8  # --cpus-per-task; stages size their worker pools from SLURM_CPUS_PER_TASK
    mem: str | None = "32G"  # --mem per node (i.e. per task)
    gpus: int = 0  # GPUs per job/task; 0 asks for none (nothing is sent, so CPU-only clusters accept the job)
    gpu_type: str | None = None  # e.g. a100: --gres=gpu:a100:N (or --gpus=a100:N)
    partition: str | None = None  # overrides SubmitConfig.partition for this stage
    extra_args: list[str] = field(default_factory=list)  # more sbatch options for this stage only

    def gpu_options(self, style: Literal["gres", "gpus"]) -> list[str]:
        """``--gres=gpu[:type]:N`` or ``--gpus=[type:]N``; nothing for 0 GPUs."""
        if self.gpus <= 0:
            return []
        kind = f"{self.gpu_type}:" if self.gpu_type else ""
        return [f"--gres=gpu:{kind}{self.gpus}" if style == "gres" else f"--gpus={kind}{self.gpus}"]


@dataclass
class SubmitConfig:
    """A full run as Slurm job arrays: tile -> embed -> train -> predict.

    The per-slide stages (tile, embed, predict) run as arrays of ``ceil(n_slides / slides_per_task)`` tasks (at most
    ``max_array_size``), ``max_concurrent`` at a time. ``dependency`` is how a stage waits for the one before:
    ``afterany`` (default) starts it even when some slides failed (the stage CLIs exit 1 then), and the stage only
    sees slides whose earlier stage finished; ``afterok`` stops the chain at the first failed task.
    ``predict`` always waits on ``train`` with ``afterok``: without a trained model there is nothing to apply.
    ``gpu_option`` is how GPUs are asked for: ``gres`` (``--gres=gpu:N``, every Slurm) or ``gpus`` (``--gpus=N``,
    clusters configured for it). ``poll_seconds``: how often ``submit --wait`` asks Slurm about the jobs.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    max_concurrent: int = 16  # array throttle: --array=0-(n-1)%max_concurrent
    slides_per_task: int = 25
    max_array_size: int = 1000  # the cluster's MaxArraySize; more slides means more slides per task
    dependency: Literal["afterany", "afterok"] = "afterany"
    gpu_option: Literal["gres", "gpus"] = "gres"
    poll_seconds: float = 30.0
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
        if self.poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be > 0, got {self.poll_seconds}")
        for stage in STAGES:
            if getattr(self, stage).gpus < 0:
                raise ValueError(f"{stage}.gpus must be >= 0, got {getattr(self, stage).gpus}")

    def resources(self, stage: str) -> StageResources:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(STAGES)}")
        return getattr(self, stage)


def sbatch_header(stage: str, config: SubmitConfig | None = None) -> list[str]:
    """The ``#SBATCH`` lines of ``stages/<stage>.sbatch``: job name, time, CPUs and memory of ``config``.

    GPUs are left out on purpose: a GPU line in a script makes it unsubmittable on a CPU-only cluster unless every
    caller undoes it, and it adds to a ``--gpus`` given on the command line. ``submit`` asks for GPUs on the
    ``sbatch`` command line only; by hand, add ``--gres=gpu:1``.
    """
    res = (config or SubmitConfig()).resources(stage)
    lines = [f"#SBATCH --job-name=wsi-{stage}"]
    for flag, value in (("--time", res.time), ("--cpus-per-task", res.cpus), ("--mem", res.mem)):
        if value:
            lines.append(f"#SBATCH {flag}={value}")
    return lines
