"""`wsi-pipeline embed`: patch embeddings for every tile store in a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ..batch import resolve_shard
from ..config import load_config, merge_overrides, parse_set_overrides
from ._options import ConfigOpt, DeviceOpt, EncoderOpt, OverwriteOpt, SetOpt, ShardOpt, WeightsOpt
from ._summary import summary_table

__all__ = ["embed", "encoders_table"]

console = Console(stderr=True)


class _TilesPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        speed = task.finished_speed or task.speed or (task.completed / elapsed if elapsed else None)
        return Text(f"{speed:,.0f} tiles/s" if speed else "- tiles/s", style="progress.data.speed")


def encoders_table() -> Table:
    """The encoder presets as a rich table, generated from the registry."""
    from ..encoders import describe_encoders

    rows = describe_encoders()
    table = Table(title="Encoder presets (any timm model name works too: --encoder timm:NAME)")
    for column in ("name", "timm_name", "dim", "input", "pooling", "precision", "weights", "license"):
        table.add_column(column, no_wrap=column == "name", overflow="fold")
    for row in rows:
        table.add_row(*(str(row[str(col.header)]) for col in table.columns))
    return table


def embed(
    stores_dir: Annotated[
        Path | None,
        typer.Argument(metavar="STORES_DIR", help="Folder of <slide_id>.zarr tile stores (from `wsi-pipeline tile`)."),
    ] = None,
    encoder: EncoderOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = None,
    precision: Annotated[str | None, typer.Option("--precision", help="auto, bf16, fp16 or fp32.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="Tiles per forward pass.")] = None,
    num_workers: Annotated[
        int | None, typer.Option("--num-workers", "-j", help="Reader processes (default: from the usable CPUs).")
    ] = None,
    compile_: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the encoder.")] = None,
    offline: Annotated[
        bool | None, typer.Option("--offline", help="Never download: weights must be local or in the HF cache.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    shard: ShardOpt = None,
    overwrite: OverwriteOpt = False,
    list_: Annotated[bool, typer.Option("--list", help="List the encoder presets and exit.")] = False,
) -> None:
    """Embed the tiles of each store with a timm encoder into features/<encoder> (resumable, shardable)."""
    if list_:
        out = Console()
        if not out.is_terminal:
            out = Console(width=160)  # piped into a file or a pager: do not squeeze the table to 80 columns
        out.print(encoders_table())
        return
    if stores_dir is None:
        raise typer.BadParameter("give the folder of tile stores (or --list)", param_hint="STORES_DIR")
    from ..embedding import EmbedConfig  # torch-free: a config mistake is reported before torch loads

    options = {
        "encoder": encoder,
        "weights": weights,
        "device": device,
        "precision": precision,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "compile": compile_,
        "offline": offline or None,
    }
    cfg = load_config(EmbedConfig, "embed", config, merge_overrides(options, parse_set_overrides(set_)))
    from ..embedding import EmbedProgress, embed_stores, load_encoder
    from ..store import require_stores

    # Everything that can fail on bad input happens before the progress bar, so errors come out as one clean line.
    selected = resolve_shard(shard)
    require_stores(stores_dir)  # a run folder given instead of its stores/ is an error, not "0 ok"
    enc = load_encoder(cfg)
    # One bar for the whole run: tiles of all slides to embed, their rate and the time left.
    with Progress(
        TextColumn("[bold]embed[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _TilesPerSecond(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(cfg.encoder, total=None)

        def progress(state: EmbedProgress) -> None:
            slides = f"{cfg.encoder}: {state.slides_done}/{state.slides_total} slides"
            bar.update(task, completed=state.tiles_done, total=state.tiles_total, description=slides)

        result = embed_stores(
            stores_dir, config=cfg, shard=selected, overwrite=overwrite, progress=progress, encoder=enc
        )
    console.print(summary_table("embed", result))
    if result.failed:
        raise typer.Exit(1)
