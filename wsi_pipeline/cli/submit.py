"""`wsi-pipeline submit`: a full run as chained Slurm job arrays, or the same stages in sequence with --local."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from ..cluster import RunSpec, SubmitConfig, parse_stages
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
        Path | None,
        typer.Option(
            "--checkpoint",
            help="What predict applies: a training run folder (all folds) or one checkpoint_best.pt. "
            "Default: the run folder the train stage writes.",
        ),
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
        bool,
        typer.Option(
            "--wait", help="Wait for the jobs with progress lines, then report them (exit 1 unless all completed)."
        ),
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
    Every submission is recorded under OUT/submissions/ (see `wsi-pipeline status OUT`). With --wait or --local
    the exit code is 0 only when every job completed and every slide finished. Re-running the same command
    resumes: finished slides are skipped.
    """
    from ..cluster import command_line, dry_run_script, prepare_run, progress_line, run_here, submit_run, wait_for_run

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
    submission = prepare_run(spec, cfg, stages_dir)
    command = command_line(sys.argv)
    if dry_run:
        n_slides, shards = len(submission.slide_ids), submission.shards or 1
        typer.echo(f"# {n_slides} slides, {shards} array task(s) per per-slide stage", err=True)
        typer.echo(dry_run_script(submission.jobs, spec, submission.shards), nl=False)
        return
    if local:
        status = run_here(submission, command, echo=lambda line: typer.echo(line, err=True))
        typer.echo(status.report())
        raise typer.Exit(status.exit_code)
    record, submitted = submit_run(submission, command)
    for job in submitted:
        size = f"{job.tasks} task(s)" if job.tasks else "1 job"
        typer.echo(f"{job.stage}: job {job.job_id} ({size})")
    typer.echo(f"logs: {spec.log_dir(cfg)}")
    typer.echo(f"record: {record.path}")
    if not wait:
        typer.echo(f"follow it with: wsi-pipeline status {spec.out}")
        return
    last = [""]

    def on_poll(states: list) -> None:
        line = progress_line(states)
        if line != last[0]:
            last[0] = line
            typer.echo(f"[{datetime.now():%H:%M:%S}] {line}", err=True)

    status = wait_for_run(record, poll_s=cfg.poll_seconds, on_poll=on_poll)
    typer.echo(status.report())
    if status.exit_code:
        raise typer.Exit(1)
