"""Calibrated probabilities: temperature scaling fitted on a fold's validation slides, and how well probabilities
mean what they say (expected calibration error, reliability bins, negative log-likelihood).

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) divides a model's logits by
one number T fitted on held-out slides: it changes how sure the model says it is, never which class it picks. Here
T is fitted on the fold's validation slides only (never its test slides), as the maximum a posteriori under a weak
log-normal prior on T (log T ~ N(0, 1)): a validation set of a dozen slides that the model separates perfectly has
its likelihood rise without end as T -> 0, and the prior stops T from making a model that has only been lucky on a
few slides yet surer. With ~50 validation slides the data outweighs the prior.

Everything works on log-probabilities (``log_softmax`` of the logits, float64): ``softmax(log_p / T)`` equals
``softmax(logits / T)``, since a softmax ignores the constant that separates the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "CALIBRATION_KEYS",
    "Calibration",
    "apply_temperature",
    "calibration_metrics",
    "expected_calibration_error",
    "confidence_bins",
    "ece_of_bins",
    "fit_temperature",
    "reliability_bins",
]

CALIBRATION_KEYS = ("ece", "ece_calibrated", "nll", "nll_calibrated")  # per fold, averaged over folds
ECE_BINS = 10  # equal-width confidence bins, as in Guo et al.
TEMPERATURE_RANGE = (0.05, 20.0)  # searched on a log grid; a fit at an end of it is reported as such
PRIOR_SIGMA = 1.0  # log T ~ N(0, PRIOR_SIGMA**2)


@dataclass(frozen=True)
class Calibration:
    """A fold's temperature and what it was fitted on (stored in the checkpoint; predict applies it)."""

    temperature: float = 1.0
    fitted_on: str = "none"  # "val" (the fold's validation slides) or "none" (no validation slides: T = 1)
    n_slides: int = 0
    nll_before: float = math.nan  # mean NLL on those slides, before and after
    nll_after: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Calibration:
        """The calibration a checkpoint records; checkpoints made before calibration existed get T = 1."""
        if not data:
            return cls()
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def apply_temperature(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities ``softmax(log_probs / T)``, rows of ``(S, C)`` or one ``(C,)``."""
    return np.exp(log_softmax(np.asarray(log_probs, dtype=np.float64) / temperature))


def _nll(log_probs: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of labels ``y`` under ``softmax(log_probs / T)``."""
    scaled = log_softmax(log_probs / temperature)
    return float(-scaled[np.arange(len(y)), y].mean())


def fit_temperature(log_probs: np.ndarray, y: np.ndarray) -> Calibration:
    """The temperature that best explains labels ``y`` (S,) given log-probabilities ``(S, C)`` (MAP, see the module
    docstring); T = 1 for no slides. A grid over log T, refined around its best point: deterministic and free of
    the local optima the prior could add to a gradient search."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return Calibration()

    def objective(log_t: float) -> float:
        # Summed over slides, so the data's weight grows with their number while the prior's stays fixed.
        return len(y) * _nll(log_probs, y, math.exp(log_t)) + 0.5 * (log_t / PRIOR_SIGMA) ** 2

    lo, hi = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])
    grid = np.linspace(lo, hi, 241)
    values = [objective(float(u)) for u in grid]
    best = int(np.argmin(values))
    step = grid[1] - grid[0]
    a, b = max(lo, grid[best] - step), min(hi, grid[best] + step)
    ratio = (math.sqrt(5) - 1) / 2  # golden section on the bracket around the best grid point
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if objective(c) <= objective(d):
            b = d
        else:
            a = c
    temperature = math.exp((a + b) / 2)
    return Calibration(
        temperature=temperature,
        fitted_on="val",
        n_slides=int(len(y)),
        nll_before=_nll(log_probs, y, 1.0),
        nll_after=_nll(log_probs, y, temperature),
    )


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Top-label reliability: per equal-width bin of the predicted class's probability, how many slides fall in
    it, their mean confidence and how often the predicted class is right (empty bins are left out)."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return []
    return confidence_bins(probs.max(axis=1), probs.argmax(axis=1) == y, n_bins)


def confidence_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> list[dict[str, float]]:
    """``reliability_bins`` from each slide's confidence (the predicted class's probability) and whether the
    predicted class was right."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    # A confidence of exactly 1.0 belongs to the last bin; each bin is (lo, hi] as in Guo et al.
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        members = index == b
        if members.any():
            out.append(
                {
                    "lo": b / n_bins,
                    "hi": (b + 1) / n_bins,
                    "n": int(members.sum()),
                    "confidence": float(confidence[members].mean()),
                    "accuracy": float(correct[members].mean()),
                }
            )
    return out


