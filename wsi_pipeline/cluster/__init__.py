"""Full runs on a Slurm cluster (job arrays chained tile -> embed -> train -> predict) or on one machine, and
what became of them (``run_status``).

Examples
--------
>>> from wsi_pipeline.cluster import RunSpec, SubmitConfig, prepare_run, submit_run, run_status
>>> spec = RunSpec(out="run1", slides=["slides/"], encoder="resnet18", labels="labels.csv")  # doctest: +SKIP
>>> record, jobs = submit_run(prepare_run(spec, SubmitConfig()), ["wsi-pipeline", "submit", "..."])  # doctest: +SKIP
>>> print(run_status("run1").report())  # doctest: +SKIP
"""

from ._config import GPU_STAGES, SHARDED_STAGES, STAGES, StageResources, SubmitConfig, sbatch_header
from ._jobs import (
    ACTIVE_STATES,
    JobSpec,
    SlurmClient,
    TaskState,
    expand_task_ids,
    parse_sacct,
    parse_scontrol,
    progress_line,
    query_states,
    state_from_log,
    wait_for_states,
)
from ._local import local_states, run_local, run_logged
from ._plan import RunSpec, StageJob, array_size, count_slides, find_stages_dir, parse_stages, plan_jobs
from ._record import JobEntry, SubmissionRecord, command_line, latest_record, list_records
from ._run import Submission, prepare_run, run_here, submit_run, wait_for_run
from ._slurm import SlurmError, SubmittedJob, dry_run_script, job_environment, submit_jobs
from ._status import RunStatus, StageStatus, run_status, status_of_record

__all__ = [
    "STAGES",
    "SHARDED_STAGES",
    "GPU_STAGES",
    "StageResources",
    "SubmitConfig",
    "sbatch_header",
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
    "JobSpec",
    "TaskState",
    "SlurmClient",
    "ACTIVE_STATES",
    "expand_task_ids",
    "parse_sacct",
    "parse_scontrol",
    "progress_line",
    "query_states",
    "state_from_log",
    "wait_for_states",
    "run_local",
    "run_logged",
    "local_states",
    "JobEntry",
    "SubmissionRecord",
    "command_line",
    "latest_record",
    "list_records",
    "Submission",
    "prepare_run",
    "submit_run",
    "run_here",
    "wait_for_run",
    "RunStatus",
    "StageStatus",
    "run_status",
    "status_of_record",
]
