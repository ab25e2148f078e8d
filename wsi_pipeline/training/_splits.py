"""Labels, class mapping and splits: a given split CSV or stratified (group) k-fold CV with a seed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._text import read_csv_rows
from ..errors import ConfigError

__all__ = ["Labels", "Split", "read_labels", "make_splits", "split_tag"]

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Labels:
    """Slide labels: ``classes`` (sorted label strings; index = class id), per-slide class ids and groups."""

    slide_ids: list[str]
    y: np.ndarray  # (S,) int class ids
    classes: list[str]
    groups: np.ndarray | None = None  # (S,) group (patient) of each slide

    @property
    def class_to_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def subset(self, keep: list[str]) -> Labels:
        index = {sid: i for i, sid in enumerate(self.slide_ids)}
        rows = [index[sid] for sid in keep]
        groups = None if self.groups is None else self.groups[rows]
        return Labels(list(keep), self.y[rows], self.classes, groups)


@dataclass
class Split:
    """One fold: slide ids for training, validation (may be empty) and test."""

    fold: int
    train: list[str]
    val: list[str]
    test: list[str]


def read_labels(
    path: str | Path, *, id_column: str = "slide_id", label_column: str = "label", group_column: str | None = None
) -> Labels:
    """Read ``slide_id,label[,group]``; labels are strings, mapped to classes in sorted order."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: labels CSV not found; check --labels (a CSV with columns slide_id,label)")
    rows = read_csv_rows(path)
    needed = [id_column, label_column] + ([group_column] if group_column else [])
    if not rows or any(col not in rows[0] for col in needed):
        found = ", ".join(rows[0]) if rows else "no rows"
        raise ConfigError(f"{path}: labels CSV needs columns {', '.join(needed)} (found: {found})")
    seen: dict[str, str] = {}
    first_line: dict[str, int] = {}
    unlabelled: list[int] = []
    for line, row in enumerate(rows, start=2):
        sid, label = row[id_column], row[label_column]
        if not sid or not label:
            if any(row.values()):
                unlabelled.append(line)
            continue
        if sid in seen and seen[sid] != label:
            raise ConfigError(
                f"{path}: slide {sid!r} has two labels ({seen[sid]!r} on line {first_line[sid]}, {label!r} on line "
                f"{line}); keep one"
            )
        if sid in seen:
            log.warning(
                "%s:%d: slide %r is listed again (line %d, same label); it counts once",
                path,
                line,
                sid,
                first_line[sid],
            )
        seen[sid] = label
        first_line.setdefault(sid, line)
    if unlabelled:
        log.warning(
            "%s: %d row(s) without a %s or %s are left out (line %s)",
            path,
            len(unlabelled),
            id_column,
            label_column,
            ", ".join(map(str, unlabelled[:5])) + (" ..." if len(unlabelled) > 5 else ""),
        )
    classes = sorted(set(seen.values()))
    if len(classes) < 2:
        raise ConfigError(f"{path}: need at least two classes, found {classes}")
    ids = sorted(seen)
    index = {c: i for i, c in enumerate(classes)}
    groups = None
    if group_column:
        by_id = {row[id_column]: row[group_column] for row in rows}
        groups = np.array([by_id[sid] or sid for sid in ids])
    return Labels(ids, np.array([index[seen[sid]] for sid in ids], dtype=np.int64), classes, groups)


def split_tag(split_csv: Path | None, folds: int) -> str:
    """The split part of a run folder name: ``cv<k>`` or ``split-<csv stem>``."""
    return f"split-{Path(split_csv).stem}" if split_csv else f"cv{folds}"


def _read_split_csv(path: Path, known: set[str]) -> list[Split]:
    rows = read_csv_rows(path)
    if not rows or "slide_id" not in rows[0] or "split" not in rows[0]:
        raise ConfigError(f"{path}: split CSV needs columns slide_id,split (and optionally fold)")
    folds: dict[int, dict[str, list[str]]] = {}
    for row in rows:
        split = row["split"].lower()
        if split not in SPLIT_NAMES:
            raise ConfigError(f"{path}: split {row['split']!r} of {row['slide_id']!r} is not train, val or test")
        if row["slide_id"] not in known:
            continue
        fold = int(row.get("fold") or 0)
        folds.setdefault(fold, {s: [] for s in SPLIT_NAMES})[split].append(row["slide_id"])
    out = [Split(k, sorted(v["train"]), sorted(v["val"]), sorted(v["test"])) for k, v in sorted(folds.items())]
    for split in out:
        if not split.train:
            raise ConfigError(f"{path}: fold {split.fold} has no training slide with a label and a store")
    return out


def _hold_out(ids: np.ndarray, y: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int):
    """Split ``ids`` into (train, val) stratified (and grouped); val about ``fraction`` of them."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if fraction <= 0:
        return ids, ids[:0]
    n_splits = max(2, round(1 / fraction))
    min_class = np.bincount(y).min() if len(y) else 0
    if min_class < n_splits:
        n_splits = max(2, int(min_class))
    if min_class < 2:
        return ids, ids[:0]
    if groups is None:
        splitter = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
        tr, va = next(splitter.split(ids, y))
    else:
        splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
        tr, va = next(splitter.split(ids, y, groups))
    return ids[tr], ids[va]


def make_splits(labels: Labels, *, split_csv: Path | None, folds: int, val_fraction: float, seed: int) -> list[Split]:
    """The folds of a run: from ``split_csv``, or stratified k-fold CV (grouped when ``labels.groups`` is set).

    In CV, fold k tests on the k-th part; ``val_fraction`` of the rest (stratified, same groups kept together)
    is held out for model selection.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if split_csv is not None:
        return _read_split_csv(Path(split_csv), set(labels.slide_ids))
    ids, y = np.array(labels.slide_ids), labels.y
    if np.bincount(y).min() < folds:
        raise ConfigError(f"{folds}-fold CV needs at least {folds} slides per class; lower folds or add slides")
    if labels.groups is None:
        parts = StratifiedKFold(folds, shuffle=True, random_state=seed).split(ids, y)
    else:
        parts = StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(ids, y, labels.groups)
    out = []
    for k, (rest, test) in enumerate(parts):
        groups = None if labels.groups is None else labels.groups[rest]
        train, val = _hold_out(ids[rest], y[rest], groups, val_fraction, seed + k)
        out.append(Split(k, sorted(train.tolist()), sorted(val.tolist()), sorted(ids[test].tolist())))
    return out
