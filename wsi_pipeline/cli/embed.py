"""`wsi-pipeline embed` (placeholder until its stage lands)."""

from __future__ import annotations

import typer


def embed() -> None:
    """Not built yet."""
    raise typer.BadParameter("the embed stage is not built yet")
