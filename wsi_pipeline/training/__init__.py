"""``train``: MIL models on the stored bags of embeddings, with labels from a CSV, splits or k-fold CV."""

from ._bags import BagLoader, resolve_encoder
from ._checkpoint import fold_dir, load_checkpoint, model_from_checkpoint, parse_run_dir, run_dir, save_checkpoint
from ._config import TrainConfig, resolve_plugins
from ._localisation import LOCALISATION_KEYS, bag_localisation, mean_localisation
from ._metrics import classification_metrics, mean_std, selection_score
from ._splits import Labels, Split, make_splits, read_labels, resolve_stores, split_tag
from ._stability import entropy, js_divergence, mean_entropy, stability_between
from ._train import FoldResult, TrainResult, evaluate, resolve_device, train, train_fold

__all__ = [
    "BagLoader",
    "resolve_encoder",
    "fold_dir",
    "load_checkpoint",
    "model_from_checkpoint",
    "parse_run_dir",
    "run_dir",
    "save_checkpoint",
    "TrainConfig",
    "resolve_plugins",
    "LOCALISATION_KEYS",
    "bag_localisation",
    "mean_localisation",
    "classification_metrics",
    "mean_std",
    "selection_score",
    "Labels",
    "Split",
    "make_splits",
    "read_labels",
    "resolve_stores",
    "split_tag",
    "entropy",
    "js_divergence",
    "mean_entropy",
    "stability_between",
    "FoldResult",
    "TrainResult",
    "evaluate",
    "resolve_device",
    "train",
    "train_fold",
]
