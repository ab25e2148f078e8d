"""The ``wsi-pipeline`` command line. This file only assembles commands and handles errors in one place."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from .. import __version__
from ..errors import WsiPipelineError
from ._logging import setup_logging
from .convert import convert_mil
from .embed import embed
from .predict import predict
from .status import status
from .submit import submit
from .tile import tile
from .train import train

__all__ = ["app", "main"]

app = typer.Typer(
    name="wsi-pipeline",
    help="Whole-slide images to diagnosis: tile -> embed -> train -> predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsi-pipeline {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging (-v info, -vv debug)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    setup_logging(verbose, err_console)


app.command(no_args_is_help=True)(tile)
app.command(no_args_is_help=True)(embed)
app.command(no_args_is_help=True)(train)
app.command(no_args_is_help=True)(predict)
app.command(no_args_is_help=True)(submit)
app.command(no_args_is_help=True)(status)
app.command(name="convert-mil", no_args_is_help=True)(convert_mil)


def main() -> None:
    """Entry point: run the app; known errors become one line on stderr and exit code 1."""
    try:
        # Without standalone mode click returns (not raises) the code of a typer.Exit: pass it on.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except WsiPipelineError as err:
        if os.environ.get("WSI_PIPELINE_DEBUG"):
            raise
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted; finished slides are kept and the next run resumes")
        sys.exit(130)
    except Exception as err:  # click usage errors
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
