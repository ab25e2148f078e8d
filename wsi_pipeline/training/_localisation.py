"""Localisation: does a bag's attention find its key instances?

Computed wherever a store has ``instance_labels`` (the digits benchmark, annotated slides), for every bag that has
both key instances (label >= 1) and negative ones (label 0); unknown instances (-1) are left out. Per bag:

- ``loc_auc``: ROC AUC of the attention against the key instances (ties count half): 1 = every key instance gets
  more attention than every other one, 0.5 = no better than chance. Blind to how peaked the attention is.
- ``loc_precision``: precision of the top-k attention, k = the bag's number of key instances (R-precision); instances
  tied at the k-th value share the remaining places (the expectation over tie-breaking), so uniform attention
  scores the key fraction, not whatever the storage order gives.
- ``loc_mass``: share of the attention on the key instances. Uniform attention gives the key fraction (e.g. 0.01),
  attention on the key instances only gives 1: the one measure here that sees whether attention concentrates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["LOCALISATION_KEYS", "bag_localisation", "mean_localisation"]

LOCALISATION_KEYS = ("loc_auc", "loc_precision", "loc_mass")


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney ROC AUC with average ranks for ties."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _top_k_precision(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    kth = np.sort(scores)[::-1][k - 1]
    above, tied = scores > kth, scores == kth
    places_left = k - int(above.sum())
    return float((positive[above].sum() + places_left * positive[tied].mean()) / k)


def bag_localisation(attention: np.ndarray, instance_labels: np.ndarray) -> dict[str, float] | None:
    """``loc_auc``, ``loc_precision``, ``loc_mass`` and ``key_fraction`` of one bag, or None when the bag has no
    key instance or nothing but key instances (nothing to localise)."""
    attention = np.asarray(attention, dtype=np.float64).reshape(-1)
    labels = np.asarray(instance_labels).reshape(-1)
    if attention.shape != labels.shape:
        raise ValueError(f"{len(attention)} attention values for {len(labels)} instance labels")
    known = labels >= 0
    key = labels[known] > 0
    if not key.any() or key.all():
        return None
    scores = attention[known]
    total = scores.sum()
    return {
        "loc_auc": _auc(scores, key),
        "loc_precision": _top_k_precision(scores, key, int(key.sum())),
        "loc_mass": float(scores[key].sum() / total) if total > 0 else math.nan,
        "key_fraction": float(key.mean()),
    }


def mean_localisation(per_bag: Iterable[dict[str, float] | None]) -> dict[str, float]:
    """Mean of each localisation measure over the bags that have one, with ``loc_bags`` = how many; empty when
    no bag has instance labels to localise."""
    rows = [row for row in per_bag if row]
    if not rows:
        return {}
    out: dict[str, float] = {key: float(np.mean([row[key] for row in rows])) for key in LOCALISATION_KEYS}
    out["loc_bags"] = len(rows)
    return out
