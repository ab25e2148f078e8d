"""What ``predict`` applies: one checkpoint, one fold of a training run, or every fold of a run.

A whole run gives each slide the honest answer the run can give:

* a **labelled** slide of the run (in some fold's train, validation or test set) is predicted by the fold model(s)
  that never saw it in training or validation: in k-fold CV, exactly the fold that tested it (``out-of-fold``). The
  out-of-fold predictions of all labelled slides are the cohort result (``metrics.json``).
* any **other** slide (``new``) gets the mean of every fold's class probabilities, and the mean of their attention.
* a labelled slide every fold trained on (possible with a split CSV) gets the mean too, marked ``in-training``: its
  prediction says nothing about generalisation.

Which slides a fold saw comes from the split each checkpoint records (``split``); checkpoints without it fall back
to the run's ``fold_<k>/predictions_test.csv`` (exact for k-fold CV). ``--fold k`` (or one checkpoint file) uses
one model, with the same ``source`` labels.

On the CPU the folds' weights are not held in memory: each fold's checkpoint is memory-mapped while that fold runs
on a slide and let go after (``FoldModel.running``), so a run of k folds needs the memory of one fold's weights, not
k, and no private copy of them (they are the file's pages). On a GPU each fold's weights are copied there once.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import CheckpointError
from ._results import checkpoint_identity

__all__ = ["FoldModel", "ModelSet", "SlidePlan", "load_models"]

_FOLD_DIR = re.compile(r"^fold_(\d+)$")
SOURCES = ("out-of-fold", "new", "in-training", "")


@dataclass
class FoldModel:
    """One checkpoint and the slides its training saw (train + validation) and tested."""

    fold: int | None
    path: Path
    ckpt: dict[str, Any]
    seen: frozenset[str] = frozenset()
    tested: frozenset[str] = frozenset()
    model: torch.nn.Module | None = None
    mapped: bool = False  # ``model`` holds no weights: ``running`` maps them from ``path`` for each use
    stamp: tuple[int, ...] | None = None  # the checkpoint file as read (device, inode, size, mtime)
    shared: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)  # one per ``model``

    def identity(self) -> dict[str, Any]:
        return checkpoint_identity(self.path)

    @contextlib.contextmanager
    def running(self) -> Iterator[torch.nn.Module]:
        """The fold's model, ready to run. A model without weights (``mapped``: on the CPU) gets them mapped from
        the checkpoint file for the duration (``load_checkpoint(mmap=True)``, no copy) and lets go of them on exit,
        so its pages leave memory with it. Raises ``CheckpointError`` when the file is no longer the one read at
        the start (a re-trained run: its identity, recorded with every result, would not be what ran)."""
        from ..training import empty_state, load_checkpoint

        assert self.model is not None, "call ModelSet.load() first"
        if not self.mapped:
            yield self.model
            return
        try:
            changed = _stamp(self.path) != self.stamp
        except OSError:
            changed = True
        if changed:
            raise CheckpointError(f"{self.path}: changed or removed since predict started; run predict again")
        state = load_checkpoint(self.path, mmap=True)["state_dict"]
        with self.shared:  # folds of one architecture share the model: one runs at a time
            try:
                self.model.load_state_dict(state, assign=True)
            except RuntimeError as err:
                message = f"{self.path}: its weights do not fit the model of fold {self.fold}: {err}"
                raise CheckpointError(message) from err
            try:
                yield self.model
            finally:
                self.model.load_state_dict(empty_state(state), assign=True)

    @property
    def survival(self) -> Any:
        """The fold's ``SurvivalHead`` (time bins, baseline hazard, median training risk); survival runs only."""
        from ..training import SurvivalHead

        return SurvivalHead.from_dict(self.ckpt["survival"])

    def target_predictions(self, outputs: np.ndarray) -> list[np.ndarray]:
        """A model of several targets on one slide: per target, class probabilities (C,) or the value (in the
        column's units, with this fold's scaling)."""
        from ..training import MultiTargets, TargetSpec

        specs = [TargetSpec.from_dict(d) for d in self.ckpt["targets"]]
        return [p[0] for p in MultiTargets(specs, {}).predictions(np.asarray(outputs).reshape(1, -1))]

    def risk(self, outputs: np.ndarray) -> float:
        """A survival model's risk for one slide, relative to its median training risk (> 0: high risk)."""
        head = self.survival
        return float(head.risk(np.asarray(outputs).reshape(1, -1))[0] - head.risk_cutoff)

    @property
    def temperature(self) -> float:
        """The temperature fitted on this fold's validation slides (1 for checkpoints made before calibration)."""
        return float((self.ckpt.get("calibration") or {}).get("temperature", 1.0))


@dataclass(frozen=True)
class SlidePlan:
    """Which models predict a slide and what their answer means (``source``, see the module docstring)."""

    members: tuple[FoldModel, ...]
    source: str
    label: str | None

    @property
    def folds(self) -> list[int]:
        return [m.fold for m in self.members if m.fold is not None]


