"""`wsi-pipeline lesion-cohort`: a cohort of slides of real H&E with known lesions, labels and annotations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import load_config, merge_overrides, parse_set_overrides
from ..errors import ConfigError
from ._options import ConfigOpt, OutDirOpt, SeedOpt, SetOpt

__all__ = ["lesion_cohort"]


def _range(text: str | None, option: str, kind: type = float) -> list | None:
    if text is None:
        return None
    low, sep, high = text.partition("-")
    try:
        return [kind(low), kind(high)] if sep else [kind(low), kind(low)]
    except ValueError as err:
        raise ConfigError(f"{option} {text!r}: expected MIN-MAX or one value, e.g. {option} 0.005-0.03") from err


def _size(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    width, sep, height = text.lower().partition("x")
    try:
        return int(width), int(height if sep else width)
    except ValueError as err:
        raise ConfigError(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. --size 4096x3072") from err


def lesion_cohort(
    out: OutDirOpt,
    slides: Annotated[int | None, typer.Option("--slides", "-n", help="Number of slides (default 32).")] = None,
    positive_fraction: Annotated[
        float | None, typer.Option("--positive-fraction", help="Share of slides with lesions (default 0.5).")
    ] = None,
    size: Annotated[
        str | None, typer.Option("--size", metavar="WxH", help="Level-0 size of each slide (default 4096x3072).")
    ] = None,
    mpp: Annotated[float | None, typer.Option("--mpp", help="Microns per pixel of the slides (default 0.5).")] = None,
    lesions: Annotated[
        str | None, typer.Option("--lesions", metavar="MIN-MAX", help="Lesions per positive slide (default 1-3).")
    ] = None,
    lesion_share: Annotated[
        str | None,
        typer.Option(
            "--lesion-share",
            metavar="MIN-MAX",
            help="Lesion area as a share of the slide's tissue, log-uniform (default 0.02-0.1).",
        ),
    ] = None,
    stain_match: Annotated[
        str | None, typer.Option("--stain-match", help="none, reinhard or macenko (lesion stain to background).")
    ] = None,
    background: Annotated[
        Path | None,
        typer.Option("--background", help="Normal tissue source (default example/slides/CMU-1-Small-Region.svs)."),
    ] = None,
    background_mpp: Annotated[
        float | None, typer.Option("--background-mpp", help="Resolution of a background source that states none.")
    ] = None,
    lesion: Annotated[
        Path | None,
        typer.Option("--lesion", help="Tumour source (default example/images/tiatoolbox-target_image.png)."),
    ] = None,
    lesion_mpp: Annotated[
        float | None, typer.Option("--lesion-mpp", help="Resolution of a lesion source that states none.")
    ] = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Remake a cohort made with other settings.")] = False,
) -> None:
    """Generate slides of real H&E with known lesions: OUT/slides/*.tiff, OUT/labels.csv, OUT/annotations/*.geojson
    (lesion outlines for `annotate`) and OUT/cohort.json (sources, settings, seed, lesions per slide).

    Example: wsi-pipeline lesion-cohort --out cohort/ --slides 32 --lesion-share 0.02-0.1
    """
    from ..cohort import CohortConfig, make_cohort

    width, height = _size(size)
    overrides = merge_overrides(
        parse_set_overrides(set_),
        {
            "slides": slides,
            "positive_fraction": positive_fraction,
            "width": width,
            "height": height,
            "mpp": mpp,
            "lesions": _range(lesions, "--lesions", int),
            "lesion_share": _range(lesion_share, "--lesion-share"),
            "stain_match": stain_match,
            "background": None if background is None else str(background),
            "background_mpp": background_mpp,
            "lesion": None if lesion is None else str(lesion),
            "lesion_mpp": lesion_mpp,
            "seed": seed,
        },
    )
    cfg = load_config(CohortConfig, "cohort", config, overrides)
    made = make_cohort(out, cfg, overwrite=overwrite)
    summary = made.record["summary"]
    low, high = summary["lesion_share_range"]
    shares = "" if low is None else f", lesions cover {100 * low:.2g}-{100 * high:.2g}% of their slide's tissue"
    state = f"{made.made} written" if made.made else "up to date"
    typer.echo(
        f"lesion-cohort: {summary['slides']} slides ({state}), {summary['positive']} with {summary['lesions']} "
        f"lesions{shares} -> {made.slides_dir}, {made.labels_csv}, {made.annotations_dir}"
    )
