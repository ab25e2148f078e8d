"""`wsi-pipeline tile`: find tissue and write one store of tile coordinates per slide."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..batch import resolve_shard
from ..config import load_config, merge_overrides, parse_set_overrides
from ..discovery import SLIDE_EXTENSIONS, discover_slides
from ._options import ConfigOpt, OutDirOpt, OverwriteOpt, RecursiveOpt, SetOpt, ShardOpt
from ._summary import slide_progress, summary_table

__all__ = ["tile"]

console = Console(stderr=True)


def tile(
    slides: Annotated[
        list[Path],
        typer.Argument(
            metavar="SLIDES", help="Slide files, folders of slides, or CSV manifests (path[,slide_id,mpp])."
        ),
    ],
    out: OutDirOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    target_mpp: Annotated[
        float | None, typer.Option("--target-mpp", help="Tile resolution in um/px (default 0.5, about 20x).")
    ] = None,
    tile_size: Annotated[int | None, typer.Option("--tile-size", help="Tile side in pixels at --target-mpp.")] = None,
    stride: Annotated[
        int | None, typer.Option("--stride", help="Grid step in pixels at --target-mpp (< tile size: overlap).")
    ] = None,
    min_tissue: Annotated[
        float | None, typer.Option("--min-tissue", help="Keep tiles with at least this tissue fraction (0-1).")
    ] = None,
    slide_mpp: Annotated[
        float | None,
        typer.Option(
            "--slide-mpp",
            help="Level-0 um/px of slides whose metadata states none (a slide's own value wins; to correct it, give "
            "that slide its own value with --mpp-csv or a manifest mpp column).",
        ),
    ] = None,
    mpp_csv: Annotated[
        Path | None, typer.Option("--mpp-csv", help="CSV with columns slide,mpp: per-slide level-0 um/px.")
    ] = None,
    recursive: RecursiveOpt = False,
    ext: Annotated[
        list[str] | None,
        typer.Option(
            "--ext", help=f"Slide file extensions in folders (repeatable; default {' '.join(SLIDE_EXTENSIONS)})."
        ),
    ] = None,
    shard: ShardOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Find tissue and write tile coordinates: OUT/<slide_id>.zarr, OUT/qc/*.jpg, OUT/geojson/*.geojson,
    OUT/manifests/tile*.csv. Finished slides are skipped; exit code 1 when any slide failed.

    Example: wsi-pipeline tile slides/ --out tiles/ --target-mpp 0.5 --tile-size 224
    """
    from ..tiling import TileConfig  # numpy-, OpenCV- and zarr-free: a config mistake is reported before they load

    overrides = merge_overrides(
        parse_set_overrides(set_),
        {"target_mpp": target_mpp, "tile_size": tile_size, "stride": stride, "min_tissue": min_tissue},
    )
    cfg = load_config(TileConfig, "tile", config, overrides)
    chosen_shard = resolve_shard(shard)
    entries = discover_slides(
        slides,
        recursive=recursive,
        extensions=ext or SLIDE_EXTENSIONS,
        mpp_csv=mpp_csv,
        slide_mpp=slide_mpp,
    )
    n_slides = len(chosen_shard.select(entries)) if chosen_shard else len(entries)
    shard_text = f" (shard {chosen_shard} of {len(entries)} slides)" if chosen_shard else ""
    console.print(
        f"tile: {n_slides} slide(s){shard_text} -> {out}  [{cfg.tile_size} px @ {cfg.target_mpp:g} um/px, "
        f"stride {cfg.step}, tissue >= {cfg.min_tissue:g}]",
        highlight=False,
    )
    from ..tiling import tile_slides

    with slide_progress(console, "tile", n_slides) as on_record:
        result = tile_slides(entries, out, config=cfg, shard=chosen_shard, overwrite=overwrite, on_record=on_record)
    console.print(summary_table("tile", result))
    if result.failed:
        raise typer.Exit(1)
