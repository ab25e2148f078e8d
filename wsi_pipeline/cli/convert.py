"""`wsi-pipeline convert-mil` and `wsi-pipeline digit-bags`: MIL benchmark data as bag stores + labels CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ._options import OutDirOpt, OverwriteOpt, SeedOpt

__all__ = ["convert_mil", "digit_bags"]


def convert_mil(
    csvs: Annotated[
        list[Path],
        typer.Argument(
            exists=True,
            dir_okay=False,
            metavar="CSVS",
            help="Benchmark CSVs with rows label,bag_id,f1..fD (no header).",
        ),
    ],
    out: OutDirOpt,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write <out>/<csv stem>/stores/*.zarr (encoder 'mil-features') and <out>/<csv stem>/labels.csv."""
    from ..mil_datasets import convert_mil_csv

    for csv_path in csvs:
        stores, labels = convert_mil_csv(csv_path, out / csv_path.stem, overwrite=overwrite)
        typer.echo(f"{csv_path}: stores in {stores}, labels in {labels}")


def _bag_size(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        return (int(low), int(high)) if sep else (int(low), int(low))
    except ValueError as err:
        raise ConfigError(f"--bag-size {text!r}: expected MIN-MAX or N, e.g. --bag-size 400-800") from err


def digit_bags(
    out: OutDirOpt,
    bags: Annotated[int, typer.Option("--bags", help="Number of bags (half of them positive).")] = 200,
    bag_size: Annotated[
        str, typer.Option("--bag-size", help="Instances per bag, MIN-MAX (uniform) or N.", metavar="MIN-MAX")
    ] = "400-800",
    prevalence: Annotated[
        float, typer.Option("--prevalence", help="Share of a positive bag that is the target digit (0.005-0.05).")
    ] = 0.01,
    target: Annotated[int, typer.Option("--target", help="The digit that makes a bag positive.")] = 0,
    seed: SeedOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Sparse bags of real handwritten digits with ground truth per instance (a localisation benchmark).

    Writes <out>/stores/digits_<i>.zarr (encoder 'mil-features', instance_labels), <out>/labels.csv and
    <out>/benchmark.json. Train on it like on slides; localisation metrics are reported automatically.
    """
    from ..mil_datasets import DigitBagsConfig, make_digit_bags

    config = DigitBagsConfig(bags, _bag_size(bag_size), prevalence, target, 0 if seed is None else seed)
    stores, labels = make_digit_bags(out, config, overwrite=overwrite)
    typer.echo(f"digit bags: stores in {stores}, labels in {labels}, settings in {out / 'benchmark.json'}")
