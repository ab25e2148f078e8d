"""Slide-level classification metrics: accuracy, balanced accuracy, macro-F1, AUC, confusion matrix, ROC curves.

Written in numpy (checked against scikit-learn's in tests/test_training.py): predict and the report need only
these, and importing scikit-learn (with scipy and pandas) cost every predict process ~1 s of CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["classification_metrics", "confusion_matrix", "roc_curve", "binary_auc", "selection_score", "mean_std"]

SCALARS = ("loss", "accuracy", "balanced_accuracy", "f1_macro", "auc")


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Metrics of predicted class probabilities ``probs`` (S, C) against ``y_true`` (S,).

    Balanced accuracy is the mean recall over the classes present in ``y_true``; macro-F1 averages over all
    ``n_classes`` (a class never labelled nor predicted counts 0). AUC is binary for C = 2 and one-vs-rest macro
    otherwise; it is NaN (not an error) when a class is missing, or when the probabilities are not finite or (C > 2)
    do not sum to 1.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    out: dict[str, Any] = {"n": len(y_true)}
    if len(y_true) == 0:
        return {**out, **{k: math.nan for k in SCALARS[1:]}, "confusion": []}
    confusion = confusion_matrix(y_true, pred, n_classes)
    hits = np.diag(confusion).astype(np.float64)
    labelled, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    out["accuracy"] = float(hits.sum() / len(y_true))
    out["balanced_accuracy"] = float(np.mean(hits[labelled > 0] / labelled[labelled > 0]))
    f1_denominator = labelled + predicted  # 2 TP + FP + FN
    f1 = np.divide(2 * hits, f1_denominator, out=np.zeros(n_classes), where=f1_denominator > 0)
    out["f1_macro"] = float(f1.mean())
    out["auc"] = _auc(y_true, probs, n_classes)
    out["confusion"] = confusion.tolist()
    return out


def confusion_matrix(y_true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (C, C): rows the label, columns the prediction."""
    return np.bincount(y_true * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _auc(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> float:
    if len(np.unique(y_true)) < n_classes or not np.isfinite(probs).all():
        return math.nan
    if n_classes == 2:
        return binary_auc(y_true == 1, probs[:, 1])
    if not np.allclose(probs.sum(axis=1), 1.0):
        return math.nan
    return float(np.mean([binary_auc(y_true == k, probs[:, k]) for k in range(n_classes)]))


def roc_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of a binary score, from (0, 0) (threshold inf) to (1, 1), one point per distinct
    score, less the points on a straight line between their neighbours. Both classes must be present."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(score, kind="stable")[::-1]
    score, positive = score[order], positive[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # the last row of each distinct score
    tps = np.cumsum(positive)[last_of_each]
    fps = last_of_each + 1 - tps
    thresholds = score[last_of_each]
    if len(tps) > 2:  # keep the corners: where the slope changes
        keep = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    tps, fps = np.r_[0, tps], np.r_[0, fps]
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds]


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count half): the chance that a positive outranks a negative."""
    fpr, tpr, _ = roc_curve(positive, score)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


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
