"""``train``: MIL models on the stored bags of embeddings, with labels from a CSV, splits or k-fold CV.

Names are loaded on first use (PEP 562), so that code needing only the torch-free parts (``TrainConfig``, run-folder
names) does not import torch: ``wsi-pipeline submit`` names the run folder of its train stage this way.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BagLoader": "._bags",
    "resolve_encoder": "._bags",
    "standardization_scale": "._bags",
    "fold_dir": "._runs",
    "load_checkpoint": "._checkpoint",
    "model_from_checkpoint": "._checkpoint",
    "parse_run_dir": "._runs",
    "run_dir": "._runs",
    "save_checkpoint": "._checkpoint",
    "TrainConfig": "._config",
    "resolve_plugins": "._config",
    "LOCALISATION_KEYS": "._localisation",
    "LESION_TOP_K": "._localisation",
    "lesion_regions": "._localisation",
    "bag_localisation": "._localisation",
    "mean_localisation": "._localisation",
    "classification_metrics": "._metrics",
    "mean_std": "._metrics",
    "selection_score": "._metrics",
    "Labels": "._splits",
    "Split": "._splits",
    "make_splits": "._splits",
    "read_labels": "._splits",
    "split_tag": "._splits",
    "entropy": "._stability",
    "js_divergence": "._stability",
    "mean_entropy": "._stability",
    "stability_between": "._stability",
    "choose_threads": "._threads",
    "FoldResult": "._train",
    "TrainResult": "._train",
    "bag_loss_terms": "._train",
    "evaluate": "._train",
    "make_optimizer": "._train",
    "train": "._train",
    "train_epoch": "._train",
    "train_fold": "._train",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


__all__ = [
    "BagLoader",
    "resolve_encoder",
    "standardization_scale",
    "fold_dir",
    "load_checkpoint",
    "model_from_checkpoint",
    "parse_run_dir",
    "run_dir",
    "save_checkpoint",
    "TrainConfig",
    "resolve_plugins",
    "LOCALISATION_KEYS",
    "LESION_TOP_K",
    "lesion_regions",
    "bag_localisation",
    "mean_localisation",
    "classification_metrics",
    "mean_std",
    "selection_score",
    "Labels",
    "Split",
    "make_splits",
    "read_labels",
    "split_tag",
    "entropy",
    "js_divergence",
    "mean_entropy",
    "stability_between",
    "choose_threads",
    "FoldResult",
    "TrainResult",
    "bag_loss_terms",
    "evaluate",
    "make_optimizer",
    "train",
    "train_epoch",
    "train_fold",
]