def ece_of_bins(bins: Sequence[dict[str, float]]) -> float:
    """ECE: the slide-weighted mean gap between confidence and accuracy over reliability bins (NaN for none)."""
    total = sum(b["n"] for b in bins)
    if not total:
        return math.nan
    return float(sum(b["n"] * abs(b["confidence"] - b["accuracy"]) for b in bins) / total)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error of probabilities ``(S, C)`` against labels ``y`` (NaN for none)."""
    return ece_of_bins(reliability_bins(probs, y, n_bins))


def calibration_metrics(
    raw: np.ndarray, calibrated: np.ndarray, y: np.ndarray, *, bins: bool = False
) -> dict[str, Any]:
    """ECE and NLL of raw and calibrated probabilities ``(S, C)`` against ``y`` (and their reliability bins)."""
    y = np.asarray(y, dtype=np.int64)

    def nll(p: np.ndarray) -> float:
        if not len(y):
            return math.nan
        return float(-np.log(np.clip(np.asarray(p, dtype=np.float64)[np.arange(len(y)), y], 1e-300, None)).mean())

    out: dict[str, Any] = {
        "ece": expected_calibration_error(raw, y),
        "ece_calibrated": expected_calibration_error(calibrated, y),
        "nll": nll(raw),
        "nll_calibrated": nll(calibrated),
    }
    if bins:
        out["reliability"] = reliability_bins(raw, y)
        out["reliability_calibrated"] = reliability_bins(calibrated, y)
    return out


def spread(probabilities: Sequence[np.ndarray], predicted: int) -> float | None:
    """The fold ensemble's disagreement on a slide: the standard deviation over the folds of the probability each
    gives the predicted class (None with fewer than two folds)."""
    if len(probabilities) < 2:
        return None
    return float(np.std([float(p[predicted]) for p in probabilities]))


def pooled_calibration(rows: Sequence[dict[str, str]]) -> dict[str, Any] | None:
    """Calibration of the test slides of every fold together (the rows of each fold's ``predictions_test.csv``:
    ``label``, ``prob_<class>`` and ``cal_prob_<class>``), or None when no row has calibrated probabilities (a
    survival run, or folds trained before calibration existed)."""
    raw, calibrated, labels = [], [], []
    classes = next(([k.removeprefix("prob_") for k in row if k.startswith("prob_")] for row in rows), [])
    for row in rows:
        if not classes or not all(row.get(f"cal_prob_{c}") not in (None, "") for c in classes):
            continue
        raw.append([float(row[f"prob_{c}"]) for c in classes])
        calibrated.append([float(row[f"cal_prob_{c}"]) for c in classes])
        labels.append(classes.index(row["label"]))
    if not labels:
        return None
    y = np.array(labels, dtype=np.int64)
    return {
        "what": "every fold's test slides by their fold's model, calibrated with that fold's temperature",
        "slides": len(y),
        **calibration_metrics(np.array(raw), np.array(calibrated), y, bins=True),
    }


__all__ += ["TEMPERATURE_RANGE", "log_softmax", "pooled_calibration", "spread"]
