"""Labels, class mapping and splits: a given split CSV or stratified (group) k-fold CV with a seed."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._text import open_csv, read_csv_rows
from ..errors import ConfigError
from ._folds import stratified_folds, stratified_group_folds

if TYPE_CHECKING:
    from ._targets import MultiTargets

__all__ = [
    "Labels",
    "Split",
    "detect_task",
    "read_labels",
    "read_multi_labels",
    "read_survival_labels",
    "make_splits",
    "split_tag",
]

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Labels:
    """Slide labels: ``classes`` (sorted label strings; index = class id), per-slide class ids and groups."""

    slide_ids: list[str]
    y: np.ndarray  # (S,) int class ids; survival: the event (1) or censoring (0), what splits stratify by
    classes: list[str]
    groups: np.ndarray | None = None  # (S,) group (patient) of each slide
    time: np.ndarray | None = None  # (S,) follow-up time (survival only)
    multi: MultiTargets | None = None  # several targets per slide (task multi); y is then a stratum for splits

    @property
    def class_to_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    @property
    def task(self) -> str:
        if self.multi is not None:
            return "multi"
        return "classification" if self.time is None else "survival"

    def subset(self, keep: list[str]) -> Labels:
        index = {sid: i for i, sid in enumerate(self.slide_ids)}
        rows = [index[sid] for sid in keep]
        groups = None if self.groups is None else self.groups[rows]
        time = None if self.time is None else self.time[rows]
        return Labels(list(keep), self.y[rows], self.classes, groups, time, self.multi)


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
    groups = _groups(rows, ids, id_column, group_column)
    return Labels(ids, np.array([index[seen[sid]] for sid in ids], dtype=np.int64), classes, groups)


def _groups(rows: list[dict[str, str]], ids: list[str], id_column: str, group_column: str | None) -> np.ndarray | None:
    """Each slide's group (patient) from ``group_column``; a slide without one is a group of its own."""
    if not group_column:
        return None
    by_id = {row[id_column]: row[group_column] for row in rows}
    return np.array([by_id[sid] or sid for sid in ids])


SURVIVAL_CLASSES = ["censored", "event"]
_EVENT_VALUES = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0}


def _header(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"{path}: labels CSV not found; check --labels")
    with open_csv(path) as fh:
        return [name.strip() for name in next(csv.reader(fh), [])]


def detect_task(path: str | Path, *, label_column: str, time_column: str, event_column: str, task: str = "auto") -> str:
    """The task a labels CSV is for: ``task`` when given (its columns must be there), else ``classification``
    with a label column, ``survival`` with time and event columns; a one-line error names the columns found."""
    path = Path(path)
    header = _header(path)
    found = ", ".join(header) or "no header"
    has_label = label_column in header
    has_survival = time_column in header and event_column in header
    if task == "classification" and not has_label:
        raise ConfigError(
            f"{path}: no {label_column!r} column for classification (found: {found}); name it with --target"
        )
    if task == "survival" and not has_survival:
        raise ConfigError(
            f"{path}: survival needs columns {time_column!r} and {event_column!r} (found: {found}); name them with "
            "--target TIME,EVENT"
        )
    if task != "auto":
        return task
    if has_label:
        return "classification"
    if has_survival:
        return "survival"
    raise ConfigError(
        f"{path}: no {label_column!r} column (classification) and no {time_column!r} and {event_column!r} columns "
        f"(survival) (found: {found}); name the columns with --target"
    )


def read_survival_labels(
    path: str | Path,
    *,
    id_column: str = "slide_id",
    time_column: str = "time",
    event_column: str = "event",
    group_column: str | None = None,
) -> Labels:
    """Read ``slide_id,time,event[,group]`` for survival: time > 0 (any unit, kept as given), event 1/0 (or
    true/false, yes/no). ``y`` holds the event, so splits stratify by it."""
    path = Path(path)
    rows = read_csv_rows(path)
    needed = [id_column, time_column, event_column] + ([group_column] if group_column else [])
    if not rows or any(col not in rows[0] for col in needed):
        found = ", ".join(rows[0]) if rows else "no rows"
        raise ConfigError(f"{path}: survival labels need columns {', '.join(needed)} (found: {found})")
    seen: dict[str, tuple[float, int]] = {}
    for line, row in enumerate(rows, start=2):
        sid, time_text, event_text = row[id_column], row[time_column], row[event_column].lower()
        if not sid or not time_text or not event_text:
            continue  # a slide without follow-up is left out, as an unlabelled one is
        try:
            time = float(time_text)
        except ValueError:
            raise ConfigError(f"{path}:{line}: {time_column} {time_text!r} of {sid!r} is not a number") from None
        if not time > 0 or not np.isfinite(time):
            raise ConfigError(f"{path}:{line}: {time_column} of {sid!r} must be a positive number, not {time_text!r}")
        if event_text not in _EVENT_VALUES:
            raise ConfigError(f"{path}:{line}: {event_column} {event_text!r} of {sid!r} is not 1/0 (or true/false)")
        value = (time, _EVENT_VALUES[event_text])
        if sid in seen and seen[sid] != value:
            raise ConfigError(f"{path}:{line}: slide {sid!r} is listed twice with different follow-up; keep one")
        seen[sid] = value
    ids = sorted(seen)
    events = np.array([seen[sid][1] for sid in ids], dtype=np.int64)
    if events.sum() < 2:
        raise ConfigError(f"{path}: {int(events.sum())} event(s) among {len(ids)} slides; survival needs at least 2")
    groups = _groups(rows, ids, id_column, group_column)
    times = np.array([seen[sid][0] for sid in ids], dtype=np.float64)
    return Labels(ids, events, list(SURVIVAL_CLASSES), groups, times)


