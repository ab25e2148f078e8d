"""What a fold learns, as one object per task: classification (one label), survival (time and event) and several
targets. ``train_fold`` (``_train.py``) is the same chain of steps for all three; a task says how many outputs the
model has, how an epoch trains them, how slides are scored, and what the fold writes once its model is chosen.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._bags import BagLoader
from ._calibration import Calibration, apply_temperature, calibration_metrics, fit_temperature
from ._config import TrainConfig
from ._epoch import _note, _score, _write_rows, bag_localisation_all, evaluate, train_epoch
from ._localisation import mean_localisation
from ._metrics import SCALARS, classification_metrics
from ._splits import Labels, Split
from ._survival_fit import SURVIVAL_KEYS, SurvivalHead, survival_epoch
from ._targets import MULTI_KEYS, MultiTargets, multi_rows

__all__ = ["ClassificationTask", "FoldTask", "MultiTargetTask", "SurvivalTask", "make_task"]

Scored = tuple[dict[str, Any], Any, dict[str, dict[str, float] | None]]  # metrics, Evaluation, per-bag localisation


class FoldTask:
    """The task-specific steps of one fold (see the subclasses); built by ``make_task`` before the model."""

    name = "classification"
    metric_keys: tuple[str, ...] = SCALARS  # the validation metrics of each epoch's row

    def __init__(self, labels: Labels, split: Split, config: TrainConfig) -> None:
        self.labels, self.split, self.config = labels, split, config
        self.y_of = dict(zip(labels.slide_ids, labels.y.tolist(), strict=True))
        self._targets: dict[str, torch.Tensor] | None = None  # each training slide's class, on the model's device

    # ------------------------------------------------------------------ set-up
    @property
    def n_outputs(self) -> int:
        return len(self.labels.classes)

    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (the cosine schedule's length): one per bag."""
        return len(self.split.train)

    def split_record(self) -> dict[str, Any]:
        """What the checkpoint records of the fold's slides beyond their ids (predict's out-of-fold answers)."""
        slides = (*self.split.train, *self.split.val, *self.split.test)
        return {"labels": {s: self.labels.classes[self.y_of[s]] for s in slides}}

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"task": self.labels.task}

    # ------------------------------------------------------------------ epochs
    def train_pass(self, model: nn.Module, bags: Any, optimizer: torch.optim.Optimizer, **plugins: Any) -> dict:
        """One epoch over ``bags``; returns each loss term summed (see ``train_epoch``)."""
        if self._targets is None:
            self._targets = {s: torch.tensor([self.y_of[s]], device=_device(model)) for s in self.split.train}
        return train_epoch(model, bags, self._targets, optimizer, **plugins, **self._loss_plugin())

    def _loss_plugin(self) -> dict[str, Any]:
        return {}

    def monitor(self, model: nn.Module, loader: BagLoader, ids: list[str]) -> tuple[dict | None, dict]:
        """The epoch's validation metrics (None without validation slides) and the attention on ``ids``."""
        probs, loss, attention, _, _ = evaluate(model, loader, ids, self.y_of)
        if not self.split.val:
            return None, attention
        metrics = classification_metrics(np.array([self.y_of[s] for s in self.split.val]), probs, self.n_outputs)
        metrics["loss"] = loss
        return metrics, attention

    def score(self, model: nn.Module, loader: BagLoader, ids: list[str]) -> Scored:
        """Metrics of ``ids`` (with mean localisation), the evaluation behind them and per-bag localisation."""
        return _score(model, loader, ids, self.y_of, self.n_outputs)

    # ------------------------------------------------------------------ the chosen model
    def finish(self, model: nn.Module, loader: BagLoader, out_dir: Path) -> tuple[dict, dict, dict[str, Any]]:
        """Score the chosen model on the validation and test slides, write ``predictions_test.csv``; returns the
        validation and test metrics and what the checkpoint and ``metrics.json`` add (the temperature here)."""
        classes, split = self.labels.classes, self.split
        calibration = Calibration()  # T = 1 without validation slides: nothing held out to fit it on
        out: dict[str, dict] = {}
        for name, ids in (("val", split.val), ("test", split.test)):  # validation first: its slides fit T
            metrics, evaluation, per_bag = self.score(model, loader, ids)
            if ids:
                y = np.array([self.y_of[s] for s in ids], dtype=np.int64)
                if name == "val":
                    calibration = fit_temperature(evaluation.log_probs, y)
                calibrated = apply_temperature(evaluation.log_probs, calibration.temperature)
                metrics.update(calibration_metrics(evaluation.probs, calibrated, y))
            out[name] = metrics
            if name == "test" and ids:
                rows = [
                    {
                        "slide_id": s,
                        "label": classes[self.y_of[s]],
                        "predicted": classes[int(p.argmax())],
                        **{f"prob_{c}": float(p[i]) for i, c in enumerate(classes)},
                        **{f"cal_prob_{c}": float(q[i]) for i, c in enumerate(classes)},
                        **(per_bag.get(s) or {}),
                    }
                    for s, p, q in zip(ids, evaluation.probs, calibrated, strict=True)
                ]
                _write_rows(out_dir / "predictions_test.csv", rows)
        if split.val:
            _note(
                "fold %d: temperature %.3g fitted on %d validation slide(s) (their NLL %.3f -> %.3f)",
                split.fold,
                calibration.temperature,
                calibration.n_slides,
                calibration.nll_before,
                calibration.nll_after,
            )
        return out["val"], out["test"], {"calibration": calibration.as_dict()}


