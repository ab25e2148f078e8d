"""Logging of the CLI: rich on a terminal; plain, unwrapped lines in files and Slurm logs."""

from __future__ import annotations

import logging
import sys

from rich.console import Console

__all__ = ["setup_logging"]


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def setup_logging(verbose: int, console: Console) -> None:
    """Level WARNING (default), INFO (-v) or DEBUG (-vv); a failed slide is a WARNING, so it always shows.

    Without a terminal (a Slurm job, ``--local`` logs, a redirect) log lines are ``time level message`` and never
    wrap. (Rich output, the summary tables, follows ``COLUMNS``: the stage scripts set it wide for job logs.)
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if _is_terminal(sys.stderr):
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=verbose > 1, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # huggingface_hub prints its records with a handler of its own; propagating them too would show each twice.
    logging.getLogger("huggingface_hub").propagate = False
