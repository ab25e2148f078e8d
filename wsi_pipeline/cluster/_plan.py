"""What a full run is: its folders, the environment its stage scripts read, and the jobs that make it up.

The stage scripts in ``stages/`` (``tile.sbatch`` ...) are the one definition of each stage's command line. They
read the ``WSI_*`` variables of ``RunSpec.env()``; Slurm runs them as array tasks (``sbatch`` passes the
submitter's environment on), and the local mode runs the same scripts with ``bash``, one after the other.

Run folder layout (``RunSpec``)::

    <out>/stores/<slide_id>.zarr     tile + embed outputs (``stores/manifests/*.csv``)
    <out>/runs/                      train outputs (checkpoints)
    <out>/predictions/               predict outputs
    <out>/logs/slurm/<stage>/        one log per job or array task (%A_%a.out)
    <out>/logs/local/<stage>/        one log per stage of each local run (<submission id>.out)
    <out>/submissions/               one record per submit, Slurm or local: command, jobs, their final states
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import wsi_pipeline

from ..discovery import discover_slides
from ..errors import ConfigError
from ._config import SHARDED_STAGES, STAGES, SubmitConfig

__all__ = [
    "RunSpec",
    "StageJob",
    "parse_stages",
    "count_slides",
    "array_size",
    "find_stages_dir",
    "plan_jobs",
]


def parse_stages(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"tile,embed"`` -> ``("tile", "embed")`` in pipeline order; unknown names raise ``ConfigError``."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        raise ConfigError(f"--stages {text!r}: expected a comma-separated subset of {','.join(STAGES)}")
    return tuple(stage for stage in STAGES if stage in names)


@dataclass
class RunSpec:
    """The inputs and folders of one run; every path is made absolute (jobs may start elsewhere)."""

    out: Path
    slides: list[str] = field(default_factory=list)
    encoder: str | None = None
    weights: str | None = None
    labels: str | None = None
    model: str | None = None
    checkpoint: str | None = None
    config: str | None = None
    device: str | None = None
    recursive: bool = False
    overwrite: bool = False
    stages: tuple[str, ...] = STAGES

    def __post_init__(self) -> None:
        self.out = Path(self.out).absolute()
        self.slides = [str(Path(s).absolute()) for s in self.slides]
        for name in ("labels", "checkpoint", "config"):
            value = getattr(self, name)
            if value:
                setattr(self, name, str(Path(value).absolute()))
        # --weights may also be `random` or `hf-hub:ORG/NAME`; only local files become absolute paths.
        if self.weights and Path(self.weights).exists():
            self.weights = str(Path(self.weights).absolute())

    @property
    def stores(self) -> Path:
        return self.out / "stores"

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    @property
    def predictions(self) -> Path:
        return self.out / "predictions"

    def train_run_dir(self) -> Path:
        """The run folder the train stage writes (``runs/<model>_<encoder>_<split>_seed<seed>``), named from the same
        settings ``wsi-pipeline train`` reads: the ``train:`` section of ``--config``, ``--model`` and ``--encoder``."""
        from ..config import load_config, merge_overrides
        from ..training import TrainConfig, run_dir, split_tag

        config = load_config(
            TrainConfig, "train", self.config, merge_overrides({"model": self.model, "encoder": self.encoder})
        )
        encoder = config.encoder or self.encoder or ""
        return run_dir(
            self.runs,
            model=config.model,
            encoder=encoder,
            split=split_tag(config.split_csv, config.folds),
            seed=config.seed,
        )

    def predict_model(self) -> str | None:
        """What predict applies: ``--checkpoint`` (a checkpoint or a run folder), else the whole run folder train
        writes (every fold: out-of-fold predictions for its labelled slides), never "the newest file"."""
        if self.checkpoint:
            return self.checkpoint
        if "predict" in self.stages and self.encoder:
            return str(self.train_run_dir())
        return None

    def log_dir(self, config: SubmitConfig) -> Path:
        return Path(config.log_dir).absolute() if config.log_dir else self.out / "logs" / "slurm"

    @property
    def local_log_dir(self) -> Path:
        return self.out / "logs" / "local"

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the missing option of a requested stage."""
        need = {
            "tile": [("slides", "SLIDES")],
            "embed": [("encoder", "--encoder")],
            "train": [("labels", "--labels"), ("encoder", "--encoder")],
            "predict": [("encoder", "--encoder")],
        }
        for stage in self.stages:
            for attr, option in need[stage]:
                if not getattr(self, attr):
                    raise ConfigError(f"the {stage} stage needs {option}; pass it or leave {stage} out of --stages")
        for path in [*self.slides, self.labels, self.config, self.checkpoint]:
            if path and not Path(path).exists():
                raise ConfigError(f"{path}: no such file or folder; check the path")
        if "predict" in self.stages and "train" not in self.stages and not self.checkpoint:
            run = self.train_run_dir()
            if not (run / "summary.json").is_file():
                found = sorted(p.parent.name for p in self.runs.glob("*/summary.json"))
                raise ConfigError(
                    f"predict without train: {run} is not a finished training run (the one these train settings "
                    f"name); finished runs under {self.runs}: {', '.join(found) or 'none'}; pass "
                    "--checkpoint RUN_FOLDER (or a checkpoint_best.pt), or add train to --stages"
                )

    def env(self, shards: int | None = None) -> dict[str, str]:
        """The ``WSI_*`` variables the stage scripts read (empty ones are left out)."""
        values = {
            "WSI_OUT": str(self.out),
            "WSI_SLIDES": "\n".join(self.slides),
            "WSI_STORES": str(self.stores),
            "WSI_RUNS": str(self.runs),
            "WSI_PREDICTIONS": str(self.predictions),
            "WSI_ENCODER": self.encoder or "",
            "WSI_WEIGHTS": self.weights or "",
            "WSI_LABELS": self.labels or "",
            "WSI_MODEL": self.model or "",
            "WSI_CHECKPOINT": self.predict_model() or "",
            "WSI_CONFIG": self.config or "",
            "WSI_DEVICE": self.device or "",
            "WSI_RECURSIVE": "1" if self.recursive else "",
            "WSI_OVERWRITE": "1" if self.overwrite else "",
            "WSI_SHARDS": str(shards) if shards else "",
        }
        return {key: value for key, value in values.items() if value}


