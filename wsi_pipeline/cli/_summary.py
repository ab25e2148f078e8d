"""What per-slide batch commands (tile, embed, predict) show: a progress bar over slides and a summary table."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..batch import BatchResult, SlideRecord

__all__ = ["summary_table", "slide_progress"]

_STATUS_STYLE = {"ok": "green", "skipped": "yellow", "failed": "bold red"}
MAX_ROWS = 50  # beyond this, a batch of thousands of slides shows its failures only; the manifest has every row


def _short_reason(rec: SlideRecord) -> str:
    # The slide is named in its row; drop the path that library messages start with.
    prefix = f"{rec.path}: "
    return rec.error[len(prefix) :] if rec.error.startswith(prefix) else rec.error


def summary_table(
    stage: str, result: BatchResult, extra: Mapping[str, Callable[[SlideRecord], str]] | None = None
) -> RenderableType:
    """A summary line, then one row per slide: status, tiles, seconds, the ``extra`` columns (header -> cell of a
    record), reason.

    Large batches list only the slides that were not ``ok`` (failed first), at most ``MAX_ROWS`` of them; a large
    batch where every slide is ok is the summary line alone (an empty table would say nothing). The summary line
    (with the manifest's path) is a line of its own, as wide as the console: as the table's title it would be folded
    to the table's width.
    """
    extra = dict(extra or {})
    records = result.records
    caption = None
    if len(records) > MAX_ROWS:
        order = {"failed": 0, "skipped": 1}
        not_ok = sorted((r for r in records if r.status != "ok"), key=lambda r: order.get(r.status, 2))
        if not not_ok:
            total = sum(r.n_tiles or 0 for r in records)
            return Text(f"{stage}: {result.summary()}; {total:,} tiles", no_wrap=False)
        records = not_ok[:MAX_ROWS]
        caption = f"{len(result.records) - len(records)} more slide(s) not listed; every slide is in the manifest"
    table = Table(show_lines=False, caption=caption)
    table.add_column("slide")
    table.add_column("status")
    table.add_column("tiles", justify="right")
    table.add_column("seconds", justify="right")
    for header in extra:
        table.add_column(header)
    table.add_column("reason", overflow="fold")
    for rec in records:
        style = _STATUS_STYLE.get(rec.status, "")
        table.add_row(
            rec.slide_id,
            f"[{style}]{rec.status}[/]",
            "" if rec.n_tiles is None else str(rec.n_tiles),
            "" if rec.seconds is None else f"{rec.seconds:.1f}",
            *(cell(rec) for cell in extra.values()),
            _short_reason(rec),
        )
    return Group(Text(f"{stage}: {result.summary()}", style="bold"), table)


@contextmanager
def slide_progress(console: Console, stage: str, total: int | None) -> Iterator[Callable[[SlideRecord], None]]:
    """A transient bar over slides; yields the ``on_record`` callback that advances it (pass it to the stage)."""
    with Progress(
        TextColumn(f"[bold]{stage}[/] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("", total=total)

        def on_record(rec: SlideRecord) -> None:
            progress.update(task, advance=1, description=f"{rec.slide_id}: {rec.status}")

        yield on_record
