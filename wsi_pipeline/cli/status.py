"""`wsi-pipeline status`: what became of a run started by `submit` (Slurm or --local), and how to resume it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["status"]


def status(
    run_dir: Annotated[Path, typer.Argument(help="The --out folder of a `wsi-pipeline submit`.")],
) -> None:
    """Per stage: jobs and their states, slides ok / failed / pending, failed slides with reasons, log files, and
    the command that resumes the run. Exit code: 0 all finished, 1 something failed, 2 still running.

    Example: wsi-pipeline status /scratch/run1
    """
    from ..cluster import run_status

    result = run_status(run_dir)
    typer.echo(result.report())
    if result.exit_code:
        raise typer.Exit(result.exit_code)