def count_slides(inputs: Sequence[str | Path], *, recursive: bool = False) -> int:
    """How many slides ``inputs`` (files, folders, CSV manifests) name, found as the tile stage finds them."""
    return len(discover_slides(list(inputs), recursive=recursive))


def array_size(n_slides: int, config: SubmitConfig) -> int:
    """Array tasks for ``n_slides``: ``ceil(n / slides_per_task)``, at least 1, at most ``max_array_size``."""
    return max(1, min(math.ceil(n_slides / config.slides_per_task), config.max_array_size))


def find_stages_dir(option: str | Path | None = None) -> Path:
    """The folder of the ``*.sbatch`` stage scripts: ``option``, ``$WSI_PIPELINE_STAGES``, or the checkout's."""
    candidates = [option, os.environ.get("WSI_PIPELINE_STAGES"), Path(wsi_pipeline.__file__).parents[1] / "stages"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "tile.sbatch").is_file():
            return Path(candidate).absolute()
    raise ConfigError(
        "cannot find the stage scripts (stages/tile.sbatch ...); pass --stages-dir or set WSI_PIPELINE_STAGES "
        "to the stages/ folder of a wsi-pipeline checkout"
    )


@dataclass
class StageJob:
    """One stage of the chain: a Slurm array (``tasks``) or a single job (``tasks is None``)."""

    stage: str
    script: Path
    tasks: int | None
    options: list[str]  # sbatch options, without --dependency
    after: str | None = None  # the stage this one waits for
    dependency: str = "afterany"

    @property
    def log_pattern(self) -> str | None:
        """The ``--output`` pattern of the job's logs (``%A_%a.out`` for an array, ``%j.out`` for one job)."""
        found = [option.split("=", 1)[1] for option in self.options if option.startswith("--output=")]
        return found[-1] if found else None

    def sbatch_argv(self, after_job: str | None = None, *, script_args: Sequence[str] = ()) -> list[str]:
        """The ``sbatch`` command line; ``after_job`` is the job id of ``self.after``."""
        argv = ["sbatch", "--parsable", *self.options]
        if after_job:
            argv += [f"--dependency={self.dependency}:{after_job}", "--kill-on-invalid-dep=yes"]
        return [*argv, str(self.script), *script_args]


def _resource_options(stage: str, config: SubmitConfig, *, cpu_only: bool = False) -> list[str]:
    res = config.resources(stage)
    options = []
    partition = res.partition or config.partition
    for flag, value in (("--partition", partition), ("--account", config.account), ("--qos", config.qos)):
        if value:
            options.append(f"{flag}={value}")
    if res.time:
        options.append(f"--time={res.time}")
    if res.cpus:
        options.append(f"--cpus-per-task={res.cpus}")
    if res.mem:
        options.append(f"--mem={res.mem}")
    if not cpu_only:
        options += res.gpu_options(config.gpu_option)
    return [*options, *config.extra_sbatch_args, *res.extra_args]


def plan_jobs(spec: RunSpec, config: SubmitConfig, n_slides: int, stages_dir: Path) -> list[StageJob]:
    """The jobs of ``spec.stages``, in order, each waiting for the previous one.

    Examples
    --------
    >>> spec = RunSpec(out="run1", slides=["slides/"], encoder="resnet18")  # doctest: +SKIP
    >>> [job.sbatch_argv() for job in plan_jobs(spec, SubmitConfig(), 120, find_stages_dir())]  # doctest: +SKIP
    """
    tasks = array_size(n_slides, config)
    logs = spec.log_dir(config)
    jobs: list[StageJob] = []
    for stage in spec.stages:
        array = stage in SHARDED_STAGES
        # The scripts read the WSI_* variables of the submitter's environment, even where SBATCH_EXPORT=NONE.
        options = [f"--job-name=wsi-{stage}", "--export=ALL"]
        if array:
            options += [f"--array=0-{tasks - 1}%{config.max_concurrent}", f"--output={logs / stage / '%A_%a.out'}"]
        else:
            options.append(f"--output={logs / stage / '%j.out'}")
        # --device cpu: no stage asks for a GPU, so a CPU-only cluster accepts every job.
        options += _resource_options(stage, config, cpu_only=spec.device == "cpu")
        previous = jobs[-1].stage if jobs else None
        # Without a trained model there is nothing to predict with, so predict never starts after a failed train.
        dependency = "afterok" if (stage == "predict" and previous == "train") else config.dependency
        script = stages_dir / f"{stage}.sbatch"
        jobs.append(StageJob(stage, script, tasks if array else None, options, previous, dependency))
    return jobs
