"""`wsi-pipeline train` (placeholder until its stage lands)."""

from __future__ import annotations

import typer


def train() -> None:
    """Not built yet."""
    raise typer.BadParameter("the train stage is not built yet")
