"""The ``wsi-pipeline`` command line. This file only assembles commands and handles errors in one place.

Command modules import only typer, rich and the standard library at the top; each command imports the library
(numpy, OpenCV, zarr, torch...) when it runs, so ``--help`` is instant and ``tile``, ``convert-mil`` and ``submit``
never load torch.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import typer
from rich.console import Console

from .._memory import return_freed_memory
from ..errors import UsageError, WsiPipelineError
from ._logging import setup_logging
from ._summary import MAX_ROWS, summary_table

__all__ = ["app", "build_app", "app_for", "main", "COMMANDS", "summary_table", "MAX_ROWS"]

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


def _root(
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, metavar="", help="More logging (-v info, -vv debug)."
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    setup_logging(verbose, err_console)


# Command name -> (module, function). Typer turns every registered command's signature into a click command each
# time the program starts (~0.1 s of CPU for all of them); a run needs only its own, so `main` builds an app of the
# command named on the line, and the whole app only for the top-level help or an unknown command.
COMMANDS: dict[str, tuple[str, str]] = {
    "tile": (".tile", "tile"),
    "embed": (".embed", "embed"),
    "annotate": (".annotate", "annotate"),
    "train": (".train", "train"),
    "predict": (".predict", "predict"),
    "submit": (".submit", "submit"),
    "status": (".status", "status"),
    "view": (".view", "view"),
    "convert-mil": (".convert", "convert_mil"),
    "digit-bags": (".convert", "digit_bags"),
    "lesion-cohort": (".cohort", "lesion_cohort"),
}


_HELP = "Whole-slide images to diagnosis: tile -> embed -> train -> predict (annotate: tile labels from polygons)."


def build_app(names: Iterable[str] = COMMANDS) -> typer.Typer:
    """The ``wsi-pipeline`` app with the commands ``names`` (default: all of them), in ``COMMANDS`` order."""
    import importlib

    wanted = set(names)
    cli = typer.Typer(
        name="wsi-pipeline",
        help=_HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )
    cli.callback()(_root)  # a callback keeps even a one-command app a group: `wsi-pipeline tile ...` as always
    for name, (module, function) in COMMANDS.items():
        if name in wanted:
            command = getattr(importlib.import_module(module, __name__), function)
            cli.command(name=name, no_args_is_help=True)(command)
    return cli


def app_for(argv: Sequence[str]) -> typer.Typer:
    """The app that runs ``argv``: one with only the command it names (the root options take no values, so that is
    the first word that is not an option), or the whole app."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    return build_app([command]) if command in COMMANDS else build_app()


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole app, for tests and for embedding the CLI in other programs
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        code = app_for(sys.argv[1:])(standalone_mode=False)
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
    if "torch" in sys.modules:
        return_freed_memory()  # before the interpreter exits: torch's libraries page in more then (see its doc)
    if code == _INTERRUPTED:
        err_console.print("interrupted; finished slides are kept and the next run resumes")
    if isinstance(code, int) and code:
        sys.exit(code)