def read_multi_labels(
    path: str | Path, columns: list[str], *, id_column: str = "slide_id", group_column: str | None = None
) -> Labels:
    """Read several target columns (``name`` or ``name:regression``/``name:categorical``; empty cells are missing
    values). Splits stratify by the first categorical target (a missing value is a stratum of its own), else by
    the first continuous one above or below its median."""
    from ._targets import MultiTargets, parse_target_columns  # torch: only for this task

    path = Path(path)
    rows = read_csv_rows(path)
    try:
        parsed = parse_target_columns(columns)
    except ValueError as err:
        raise ConfigError(f"--target: {err}") from None
    needed = [id_column, *(name for name, _ in parsed)] + ([group_column] if group_column else [])
    if not rows or any(col not in rows[0] for col in needed):
        found = ", ".join(rows[0]) if rows else "no rows"
        missing = ", ".join(col for col in needed if not rows or col not in rows[0])
        raise ConfigError(f"{path}: no column {missing} (found: {found}); name the targets with --target A,B,...")
    by_id: dict[str, dict[str, str]] = {}
    for row in rows:
        sid = row[id_column]
        if sid and any(row.get(name, "") != "" for name, _ in parsed):  # a slide with no target at all is left out
            by_id[sid] = row
    try:
        multi = MultiTargets.from_rows(by_id, parsed)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
    ids = sorted(by_id)
    first = next((t for t, spec in enumerate(multi.specs) if spec.kind == "categorical"), None)
    if first is not None:
        spec = multi.specs[first]
        strata = [f"{spec.name}={c}" for c in spec.classes] + [f"{spec.name} missing"]
        index = {c: i for i, c in enumerate(spec.classes)}
        y = [index[v] if (v := multi.values[sid][first]) is not None else len(spec.classes) for sid in ids]
    else:
        spec = multi.specs[0]
        strata = [f"{spec.name} <= median", f"{spec.name} > median", f"{spec.name} missing"]
        present = [v for sid in ids if (v := multi.values[sid][0]) is not None]
        median = float(np.median(present))
        y = [2 if (v := multi.values[sid][0]) is None else int(float(v) > median) for sid in ids]
    y_arr = np.array(y, dtype=np.int64)
    used = sorted(set(y))  # strata that occur, renumbered (a stratum without slides would break the splits)
    remap = {old: new for new, old in enumerate(used)}
    groups = _groups(list(by_id.values()), ids, id_column, group_column)
    labels = Labels(ids, np.array([remap[v] for v in y_arr]), [strata[v] for v in used], groups, None, multi)
    return labels


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
    """Split ``ids`` into (train, val) stratified (and grouped); val about ``fraction`` of them: the first of
    ``round(1 / fraction)`` folds (fewer when a class, or the groups, are too few for that many)."""
    if fraction <= 0:
        return ids, ids[:0]
    n_splits = max(2, round(1 / fraction))
    min_class = np.bincount(y).min() if len(y) else 0
    if min_class < n_splits:
        n_splits = max(2, int(min_class))
    if groups is not None:
        n_groups = len(set(groups.tolist()))
        if n_groups < n_splits:
            log.warning(
                "a training part has %d groups: validation holds out 1 of them, not %.0f%% (val_fraction)",
                n_groups,
                100 * fraction,
            )
        n_splits = min(n_splits, n_groups)
    if min_class < 2 or n_splits < 2:
        return ids, ids[:0]
    folds = _folds(y, groups, n_splits, seed)
    return ids[folds != 0], ids[folds == 0]


def _folds(y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int) -> np.ndarray:
    return stratified_folds(y, n_splits, seed) if groups is None else stratified_group_folds(y, groups, n_splits, seed)


def make_splits(labels: Labels, *, split_csv: Path | None, folds: int, val_fraction: float, seed: int) -> list[Split]:
    """The folds of a run: from ``split_csv``, or stratified k-fold CV (grouped when ``labels.groups`` is set).

    In CV, fold k tests on the k-th part; ``val_fraction`` of the rest (stratified, same groups kept together)
    is held out for model selection.
    """
    if split_csv is not None:
        return _read_split_csv(Path(split_csv), set(labels.slide_ids))
    ids, y = np.array(labels.slide_ids), labels.y
    if np.bincount(y).min() < folds:
        raise ConfigError(f"{folds}-fold CV needs at least {folds} slides per class; lower folds or add slides")
    if labels.groups is not None and (n_groups := len(set(labels.groups.tolist()))) < folds:
        raise ConfigError(
            f"{folds}-fold CV needs at least {folds} groups (--group-column), {n_groups} found; lower folds"
        )
    fold_of = _folds(y, labels.groups, folds, seed)
    out = []
    for k in range(folds):
        rest, test = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        groups = None if labels.groups is None else labels.groups[rest]
        train, val = _hold_out(ids[rest], y[rest], groups, val_fraction, seed + k)
        out.append(Split(k, sorted(train.tolist()), sorted(val.tolist()), sorted(ids[test].tolist())))
    return out
