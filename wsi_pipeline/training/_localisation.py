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
- ``loc_lesions_hit`` (only where tiles have grid positions, i.e. slide stores): the share of lesions that have at
  least one tile among the ``LESION_TOP_K`` most attended tiles (the top tiles ``predict`` shows a pathologist).
  A lesion is a group of key tiles that touch on the tile grid (8-neighbours), so lesions a tile apart stay apart
  and one lesion over several tiles counts once. Ties at the k-th place share the remaining places, as above.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ._metrics import binary_auc

__all__ = ["LOCALISATION_KEYS", "LESION_TOP_K", "bag_localisation", "lesion_regions", "mean_localisation"]

LOCALISATION_KEYS = ("loc_auc", "loc_precision", "loc_mass", "loc_lesions_hit")
LESION_TOP_K = 8


def _top_k_precision(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    kth = np.sort(scores)[::-1][k - 1]
    above, tied = scores > kth, scores == kth
    places_left = k - int(above.sum())
    return float((positive[above].sum() + places_left * positive[tied].mean()) / k)


def lesion_regions(coords: np.ndarray, instance_labels: np.ndarray) -> np.ndarray:
    """Which lesion each tile belongs to: ``(N,)`` int, -1 for tiles that are not key tiles, else the index of
    its group of key tiles touching on the tile grid (8-neighbours). ``coords`` are the tiles' (x, y) corners."""
    import cv2

    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    key = np.asarray(instance_labels).reshape(-1) > 0
    regions = np.full(len(key), -1, dtype=np.int64)
    if not key.any():
        return regions
    cells = []
    for axis in (0, 1):  # the grid step: the smallest gap between distinct tile positions
        values = np.unique(coords[:, axis])
        step = int(np.diff(values).min()) if len(values) > 1 else 1
        cells.append((coords[:, axis] - values[0]) // max(step, 1))
    grid = np.zeros((int(cells[1].max()) + 1, int(cells[0].max()) + 1), dtype=np.uint8)
    grid[cells[1][key], cells[0][key]] = 1
    _, labelled = cv2.connectedComponents(grid, connectivity=8)
    regions[key] = labelled[cells[1][key], cells[0][key]] - 1
    return regions


def _lesions_hit(scores: np.ndarray, regions: np.ndarray, k: int) -> float:
    """Expected share of lesions with a tile in the top-k scores, ties at the k-th place broken at random."""
    k = min(k, len(scores))
    kth = np.sort(scores)[::-1][k - 1]
    above, tied = scores > kth, scores == kth
    places, n_tied = k - int(above.sum()), int(tied.sum())
    hits = []
    for lesion in np.unique(regions[regions >= 0]):
        mine = regions == lesion
        if (mine & above).any():
            hits.append(1.0)
            continue
        t = int((mine & tied).sum())  # P(none of its t tied tiles among the places): C(n-t, p) / C(n, p)
        miss = math.exp(
            math.lgamma(n_tied - t + 1) + math.lgamma(n_tied - places + 1)
            - math.lgamma(n_tied + 1) - math.lgamma(n_tied - t - places + 1)
        ) if n_tied - t >= places else 0.0  # fmt: skip
        hits.append(1.0 - miss if t else 0.0)
    return float(np.mean(hits))


def bag_localisation(
    attention: np.ndarray,
    instance_labels: np.ndarray,
    regions: np.ndarray | None = None,
    *,
    top_k: int = LESION_TOP_K,
) -> dict[str, float] | None:
    """``loc_auc``, ``loc_precision``, ``loc_mass`` and ``key_fraction`` of one bag, plus ``loc_lesions_hit`` and
    ``lesions`` when ``regions`` (``lesion_regions``) are given; None when the bag has no key instance or nothing
    but key instances (nothing to localise)."""
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
    out = {
        "loc_auc": binary_auc(key, scores),
        "loc_precision": _top_k_precision(scores, key, int(key.sum())),
        "loc_mass": float(scores[key].sum() / total) if total > 0 else math.nan,
        "key_fraction": float(key.mean()),
    }
    if regions is not None:
        known_regions = np.asarray(regions).reshape(-1)[known]
        out["loc_lesions_hit"] = _lesions_hit(scores, known_regions, top_k)
        out["lesions"] = int(len(np.unique(known_regions[known_regions >= 0])))
    return out


def mean_localisation(per_bag: Iterable[dict[str, float] | None]) -> dict[str, float]:
    """Mean of each localisation measure over the bags that have one, with ``loc_bags`` = how many; empty when
    no bag has instance labels to localise."""
    rows = [row for row in per_bag if row]
    if not rows:
        return {}
    out: dict[str, float] = {
        key: float(np.mean([row[key] for row in rows if key in row]))
        for key in LOCALISATION_KEYS
        if any(key in row for row in rows)
    }
    out["loc_bags"] = len(rows)
    return out
