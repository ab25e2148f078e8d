"""`wsi-pipeline predict`: class probabilities, attention scores and heatmaps from a trained checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..config import load_config, merge_overrides, parse_set_overrides
from ._options import ConfigOpt, DeviceOpt, OutDirOpt, SetOpt

__all__ = ["predict"]

console = Console()


def predict(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint_best.pt from a train run.")],
    inputs: Annotated[
        list[Path], typer.Argument(help="Folders of stores, stores, CSVs slide_id,store, or slide files.")
    ],
    out: OutDirOpt,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Top-attention tiles saved per slide.")] = None,
    heatmaps: Annotated[bool | None, typer.Option("--heatmaps/--no-heatmaps", help="Draw heatmaps.")] = None,
    scaling: Annotated[
        str | None, typer.Option("--scaling", help="Heatmap colour scaling: rank, percentile or linear.")
    ] = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Predict slides: <out>/predictions.csv, heatmaps/, top_tiles/, and scores/<run> in each store."""
    from ..predict import PredictConfig, predict_slides

    options = {"top_k": top_k, "heatmaps": heatmaps, "scaling": scaling, "device": device}
    cfg = load_config(PredictConfig, "predict", config, merge_overrides(options, parse_set_overrides(set_)))
    with Progress(
        TextColumn("[bold]predict"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("predict", total=None, info="")

        def on_slide(slide_id: str, row: dict) -> None:
            progress.update(task, advance=1, info=f"{slide_id}: {row['predicted_class']}")

        result = predict_slides(checkpoint, inputs, out, cfg, on_slide=on_slide)
    console.print(f"{len(result.rows)} slide(s) predicted -> {result.csv}")
    if result.failed:
        for slide_id, reason in result.failed:
            console.print(f"[red]failed[/] {slide_id}: {reason}", highlight=False)
        raise typer.Exit(1)
