"""Stratified (and grouped) k-fold assignment with a seed: the fold whose test part each slide falls in.

The rules are scikit-learn's ``StratifiedKFold`` and ``StratifiedGroupKFold`` with ``shuffle=True,
random_state=seed``, written here so that ``train`` needs no scikit-learn (its import was a quarter of a small
run's CPU) and a run's folds never change with the installed scikit-learn. tests/test_training.py checks that
both give scikit-learn's folds (1.9) on random labels, groups and seeds. Grouped folds made before scikit-learn 1.8
(which fixed the group order of the shuffle, its pull request 32540) differ: ``train`` refuses to keep or resume a
fold whose checkpoint records other slides (``_check_fold_slides``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["stratified_folds", "stratified_group_folds"]


def stratified_folds(y: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Each sample's fold in ``0..n_splits-1``: every class dealt round-robin over the folds, then each class's
    fold numbers shuffled (classes in order of first appearance, one ``RandomState(seed)`` for all)."""
    y = np.asarray(y)
    rng = np.random.RandomState(seed)
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    _, appearance = np.unique(first, return_inverse=True)
    encoded = appearance[inverse.reshape(-1)]
    n_classes = len(first)
    if np.all(np.bincount(encoded) < n_splits):  # also when there are fewer samples than folds
        raise ValueError(f"{n_splits} folds need at least {n_splits} samples of some class")
    ordered = np.sort(encoded)
    # allocation[f, c]: how many of class c fold f tests on (the sorted labels dealt round-robin)
    allocation = np.array([np.bincount(ordered[f::n_splits], minlength=n_classes) for f in range(n_splits)])
    folds = np.empty(len(y), dtype=np.int64)
    for c in range(n_classes):
        of_class = np.arange(n_splits).repeat(allocation[:, c])
        rng.shuffle(of_class)
        folds[encoded == c] = of_class
    return folds


def stratified_group_folds(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Each sample's fold, every group in one fold: groups in shuffled order, the most class-skewed first, each
    put in the fold that keeps the per-class spread of fold sizes smallest (ties: the fold with fewer samples)."""
    y = np.asarray(y)
    rng = np.random.RandomState(seed)
    _, y_inverse, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    group_names, group_inverse = np.unique(np.asarray(groups), return_inverse=True)
    y_inverse, group_inverse = y_inverse.reshape(-1), group_inverse.reshape(-1)
    n_groups = len(group_names)
    if np.all(class_counts < n_splits):
        raise ValueError(f"{n_splits} folds need at least {n_splits} samples of some class")
    if n_splits > n_groups:
        raise ValueError(f"{n_splits} folds need at least {n_splits} groups; there are {n_groups}")
    per_group = np.zeros((n_groups, len(class_counts)))
    np.add.at(per_group, (group_inverse, y_inverse), 1)
    order = np.arange(n_groups)
    rng.shuffle(order)
    per_group = per_group[order]
    position = np.empty_like(order)  # each group's row in the shuffled order
    position[order] = np.arange(n_groups)
    group_inverse = position[group_inverse]
    per_fold = np.zeros((n_splits, len(class_counts)))
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    # stable: groups equally skewed keep their shuffled order
    for g in np.argsort(-np.std(per_group, axis=1), kind="stable"):
        fold = _best_fold(per_fold, class_counts, per_group[g])
        per_fold[fold] += per_group[g]
        fold_of_group[g] = fold
    return fold_of_group[group_inverse]


def _best_fold(per_fold: np.ndarray, class_counts: np.ndarray, group_counts: np.ndarray) -> int:
    best, best_spread, best_size = 0, np.inf, np.inf
    for fold in range(len(per_fold)):
        per_fold[fold] += group_counts
        spread = np.mean(np.std(per_fold / class_counts.reshape(1, -1), axis=0))
        per_fold[fold] -= group_counts
        size = np.sum(per_fold[fold])
        if spread < best_spread or (np.isclose(spread, best_spread) and size < best_size):
            best, best_spread, best_size = fold, spread, size
    return best
