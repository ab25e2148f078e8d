"""Several targets per slide (``task: multi``): one model, one output head per target, a loss that skips the values a
slide lacks.

Each target is a labels-CSV column, either categorical (binary or more classes; cross-entropy) or continuous
(regression: MSE or Huber on the value standardised with the training slides' mean and std). A column is
continuous when every value is a number and it has more than ``MAX_CLASSES_NUMERIC`` distinct values, or when its
name ends in ``:regression`` (``:categorical`` forces the other way). An empty cell is a missing value: that target
adds nothing to that slide's loss and that slide is left out of that target's metrics.

The heads are slices of the model's one output layer (its rows for one target never mix with another's); the loss
is the sum over targets of each target's loss, each averaged over the slides that have it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["MAX_CLASSES_NUMERIC", "MULTI_KEYS", "MultiTargets", "TargetSpec", "multi_rows", "parse_target_columns"]

MAX_CLASSES_NUMERIC = 10  # a numeric column with more distinct values is continuous
# Averaged over targets (categorical: accuracy, macro-F1, AUC; continuous: R^2, Pearson r, MAE) and their score.
MULTI_KEYS = ("loss", "target_score", "accuracy", "f1_macro", "auc", "r2", "pearson_r", "mae")


@dataclass(frozen=True)
class TargetSpec:
    """One target: its column, kind, classes (categorical) or the training mean and std (regression)."""

    name: str
    kind: str  # "categorical" | "regression"
    classes: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.kind == "categorical" else 1

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetSpec:
        return cls(data["name"], data["kind"], tuple(data.get("classes") or ()), data["mean"], data["std"])


def parse_target_columns(columns: list[str]) -> list[tuple[str, str | None]]:
    """``["er", "ki67:regression"]`` -> ``[("er", None), ("ki67", "regression")]`` (None: inferred from values)."""
    out = []
    for column in columns:
        name, _, kind = column.partition(":")
        if kind not in ("", "regression", "categorical"):
            raise ValueError(f"target {column!r}: the kind after ':' is regression or categorical")
        out.append((name.strip(), kind or None))
    return out


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@dataclass
class MultiTargets:
    """Every slide's value of every target (``None`` where missing), with the targets' specs."""

    specs: list[TargetSpec]
    values: dict[str, list[str | float | None]]  # slide id -> one value per target (class name or number)

    @classmethod
    def from_rows(cls, rows: dict[str, dict[str, str]], columns: list[tuple[str, str | None]]) -> MultiTargets:
        """Targets from ``slide id -> {column: text}``: kinds inferred (or as given), classes sorted."""
        specs, values = [], {sid: [] for sid in rows}
        for name, kind in columns:
            present = [row[name] for row in rows.values() if row.get(name, "") != ""]
            numeric = bool(present) and all(_is_number(v) for v in present)
            if kind is None:
                kind = "regression" if numeric and len(set(present)) > MAX_CLASSES_NUMERIC else "categorical"
            if kind == "regression":
                if not numeric:
                    bad = next(v for v in present if not _is_number(v))
                    raise ValueError(f"target {name!r} is continuous but has the value {bad!r}")
                numbers = np.array([float(v) for v in present])
                spec = TargetSpec(name, "regression", (), float(numbers.mean()), float(numbers.std() or 1.0))
            else:
                spec = TargetSpec(name, "categorical", tuple(sorted(set(present))))
                if len(spec.classes) < 2:
                    raise ValueError(f"target {name!r} needs at least two classes, found {list(spec.classes)}")
            specs.append(spec)
            for sid, row in rows.items():
                text = row.get(name, "")
                values[sid].append(None if text == "" else (float(text) if kind == "regression" else text))
        return cls(specs, values)

    @property
    def n_outputs(self) -> int:
        return sum(spec.n_outputs for spec in self.specs)

    def slices(self) -> list[slice]:
        """Each target's columns of the model's outputs."""
        out, start = [], 0
        for spec in self.specs:
            out.append(slice(start, start + spec.n_outputs))
            start += spec.n_outputs
        return out

    def fit_scaling(self, slide_ids: list[str]) -> MultiTargets:
        """The regression targets standardised with the mean and std of ``slide_ids`` (a fold's training slides)."""
        specs = []
        for t, spec in enumerate(self.specs):
            if spec.kind == "regression":
                numbers = np.array([self.values[s][t] for s in slide_ids if self.values[s][t] is not None], dtype=float)
                if len(numbers):
                    spec = TargetSpec(spec.name, spec.kind, (), float(numbers.mean()), float(numbers.std() or 1.0))
            specs.append(spec)
        return MultiTargets(specs, self.values)

    def encode(self, slide_ids: list[str]) -> list[torch.Tensor]:
        """Per target, a tensor over ``slide_ids``: the class index (-1 missing) or the standardised value (NaN)."""
        out = []
        for t, spec in enumerate(self.specs):
            if spec.kind == "categorical":
                index = {c: i for i, c in enumerate(spec.classes)}
                codes = [index.get(self.values[s][t], -1) if self.values[s][t] is not None else -1 for s in slide_ids]
                out.append(torch.tensor(codes, dtype=torch.long))
            else:
                numbers = [
                    math.nan if self.values[s][t] is None else (float(self.values[s][t]) - spec.mean) / spec.std
                    for s in slide_ids
                ]
                out.append(torch.tensor(numbers, dtype=torch.float32))
        return out

    def loss(self, outputs: torch.Tensor, encoded: list[torch.Tensor], regression_loss: str = "mse") -> torch.Tensor:
        """The sum over targets of each target's loss on outputs ``(B, K)``, averaged over the slides that have a
        value; targets no slide of the batch has add 0."""
        total = outputs.new_zeros(())
        for spec, part, target in zip(self.specs, self.slices(), encoded, strict=True):
            target = target.to(outputs.device)
            if spec.kind == "categorical":
                present = target >= 0
                if present.any():
                    total = total + F.cross_entropy(outputs[present, part], target[present])
            else:
                present = ~torch.isnan(target)
                if present.any():
                    pred, value = outputs[present, part].squeeze(-1), target[present].to(outputs.dtype)
                    fn = F.huber_loss if regression_loss == "huber" else F.mse_loss
                    total = total + fn(pred, value)
        return total

    def predictions(self, outputs: np.ndarray) -> list[np.ndarray]:
        """Per target: class probabilities ``(S, C)`` or values in the column's units ``(S,)``."""
        outputs = np.asarray(outputs, dtype=np.float64)
        out = []
        for spec, part in zip(self.specs, self.slices(), strict=True):
            block = outputs[:, part]
            if spec.kind == "categorical":
                block = np.exp(block - block.max(axis=1, keepdims=True))
                out.append(block / block.sum(axis=1, keepdims=True))
            else:
                out.append(block[:, 0] * spec.std + spec.mean)
        return out

    def metrics(self, outputs: np.ndarray, slide_ids: list[str]) -> dict[str, Any]:
        """Per target (``targets``: name -> metrics over the slides that have it) and averaged: ``auc``,
        ``f1_macro``, ``accuracy`` over the categorical targets, ``r2``, ``pearson_r`` over the continuous ones, and
        ``target_score``: the mean over targets of (macro-F1 + AUC) / 2 or R^2, what model selection uses."""
        from ._metrics import classification_metrics

        per_target: dict[str, dict[str, Any]] = {}
        scores = []
        for t, (spec, pred) in enumerate(zip(self.specs, self.predictions(outputs), strict=True)):
            have = [i for i, s in enumerate(slide_ids) if self.values[s][t] is not None]
            if spec.kind == "categorical":
                index = {c: i for i, c in enumerate(spec.classes)}
                y = np.array([index[self.values[slide_ids[i]][t]] for i in have], dtype=np.int64)
                found = classification_metrics(y, pred[have], len(spec.classes))
                auc = found.get("auc", math.nan)
                scores.append((found["f1_macro"] + (0.0 if math.isnan(auc) else auc)) / 2 if have else math.nan)
            else:
                y = np.array([self.values[slide_ids[i]][t] for i in have], dtype=np.float64)
                found = regression_metrics(y, pred[have])
                scores.append(found["r2"])
            per_target[spec.name] = found
        out: dict[str, Any] = {"n": len(slide_ids), "targets": per_target}
        for key, kind in (("accuracy", "categorical"), ("f1_macro", "categorical"), ("auc", "categorical")):
            out[key] = _mean([per_target[s.name].get(key) for s in self.specs if s.kind == kind])
        for key in ("r2", "pearson_r", "mae"):
            out[key] = _mean([per_target[s.name].get(key) for s in self.specs if s.kind == "regression"])
        out["target_score"] = _mean(scores)
        return out


def _mean(values: list[Any]) -> float:
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """MSE, MAE, R^2 (1 - residual / total sum of squares) and Pearson's r of predictions against values."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if len(y) == 0:
        return {"n": 0, "mse": math.nan, "mae": math.nan, "r2": math.nan, "pearson_r": math.nan}
    residual = float(((y - pred) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    r = math.nan
    if len(y) > 1 and y.std() > 0 and pred.std() > 0:
        r = float(np.corrcoef(y, pred)[0, 1])
    return {
        "n": len(y),
        "mse": residual / len(y),
        "mae": float(np.abs(y - pred).mean()),
        "r2": 1.0 - residual / total if total > 0 else math.nan,
        "pearson_r": r,
    }


def prediction_columns(multi: MultiTargets, outputs: np.ndarray) -> list[dict[str, Any]]:
    """Per slide of ``outputs``: ``<target>_predicted`` and ``prob_<target>_<class>`` (categorical) or the value."""
    rows: list[dict[str, Any]] = [{} for _ in range(len(outputs))]
    for spec, pred in zip(multi.specs, multi.predictions(outputs), strict=True):
        for row, p in zip(rows, pred, strict=True):
            if spec.kind == "categorical":
                row[f"{spec.name}_predicted"] = spec.classes[int(np.argmax(p))]
                row.update({f"prob_{spec.name}_{c}": float(q) for c, q in zip(spec.classes, p, strict=True)})
            else:
                row[f"{spec.name}_predicted"] = float(p)
    return rows


def multi_rows(
    multi: MultiTargets, slide_ids: list[str], outputs: np.ndarray, per_bag: dict[str, Any]
) -> list[dict[str, Any]]:
    """``predictions_test.csv`` rows: slide_id, each target's value (empty when missing) and prediction, and the
    attention's localisation where the bag has instance labels."""
    rows = []
    for sid, predicted in zip(slide_ids, prediction_columns(multi, outputs), strict=True):
        truth = {spec.name: "" if v is None else v for spec, v in zip(multi.specs, multi.values[sid], strict=True)}
        rows.append({"slide_id": sid, **truth, **predicted, **(per_bag.get(sid) or {})})
    return rows


__all__ += ["prediction_columns", "regression_metrics"]
