"""Attention stability, the ASMIL paper's diagnostic: Jensen-Shannon divergence of each slide's attention
distribution between consecutive epochs, and the attention entropy (how concentrated it is)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["js_divergence", "entropy", "stability_between", "mean_entropy"]

_EPS = 1e-12


def _normalise(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    return p / max(p.sum(), _EPS)


def entropy(p: np.ndarray) -> float:
    """Shannon entropy in nats of a distribution over the tiles."""
    p = _normalise(p)
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (nats, in [0, ln 2]) between two distributions over the same tiles."""
    p, q = _normalise(p), _normalise(q)
    if p.shape != q.shape:
        raise ValueError(f"attention distributions differ in length: {p.shape} vs {q.shape}")
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float((a[mask] * np.log(a[mask] / m[mask])).sum())

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def stability_between(previous: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray]) -> float:
    """Mean JS divergence over the slides present in both epochs (NaN when there is no previous epoch)."""
    shared = [sid for sid in current if sid in previous]
    if not shared:
        return math.nan
    return float(np.mean([js_divergence(previous[sid], current[sid]) for sid in shared]))


def mean_entropy(current: Mapping[str, np.ndarray], *, normalised: bool = False) -> float:
    """Mean attention entropy over slides; ``normalised`` divides each by ln N (1 = uniform, 0 = one tile)."""
    if not current:
        return math.nan
    values = []
    for p in current.values():
        h = entropy(p)
        values.append(h / math.log(len(p)) if normalised and len(p) > 1 else h)
    return float(np.mean(values))
