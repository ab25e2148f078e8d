"""The end-of-batch table: every slide for small batches, only the problems for large ones."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from wsi_pipeline.batch import BatchResult, SlideRecord
from wsi_pipeline.cli import MAX_ROWS, summary_table


def _render(result: BatchResult) -> str:
    console = Console(width=200, record=True)
    console.print(summary_table("tile", result))
    return console.export_text()


def _records(n_ok: int, n_failed: int) -> list[SlideRecord]:
    ok = [SlideRecord(f"ok-{i:04d}", f"/s/ok-{i}.svs", "ok", n_tiles=10, seconds=1.0) for i in range(n_ok)]
    bad = [
        SlideRecord(f"bad-{i}", f"/s/bad-{i}.svs", "failed", error=f"/s/bad-{i}.svs: cannot open it")
        for i in range(n_failed)
    ]
    return ok + bad


def test_small_batch_lists_every_slide_without_repeating_the_path() -> None:
    text = _render(BatchResult(_records(3, 1), Path("m.csv")))
    assert all(f"ok-000{i}" in text for i in range(3)) and "bad-0" in text
    assert "cannot open it" in text and "/s/bad-0.svs: cannot" not in text


def test_large_batch_lists_only_the_failures() -> None:
    text = _render(BatchResult(_records(MAX_ROWS + 20, 2), Path("m.csv")))
    assert "bad-0" in text and "bad-1" in text
    assert "ok-0000" not in text
    assert f"{MAX_ROWS + 20} more slide(s) not listed" in text


def test_large_batch_all_ok_is_one_summary_line_not_an_empty_table() -> None:
    text = _render(BatchResult(_records(MAX_ROWS + 20, 0), Path("m.csv")))
    assert (
        text.strip()
        == f"tile: {MAX_ROWS + 20} ok, 0 skipped, 0 failed (manifest: m.csv); {(MAX_ROWS + 20) * 10:,} tiles"
    )


def test_the_summary_line_is_not_folded_to_the_table_width() -> None:
    """In a job log (wide console, narrow table) the manifest path stays on the summary's one line."""
    manifest = Path("/scratch/a-long-run-folder-name/stores/manifests/tile.shard-12-of-400.csv")
    console = Console(width=400, record=True)
    console.print(summary_table("tile", BatchResult(_records(2, 1), manifest)))
    first = console.export_text().splitlines()[0]
    assert first == f"tile: 2 ok, 0 skipped, 1 failed (manifest: {manifest})"
