"""The ``wsi-pipeline`` command line. This file only assembles commands and handles errors in one place.

Command modules import only typer, rich and the standard library at the top; each command imports the library
(numpy, OpenCV, zarr, torch...) when it runs, so ``--help`` is instant and ``tile``, ``convert-mil`` and ``submit``
never load torch.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import typer
from rich.console import Console

from ..errors import UsageError, WsiPipelineError
from ._logging import setup_logging
from ._summary import MAX_ROWS, summary_table
from .annotate import annotate
from .cohort import lesion_cohort
from .convert import convert_mil, digit_bags
from .embed import embed
from .predict import predict
from .status import status
from .submit import submit
from .tile import tile
from .train import train
from .view import view

__all__ = ["app", "main", "summary_table", "MAX_ROWS"]

app = typer.Typer(
    name="wsi-pipeline",
    help="Whole-slide images to diagnosis: tile -> embed -> train -> predict (annotate: tile labels from polygons).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
err_console = Console(stderr=True)

# Usage errors are click exceptions: those of typer's own copy of click (typer >= 0.26) or of click itself (older
# typer). typer.BadParameter is public in both, and its base class named ClickException is the one to catch.
_ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_INTERRUPTED = 130  # typer turns Ctrl-C into this exit code


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"wsi-pipeline {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, metavar="", help="More logging (-v info, -vv debug)."
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    setup_logging(verbose, err_console)


app.command(no_args_is_help=True)(tile)
app.command(no_args_is_help=True)(embed)
app.command(no_args_is_help=True)(annotate)
app.command(no_args_is_help=True)(train)
app.command(no_args_is_help=True)(predict)
app.command(no_args_is_help=True)(submit)
app.command(no_args_is_help=True)(status)
app.command(no_args_is_help=True)(view)
app.command(name="convert-mil", no_args_is_help=True)(convert_mil)
app.command(name="digit-bags", no_args_is_help=True)(digit_bags)
app.command(name="lesion-cohort", no_args_is_help=True)(lesion_cohort)


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    # One line per warning: a user has no use for the library's source line that Python prints by default.
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def _error(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _out_option() -> str | None:
    """The command's ``--out``/``-o`` value, to name where a full disk is when the error does not say."""
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg in ("--out", "-o") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--out="):
            return arg.split("=", 1)[1]
    return None


def main() -> None:
    """Entry point. Usage errors print the usage line and the error (exit 2); library errors and file-system
    errors one line (exit 1). ``WSI_PIPELINE_DEBUG=1`` shows the traceback instead."""
    debug = bool(os.environ.get("WSI_PIPELINE_DEBUG"))
    if not debug:
        warnings.showwarning = _show_warning
    try:
        # Without standalone mode click returns (not raises) the code of a typer.Exit: pass it on.
        code = app(standalone_mode=False)
    except _ClickException as err:
        err.show()  # type: ignore[attr-defined]
        sys.exit(err.exit_code)  # type: ignore[attr-defined]
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        _error("aborted", _INTERRUPTED)
    except KeyboardInterrupt:
        code = _INTERRUPTED
    except UsageError as err:  # --set / --shard mistakes: usage mistakes, exit 2 like click's own
        if debug:
            raise
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
        err_console.print(f"Try 'wsi-pipeline {command} --help' for help.".replace("  ", " "), highlight=False)
        _error(str(err), 2)
    except WsiPipelineError as err:
        if debug:
            raise
        _error(str(err), 1)
    except OSError as err:  # permissions, a full disk, a path that is a file...: the user's to fix, said in one line
        if debug:
            raise
        from ..batch import DISK_FULL, disk_full_message

        if err.errno in DISK_FULL:
            _error(disk_full_message(err, _out_option()), 1)
        _error(f"{err} (WSI_PIPELINE_DEBUG=1 shows where)", 1)
    if code == _INTERRUPTED:
        err_console.print("interrupted; finished slides are kept and the next run resumes")
    if isinstance(code, int) and code:
        sys.exit(code)
