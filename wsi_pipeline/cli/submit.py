"""`wsi-pipeline submit`: a full run as chained Slurm job arrays, or the same stages in sequence with --local."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cluster import (
    RunSpec,
    SubmitConfig,
    count_slides,
    dry_run_script,
    find_stages_dir,
    parse_stages,
    plan_jobs,
    run_local,
    submit_jobs,
    summarize_run,
    wait_for_jobs,
)
from ..config import load_config, merge_overrides, parse_set_overrides
from ._options import ConfigOpt, DeviceOpt, EncoderOpt, ModelOpt, OverwriteOpt, RecursiveOpt, WeightsOpt


def submit(
    slides: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="SLIDES", help="Slide files, folders or CSV manifests (needed when the run includes tile)."
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", file_okay=False, help="Run folder: stores/, runs/, predictions/, logs/.")
    ] = ...,
    encoder: EncoderOpt = None,
    weights: WeightsOpt = None,
    labels: Annotated[Path | None, typer.Option("--labels", "-l", help="Labels CSV for train.")] = None,
    model: ModelOpt = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Trained model for predict when train is not in --stages.")
    ] = None,
    stages: Annotated[
        str, typer.Option("--stages", help="Comma-separated stages to run, in pipeline order.")
    ] = "tile,embed,train,predict",
    config: ConfigOpt = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a submit setting, e.g. --set embed.gpus=0 --set partition=gpu."),
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="Run the stages one after another on this machine.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the sbatch commands as a script; submit nothing.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the jobs, then summarise (exit 1 on failures).")
    ] = False,
    partition: Annotated[str | None, typer.Option("--partition", "-p", help="Slurm partition.")] = None,
    account: Annotated[str | None, typer.Option("--account", "-A", help="Slurm account.")] = None,
    slides_per_task: Annotated[int | None, typer.Option("--slides-per-task", help="Slides per array task.")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", help="Array tasks running at once, per stage.")
    ] = None,
    device: DeviceOpt = None,
    recursive: RecursiveOpt = False,
    overwrite: OverwriteOpt = False,
    stages_dir: Annotated[
        Path | None, typer.Option("--stages-dir", help="Folder of the *.sbatch scripts (default: the checkout's).")
    ] = None,
) -> None:
    """Run tile -> embed -> train -> predict as Slurm job arrays with dependencies, or locally with --local.

    Per-slide stages run as arrays of ceil(slides / slides-per-task) tasks; each stage waits for the previous one
    (afterany: slides that failed are left out downstream and reported; predict needs a successful train).
    Re-running the same command resumes: finished slides are skipped.
    """
    cfg = load_config(
        SubmitConfig,
        "submit",
        config,
        merge_overrides(
            {"partition": partition, "account": account, "slides_per_task": slides_per_task},
            {"max_concurrent": max_concurrent},
            parse_set_overrides(set_),
        ),
    )
    spec = RunSpec(
        out=out,
        slides=[str(s) for s in slides or []],
        encoder=encoder,
        weights=weights,
        labels=str(labels) if labels else None,
        model=model,
        checkpoint=str(checkpoint) if checkpoint else None,
        config=str(config) if config else None,
        device=device,
        recursive=recursive,
        overwrite=overwrite,
        stages=parse_stages(stages),
    )
    spec.validate()
    from ..store import list_stores  # zarr: imported only when a command runs, so --help stays instant

    # A run that starts after tile sizes its arrays from the stores already there.
    n_slides = count_slides(spec.slides, recursive=recursive) if spec.slides else len(list_stores(spec.stores))
    jobs = plan_jobs(spec, cfg, n_slides, find_stages_dir(stages_dir))
    shards = next((job.tasks for job in jobs if job.tasks), None)

    if dry_run:
        typer.echo(f"# {n_slides} slides, {shards or 1} array task(s) per per-slide stage", err=True)
        typer.echo(dry_run_script(jobs, spec, shards), nl=False)
        return
    if local:
        outcomes = run_local(jobs, spec, echo=lambda line: typer.echo(line, err=True))
        _report(spec)
        if any(outcome.returncode != 0 for outcome in outcomes):
            raise typer.Exit(1)
        return
    submitted = submit_jobs(jobs, spec, shards)
    for job in submitted:
        size = f"{job.tasks} task(s)" if job.tasks else "1 job"
        typer.echo(f"{job.stage}: job {job.job_id} ({size})")
    typer.echo(f"logs: {spec.log_dir(cfg)}")
    if wait:
        wait_for_jobs([job.job_id for job in submitted])
        if _report(spec):
            raise typer.Exit(1)


def _report(spec: RunSpec) -> bool:
    """Print slide statuses per stage; True when any slide failed."""
    failed = False
    for stage, counts in summarize_run(spec).items():
        typer.echo(f"{stage}: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed")
        failed = failed or counts["failed"] > 0
    return failed
