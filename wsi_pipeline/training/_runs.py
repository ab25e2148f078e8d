"""Run folders: every path of a training run is named here (torch-free, so the cluster planner can name them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = ["run_dir", "parse_run_dir", "fold_dir"]

_RUN_RE = re.compile(r"^(?P<model>[^_]+)_(?P<encoder>.+?)_(?P<split>cv\d+|split-.+)_seed(?P<seed>-?\d+)$")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text)


def run_dir(out: str | Path, *, model: str, encoder: str, split: str, seed: int) -> Path:
    """``<out>/<model>_<encoder>_<split>_seed<seed>``; ``parse_run_dir`` is its inverse."""
    return Path(out) / f"{_safe(model).replace('_', '-')}_{_safe(encoder)}_{_safe(split)}_seed{seed}"


def parse_run_dir(path: str | Path) -> dict[str, Any]:
    """The settings a run folder's name records: model, encoder, split tag and seed."""
    match = _RUN_RE.match(Path(path).name)
    if not match:
        raise ValueError(f"{path}: not a run folder name (<model>_<encoder>_<split>_seed<seed>)")
    return {**match.groupdict(), "seed": int(match["seed"])}


def fold_dir(run: Path, fold: int) -> Path:
    return Path(run) / f"fold_{fold}"
