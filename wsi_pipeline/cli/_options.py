"""Options shared by several commands, declared once as ``Annotated`` aliases.

An option that several commands take has one spelling and one short form everywhere (``-o`` out, ``-c`` config,
``-e`` encoder, ``-w`` weights, ``-l`` labels, ``-m`` model, ``-r`` recursive). This module imports nothing heavy:
``wsi-pipeline --help`` reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "ConfigOpt",
    "SetOpt",
    "OutDirOpt",
    "ShardOpt",
    "OverwriteOpt",
    "SeedOpt",
    "DeviceOpt",
    "EncoderOpt",
    "WeightsOpt",
    "LabelsOpt",
    "ModelOpt",
    "RecursiveOpt",
]

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config with stage sections (see configs/); CLI options override it."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", metavar="KEY=VALUE", help="Override any config key, e.g. --set mask.method=fixed (repeatable)."
    ),
]
# file_okay=False: an --out that is an existing file is a usage error naming the option, before any work starts.
OutDirOpt = Annotated[Path, typer.Option("--out", "-o", file_okay=False, help="Output folder.")]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="I/N",
        help="Process shard i of n (0-based, e.g. 0/4). Default: from SLURM_ARRAY_TASK_ID/COUNT when set.",
    ),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Redo slides that are already done.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
EncoderOpt = Annotated[
    str | None,
    typer.Option("--encoder", "-e", help="Encoder preset or timm model name (see `wsi-pipeline embed --list`)."),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights", "-w", help="Encoder weights: a local .pth/.bin/.safetensors, hf-hub:ORG/NAME, or random."
    ),
]
LabelsOpt = Annotated[Path, typer.Option("--labels", "-l", help="Labels CSV: slide_id,label[,group column].")]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="MIL model (default: asmil; `wsi-pipeline train --list-models` lists them)."),
]
RecursiveOpt = Annotated[
    bool, typer.Option("--recursive", "-r", help="Look for slides in sub-folders of the folders too.")
]