class ClassificationTask(FoldTask):
    """One label per slide: cross-entropy, probabilities calibrated with a temperature fitted on validation."""


class _OutputsTask(FoldTask):
    """A task scored from the model's raw outputs (``_metrics``), not from class probabilities."""

    def _metrics(self, outputs: np.ndarray, ids: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def monitor(self, model: nn.Module, loader: BagLoader, ids: list[str]) -> tuple[dict | None, dict]:
        evaluation = evaluate(model, loader, ids)
        metrics = self._metrics(evaluation.outputs, self.split.val) if self.split.val else None
        return metrics, evaluation.attention

    def score(self, model: nn.Module, loader: BagLoader, ids: list[str]) -> Scored:
        evaluation = evaluate(model, loader, ids)
        metrics = self._metrics(evaluation.outputs, ids)
        per_bag = bag_localisation_all(loader, evaluation.attention)
        metrics.update(mean_localisation(per_bag.values()))
        return metrics, evaluation, per_bag

    def _test_rows(self, ids: list[str], outputs: np.ndarray, per_bag: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows of ``predictions_test.csv``."""
        raise NotImplementedError

    def _head(self) -> dict[str, Any]:
        """What the chosen checkpoint and ``metrics.json`` add beside the model."""
        return {}

    def finish(self, model: nn.Module, loader: BagLoader, out_dir: Path) -> tuple[dict, dict, dict[str, Any]]:
        out: dict[str, dict] = {}
        for name, ids in (("val", self.split.val), ("test", self.split.test)):
            metrics, evaluation, per_bag = self.score(model, loader, ids)
            out[name] = metrics
            if name == "test" and ids:
                _write_rows(out_dir / "predictions_test.csv", self._test_rows(ids, evaluation.outputs, per_bag))
        return out["val"], out["test"], self._head()


class SurvivalTask(_OutputsTask):
    """Time and event per slide: a Cox or discrete-time head (``SurvivalHead``), mini-batches of slides."""

    name = "survival"
    metric_keys = SURVIVAL_KEYS

    def __init__(self, labels: Labels, split: Split, config: TrainConfig) -> None:
        super().__init__(labels, split, config)
        assert labels.time is not None
        self.follow_up = {
            s: (float(t), int(e)) for s, t, e in zip(labels.slide_ids, labels.time, labels.y, strict=True)
        }
        train = np.array([self.follow_up[s] for s in split.train])
        self.head = SurvivalHead.create(config.survival, train[:, 0], train[:, 1].astype(np.int64))

    @property
    def n_outputs(self) -> int:
        return self.head.n_outputs

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.split.train) / self.config.survival.batch)

    def split_record(self) -> dict[str, Any]:
        return {**super().split_record(), "follow_up": {s: list(v) for s, v in self.follow_up.items()}}

    def train_pass(self, model: nn.Module, bags: Any, optimizer: torch.optim.Optimizer, **plugins: Any) -> dict:
        return survival_epoch(
            model, self.head, bags, self.follow_up, optimizer, batch_size=self.config.survival.batch, **plugins
        )

    def _metrics(self, outputs: np.ndarray, ids: list[str]) -> dict[str, Any]:
        """Survival measures of ``ids`` and their loss (the whole set as one batch)."""
        fu = np.array([self.follow_up[s] for s in ids], dtype=np.float64).reshape(-1, 2)
        metrics = self.head.metrics(outputs, fu[:, 0], fu[:, 1])
        if ids:
            with torch.no_grad():
                out = torch.from_numpy(np.asarray(outputs, dtype=np.float64))
                metrics["loss"] = float(self.head.loss_of(out, torch.from_numpy(fu[:, 0]), torch.from_numpy(fu[:, 1])))
        return metrics

    def finish(self, model: nn.Module, loader: BagLoader, out_dir: Path) -> tuple[dict, dict, dict[str, Any]]:
        # The baseline hazard (cox) and the risk groups' cut come from the selected model on its training slides.
        self.head.finish(evaluate(model, loader, self.split.train).outputs)
        return super().finish(model, loader, out_dir)

    def _test_rows(self, ids: list[str], outputs: np.ndarray, per_bag: dict[str, Any]) -> list[dict[str, Any]]:
        risk = self.head.risk(outputs) - self.head.risk_cutoff
        return [
            {
                "slide_id": s,
                "time": self.follow_up[s][0],
                "event": self.follow_up[s][1],
                "risk": float(r),
                "risk_group": "high" if r > 0 else "low",
                **(per_bag.get(s) or {}),
            }
            for s, r in zip(ids, risk, strict=True)
        ]

    def _head(self) -> dict[str, Any]:
        return {"survival": self.head.as_dict()}


class MultiTargetTask(_OutputsTask):
    """Several targets per slide: one head each, a loss that skips missing values (``MultiTargets``)."""

    name = "multi"
    metric_keys = MULTI_KEYS

    def __init__(self, labels: Labels, split: Split, config: TrainConfig) -> None:
        super().__init__(labels, split, config)
        assert labels.multi is not None
        # Continuous targets are standardised with this fold's training slides.
        self.multi: MultiTargets = labels.multi.fit_scaling(split.train)
        columns = [t.tolist() for t in self.multi.encode(labels.slide_ids)]  # per target, over the slides
        self.encoded = dict(zip(labels.slide_ids, zip(*columns, strict=True), strict=True))
        # Each slide's targets as the one-slide tensors its training loss reads, made once for every epoch.
        self._bag_targets = {sid: [torch.tensor([v]) for v in values] for sid, values in self.encoded.items()}

    @property
    def n_outputs(self) -> int:
        return self.multi.n_outputs

    def split_record(self) -> dict[str, Any]:
        return {**super().split_record(), "targets": {s: self.multi.values[s] for s in self.labels.slide_ids}}

    def checkpoint_fields(self) -> dict[str, Any]:
        return {**super().checkpoint_fields(), "targets": [spec.as_dict() for spec in self.multi.specs]}

    def _loss_plugin(self) -> dict[str, Any]:
        """The loss of one bag's outputs ``(1, K)`` over its targets, for ``train_epoch``."""
        loss = self.config.regression_loss
        return {"loss_of": lambda logits, sid: self.multi.loss(logits, self._bag_targets[sid], loss)}

    def _metrics(self, outputs: np.ndarray, ids: list[str]) -> dict[str, Any]:
        """Per-target and averaged metrics of ``ids`` and their loss (the slides as one batch)."""
        metrics = self.multi.metrics(outputs, ids)
        if ids:
            columns = [torch.tensor(list(col)) for col in zip(*[self.encoded[s] for s in ids], strict=True)]
            with torch.no_grad():
                out = torch.from_numpy(np.asarray(outputs)).float()
                metrics["loss"] = float(self.multi.loss(out, columns, self.config.regression_loss))
        return metrics

    def _test_rows(self, ids: list[str], outputs: np.ndarray, per_bag: dict[str, Any]) -> list[dict[str, Any]]:
        return multi_rows(self.multi, ids, outputs, per_bag)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def make_task(labels: Labels, split: Split, config: TrainConfig) -> FoldTask:
    """The fold's task, from what its labels hold."""
    if labels.multi is not None:
        return MultiTargetTask(labels, split, config)
    if labels.time is not None:
        return SurvivalTask(labels, split, config)
    return ClassificationTask(labels, split, config)
