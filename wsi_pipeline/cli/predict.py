"""`wsi-pipeline predict` (placeholder until its stage lands)."""

from __future__ import annotations

import typer


def predict() -> None:
    """Not built yet."""
    raise typer.BadParameter("the predict stage is not built yet")
