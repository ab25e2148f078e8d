"""`wsi-pipeline annotate`: QuPath GeoJSON / ASAP XML annotations -> per-tile labels in each store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..batch import SlideRecord, resolve_shard
from ..config import load_config, merge_overrides, parse_set_overrides
from ..errors import ConfigError
from ._options import ConfigOpt, OverwriteOpt, SetOpt, ShardOpt
from ._summary import slide_progress, summary_table

__all__ = ["annotate"]

console = Console(stderr=True)
_LISTED = 10  # stores without annotations / files without stores named in the final lines


def _classes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--classes {text!r}: give class names separated by commas, e.g. --classes tumor,necrosis")
    return names


def _names(items: list[str]) -> str:
    more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


def annotate(
    stores_dir: Annotated[
        Path, typer.Argument(help="Folder of <slide_id>.zarr tile stores (from `wsi-pipeline tile`).")
    ],
    annotations: Annotated[
        Path,
        typer.Option(
            "--annotations",
            "-a",
            help="Folder of <slide_id>.geojson (QuPath) or <slide_id>.xml (ASAP) polygons in level-0 pixels.",
        ),
    ],
    classes: Annotated[
        str | None,
        typer.Option("--classes", help="Tile classes in order, comma-separated: label k is the k-th (default tumor)."),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Share of a tile's area a class needs (default 0.5).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    shard: ShardOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Label each tile from annotation polygons: instance_labels in every store that has an annotation file
    (0 negative, k class k, -1 unknown), manifests/annotate*.csv. Exit code 1 when any slide failed.
    Example: wsi-pipeline annotate stores/ --annotations camelyon16/annotations --classes tumor
    """
    from ..annotations import AnnotateConfig, annotate_stores, find_annotation_files
    from ..store import list_stores, read_instance_labels_attrs, store_path

    overrides = merge_overrides(parse_set_overrides(set_), {"classes": _classes(classes), "threshold": threshold})
    cfg = load_config(AnnotateConfig, "annotate", config, overrides)
    chosen_shard = resolve_shard(shard)
    # Bad folders are one clean error line before anything is printed.
    find_annotation_files(annotations)
    list_stores(stores_dir)
    console.print(
        f"annotate: {stores_dir} with {annotations}  [classes {', '.join(cfg.classes)}, threshold {cfg.threshold:g}]",
        highlight=False,
    )
    with slide_progress(console, "annotate", None) as on_record:
        result = annotate_stores(
            stores_dir, annotations, config=cfg, shard=chosen_shard, overwrite=overwrite, on_record=on_record
        )

    def labels(rec: SlideRecord) -> str:
        attrs = read_instance_labels_attrs(store_path(stores_dir, rec.slide_id)) if rec.status != "failed" else None
        counts = (attrs or {}).get("counts") or {}
        return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))

    console.print(summary_table("annotate", result.batch, extra={"tiles per label": labels}))
    if result.without_annotations:
        console.print(
            f"{len(result.without_annotations)} store(s) have no annotation file and get no labels: "
            f"{_names(result.without_annotations)}",
            highlight=False,
        )
    if result.unmatched_files:
        console.print(
            f"[yellow]{len(result.unmatched_files)} annotation file(s) match no store[/] (name them <slide_id>.geojson "
            f"or .xml): {_names([p.name for p in result.unmatched_files])}",
            highlight=False,
        )
    if result.failed:
        raise typer.Exit(1)