@dataclass
class ModelSet:
    """The model(s) of one ``predict``: ``members`` (one, or every fold of ``run``) and the run's labels."""

    source: Path
    members: list[FoldModel]
    run: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)  # slide id -> class, every labelled slide of the run
    follow_up: dict[str, tuple[float, int]] = field(default_factory=dict)  # survival: slide id -> (time, event)
    target_values: dict[str, list[Any]] = field(default_factory=dict)  # several targets: slide id -> values
    split_known: bool = False
    whole_run: bool = False

    @property
    def ckpt(self) -> dict[str, Any]:
        """The first member's checkpoint: encoder, classes, input dimension and source settings (all agree)."""
        return self.members[0].ckpt

    @property
    def classes(self) -> list[str]:
        return list(self.ckpt["classes"])

    @property
    def task(self) -> str:
        """``classification`` or ``survival`` (checkpoints made before survival existed are classification)."""
        return str(self.ckpt.get("task", "classification"))

    @property
    def encoder(self) -> str:
        return self.ckpt["encoder"]

    def identity(self) -> dict[str, Any]:
        """What "done with the same model" means: a checkpoint's identity, or a run's (the folds' sha256s)."""
        if not self.whole_run:
            return self.members[0].identity()
        folds = [{"fold": m.fold, **m.identity()} for m in self.members]
        digest = hashlib.sha256("\n".join(f"{f['fold']}:{f['sha256']}" for f in folds).encode()).hexdigest()
        return {"path": str(self.source.resolve()), "sha256": digest, "folds": folds}

    def scores_name(self) -> str:
        """``scores/<name>`` in each store: the run folder's name for a whole run, ``<run>_fold<k>`` for one fold."""
        if self.whole_run and self.run is not None:
            return self.run.name
        member = self.members[0]
        if self.run is not None and member.fold is not None:
            return f"{self.run.name}_fold{member.fold}"
        return f"{self.ckpt['model_name']}_{member.path.stem}"

    def plan(self, slide_id: str) -> SlidePlan:
        """The models for ``slide_id``: the ones that never saw it when it is labelled, else all of them."""
        label = self.labels.get(slide_id)
        if not self.split_known:
            return SlidePlan(tuple(self.members), "", label)
        if label is None:
            return SlidePlan(tuple(self.members), "new", None)
        unseen = tuple(m for m in self.members if slide_id not in m.seen)
        if unseen:
            return SlidePlan(unseen, "out-of-fold", label)
        return SlidePlan(tuple(self.members), "in-training", label)

    def load(self, device: torch.device | str) -> None:
        """Make every member's model. On a GPU each holds its weights there. On the CPU the models hold none
        (``FoldModel.running`` maps them in for each use) and folds of the same architecture share one model."""
        from ..training import model_from_checkpoint, model_skeleton

        on_cpu = torch.device(device).type == "cpu"
        skeletons: dict[str, tuple[torch.nn.Module, threading.Lock]] = {}
        for member in self.members:
            if member.model is not None:
                continue
            if not on_cpu:
                member.model = model_from_checkpoint(member.ckpt, device)
                continue
            shapes = {key: (tuple(v.shape), str(v.dtype)) for key, v in member.ckpt["state_dict"].items()}
            key = repr((member.ckpt["model_name"], sorted(member.ckpt["model_kwargs"].items()), sorted(shapes.items())))
            if key not in skeletons:
                skeletons[key] = (model_skeleton(member.ckpt), threading.Lock())
            (member.model, member.shared), member.mapped = skeletons[key], True


def _stamp(path: Path) -> tuple[int, ...]:
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _read(path: Path) -> tuple[tuple[int, ...] | None, dict[str, Any]]:
    """The checkpoint file's stamp, and the checkpoint with its weights mapped, not read: they are read when a
    fold runs (``FoldModel.running``)."""
    from ..training import load_checkpoint

    try:
        stamp: tuple[int, ...] | None = _stamp(path)  # first: a file replaced meanwhile is found changed when used
    except OSError:
        stamp = None  # load_checkpoint says what is wrong
    return stamp, load_checkpoint(path, mmap=True)


def _member(fold: int | None, path: Path) -> FoldModel:
    stamp, ckpt = _read(path)
    return FoldModel(fold if fold is not None else _fold_of(path, ckpt), path, ckpt, stamp=stamp)


def _fold_of(path: Path, ckpt: dict[str, Any]) -> int | None:
    match = _FOLD_DIR.match(path.parent.name)
    if match:
        return int(match[1])
    fold = ckpt.get("fold")
    return int(fold) if fold is not None else None


def _run_of(path: Path) -> Path | None:
    """The run folder of a ``<run>/fold_<k>/checkpoint_*.pt``."""
    return path.parent.parent if _FOLD_DIR.match(path.parent.name) else None


def _fold_checkpoints(run: Path) -> dict[int, Path]:
    found = {}
    for folder in run.iterdir() if run.is_dir() else []:
        match = _FOLD_DIR.match(folder.name)
        if match and (folder / "checkpoint_best.pt").is_file():
            found[int(match[1])] = folder / "checkpoint_best.pt"
    return dict(sorted(found.items()))


