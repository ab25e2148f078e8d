"""Options shared by several commands, declared once as ``Annotated`` aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["ConfigOpt", "SetOpt", "OutDirOpt", "ShardOpt", "OverwriteOpt", "SeedOpt", "DeviceOpt", "EncoderOpt"]

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config with stage sections (see configs/); CLI options override it."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config key, e.g. --set mask.method=fixed (repeatable)."),
]
OutDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
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
