"""`wsi-pipeline submit` (placeholder until its stage lands)."""

from __future__ import annotations

import typer


def submit() -> None:
    """Not built yet."""
    raise typer.BadParameter("the submit stage is not built yet")