def _read_test_csv(path: Path) -> dict[str, str]:
    """slide id -> label of a fold's ``predictions_test.csv`` (train writes it for every fold with test slides)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {row["slide_id"]: row.get("label", "") for row in csv.DictReader(handle)}


def _attach_splits(models: ModelSet, run_folds: dict[int, Path]) -> None:
    """Fill each member's seen/tested slides and the run's labels, from the checkpoints or the run's test CSVs."""
    splits = [m.ckpt.get("split") for m in models.members]
    if all(splits):
        for member, split in zip(models.members, splits, strict=True):
            member.seen = frozenset([*split.get("train", []), *split.get("val", [])])
            member.tested = frozenset(split.get("test", []))
            models.labels.update(split.get("labels") or {})
            models.follow_up.update({s: (float(t), int(e)) for s, (t, e) in (split.get("follow_up") or {}).items()})
            models.target_values.update(split.get("targets") or {})
        models.split_known = True
        return
    if not run_folds:
        return  # a lone checkpoint without a recorded split: nothing is known about its slides
    # Older checkpoints: the run's test CSVs. Every labelled slide is tested by some fold in k-fold CV, and a fold
    # saw every labelled slide it did not test.
    tested = {fold: _read_test_csv(path.parent / "predictions_test.csv") for fold, path in run_folds.items()}
    for labels in tested.values():
        models.labels.update(labels)
    for member in models.members:
        member.tested = frozenset(tested.get(member.fold, {}) if member.fold is not None else ())
        member.seen = frozenset(models.labels) - member.tested
    models.split_known = bool(models.labels)


def _check_same(members: list[FoldModel]) -> None:
    first = members[0].ckpt
    for member in members[1:]:
        for key in ("encoder", "classes", "in_dim"):
            if member.ckpt[key] != first[key]:
                raise CheckpointError(
                    f"{member.path}: {key} {member.ckpt[key]!r} differs from {members[0].path} ({first[key]!r}); "
                    "the folds of one run must agree: re-train the run"
                )


def load_models(path: str | Path, *, fold: int | None = None) -> ModelSet:
    """The model(s) behind ``path``: a ``checkpoint_best.pt``, or a training run folder (every fold, or ``fold``).

    Raises ``CheckpointError`` for a missing or unreadable checkpoint, a run whose training has not finished, or a
    fold the run does not have.
    """
    path = Path(path)
    if path.is_file():
        if fold is not None:
            raise CheckpointError(f"{path}: --fold picks a fold of a training run folder; pass the run folder")
        run = _run_of(path)
        models = ModelSet(path, [_member(None, path)], run=run)
        _attach_splits(models, _fold_checkpoints(run) if run else {})
        return models
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint or training run folder; pass runs/<run> or a .pt file")
    folds = _fold_checkpoints(path)
    if not folds:
        raise CheckpointError(
            f"{path}: not a training run folder (no fold_<k>/checkpoint_best.pt); pass the folder `wsi-pipeline "
            "train` made (runs/<model>_<encoder>_<split>_seed<seed>) or a checkpoint file"
        )
    if fold is not None:
        if fold not in folds:
            raise CheckpointError(f"{path}: no fold {fold} (folds: {', '.join(map(str, folds))}); pick one of them")
        chosen = {fold: folds[fold]}
    else:
        if not (path / "summary.json").is_file():
            raise CheckpointError(
                f"{path}: training has not finished ({len(folds)} fold(s) so far, no summary.json); finish it (re-run "
                "the same train command: finished folds are kept) or predict with one fold: --fold K"
            )
        chosen = folds
    members = [_member(k, p) for k, p in chosen.items()]
    _check_same(members)
    models = ModelSet(path, members, run=path, whole_run=fold is None)
    _attach_splits(models, folds)
    return models


class ModelOutput(NamedTuple):
    """One model on one bag: class probabilities (C,), attention (N,), float64 log-probabilities (C,) (what a
    temperature divides) and the raw outputs (C,) (a survival head's log-risk or hazard logits)."""

    probs: np.ndarray
    attention: np.ndarray
    log_probs: np.ndarray
    outputs: np.ndarray


def forward(member: FoldModel, features: np.ndarray, device: torch.device | str) -> ModelOutput:
    """One model on one bag ``(N, D)``, the bag normalised as in training (see ``ModelOutput``)."""
    bag = torch.from_numpy(np.asarray(features, dtype=np.float32)).to(device)  # (N, D)
    norm = member.ckpt.get("feature_norm")
    if norm:
        bag = (bag - norm["mean"].to(device)) / norm["std"].to(device)  # (N, D)
    with member.running() as model, torch.inference_mode():
        out = model(bag)
        probs = torch.softmax(out.logits.float(), dim=-1)[0].cpu().numpy()  # (C,)
        log_probs = torch.log_softmax(out.logits.double(), dim=-1)[0].cpu().numpy()  # (C,)
        attention = out.attention()[0].float().cpu().numpy()  # (N,)
    return ModelOutput(probs, attention, log_probs, out.logits.double()[0].cpu().numpy())


__all__ += ["ModelOutput", "forward"]
