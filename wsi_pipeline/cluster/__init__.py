"""Full runs on a Slurm cluster (job arrays chained tile -> embed -> train -> predict) or on one machine.

Examples
--------
>>> from wsi_pipeline.cluster import RunSpec, SubmitConfig, plan_jobs, find_stages_dir, submit_jobs
>>> spec = RunSpec(out="run1", slides=["slides/"], encoder="resnet18", labels="labels.csv")  # doctest: +SKIP
>>> jobs = plan_jobs(spec, SubmitConfig(), n_slides=120, stages_dir=find_stages_dir())  # doctest: +SKIP
>>> submit_jobs(jobs, spec, shards=jobs[0].tasks)  # doctest: +SKIP
"""

from ._config import SHARDED_STAGES, STAGES, StageResources, SubmitConfig
from ._local import StageOutcome, run_local, summarize_run
from ._plan import RunSpec, StageJob, array_size, count_slides, find_stages_dir, parse_stages, plan_jobs
from ._slurm import SlurmError, SubmittedJob, dry_run_script, job_environment, submit_jobs, wait_for_jobs

__all__ = [
    "STAGES",
    "SHARDED_STAGES",
    "StageResources",
    "SubmitConfig",
    "RunSpec",
    "StageJob",
    "parse_stages",
    "count_slides",
    "array_size",
    "find_stages_dir",
    "plan_jobs",
    "SubmittedJob",
    "SlurmError",
    "job_environment",
    "dry_run_script",
    "submit_jobs",
    "wait_for_jobs",
    "StageOutcome",
    "run_local",
    "summarize_run",
]
