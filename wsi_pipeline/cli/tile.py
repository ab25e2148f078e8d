"""`wsi-pipeline tile` (placeholder until its stage lands)."""

from __future__ import annotations

import typer


def tile() -> None:
    """Not built yet."""
    raise typer.BadParameter("the tile stage is not built yet")
