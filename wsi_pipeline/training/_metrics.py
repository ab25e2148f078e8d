"""Slide-level classification metrics (sklearn): accuracy, balanced accuracy, macro-F1, AUC, confusion matrix."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["classification_metrics", "selection_score", "mean_std"]

SCALARS = ("loss", "accuracy", "balanced_accuracy", "f1_macro", "auc")


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Metrics of predicted class probabilities ``probs`` (S, C) against ``y_true`` (S,).

    AUC is binary for C = 2 and one-vs-rest macro otherwise; it is NaN (not an error) when a class is missing.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    labels = list(range(n_classes))
    out: dict[str, Any] = {"n": len(y_true)}
    if len(y_true) == 0:
        return {**out, **{k: math.nan for k in SCALARS[1:]}, "confusion": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about missing classes; those metrics stay defined
        out["accuracy"] = float(accuracy_score(y_true, pred))
        out["balanced_accuracy"] = float(balanced_accuracy_score(y_true, pred))
        out["f1_macro"] = float(f1_score(y_true, pred, labels=labels, average="macro", zero_division=0))
        try:
            if len(np.unique(y_true)) < n_classes:
                raise ValueError("a class is missing")
            if n_classes == 2:
                out["auc"] = float(roc_auc_score(y_true, probs[:, 1]))
            else:
                out["auc"] = float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=labels))
        except ValueError:
            out["auc"] = math.nan
    out["confusion"] = confusion_matrix(y_true, pred, labels=labels).tolist()
    return out


# Ties on macro-F1 + AUC or accuracy are broken by the validation loss: with a few dozen validation slides many
# epochs score a perfect 2.0, and the first of them is often an under-trained one (probabilities near 0.5, flat
# attention). The loss term is kept far below the smallest step of F1 + AUC on any validation set.
_TIE_BREAK = 1e-6


def selection_score(metrics: dict[str, Any], rule: str, epoch: int = 0) -> float:
    """Higher is better: macro-F1 + AUC (NaN AUC counts 0), accuracy, Harrell's C-index (survival), minus the
    loss, or the epoch (``last``); equal scores go to the epoch with the lower validation loss."""
    if rule == "last":
        return float(epoch)
    if rule == "loss":
        return -float(metrics["loss"])
    loss = float(metrics.get("loss", math.nan))
    tie_break = 0.0 if math.isnan(loss) else -_TIE_BREAK * min(loss, 100.0)
    if rule == "accuracy":
        return float(metrics["accuracy"]) + tie_break
    if rule == "target_score":  # several targets; NaN (no validation slide has any) counts 0
        target_score = float(metrics.get("target_score", math.nan))
        return (0.0 if math.isnan(target_score) else target_score) + tie_break
    if rule == "c_index":  # survival; NaN (no comparable pair among the validation slides) counts 0.5, chance
        c_index = float(metrics.get("c_index", math.nan))
        return (0.5 if math.isnan(c_index) else c_index) + tie_break
    auc = metrics.get("auc", math.nan)
    return float(metrics["f1_macro"]) + (0.0 if math.isnan(auc) else float(auc)) + tie_break


def mean_std(rows: Sequence[dict[str, Any]], keys: Sequence[str] = SCALARS) -> dict[str, dict[str, float]]:
    """``{key: {"mean", "std"}}`` over folds (population std; NaN entries ignored)."""
    out = {}
    for key in keys:
        values = np.array([row.get(key, math.nan) for row in rows], dtype=np.float64)
        values = values[~np.isnan(values)]
        out[key] = {
            "mean": float(values.mean()) if len(values) else math.nan,
            "std": float(values.std()) if len(values) else math.nan,
        }
    return out
