"""`wsi-pipeline convert-mil`: classic MIL benchmark CSVs (Musk1, Elephant...) into bag stores + labels CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import OutDirOpt, OverwriteOpt

__all__ = ["convert_mil"]


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
    from ..mil_benchmarks import convert_mil_csv

    for csv_path in csvs:
        stores, labels = convert_mil_csv(csv_path, out / csv_path.stem, overwrite=overwrite)
        typer.echo(f"{csv_path}: stores in {stores}, labels in {labels}")
