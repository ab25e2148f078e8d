"""MIL models on bags of tile embeddings (ABMIL, ACMIL, ASMIL, CLAM-SB, DSMIL, TransMIL, mean pooling) and
ASMIL's training plug-ins.

Build models by name with ``create_model(name, in_dim=..., n_classes=..., **overrides)``; ``list_models()`` gives
the registered names. Every model returns a ``MILOutput`` with slide logits and instance-attention logits.
"""

from . import abmil as _abmil  # noqa: F401  (registers the models)
from . import acmil as _acmil  # noqa: F401
from . import asmil as _asmil  # noqa: F401
from . import clam as _clam  # noqa: F401
from . import dsmil as _dsmil  # noqa: F401
from . import meanpool as _meanpool  # noqa: F401
from . import transmil as _transmil  # noqa: F401
from ._base import MILOutput, as_bag, default_hidden_dim
from ._registry import (
    checkpoint_model_kwargs,
    create_model,
    is_model,
    list_models,
    model_architecture,
    register_model,
)
from .abmil import ABMIL
from .acmil import ACMIL, diversity_loss, stochastic_topk_mask
from .asmil import ASMIL
from .clam import CLAMSB, smooth_top1_svm_loss
from .dsmil import DSMIL
from .meanpool import MeanPoolMIL
from .plugins import Anchor, RandomDropping, anchor_loss, sigmax
from .transmil import TransMIL

__all__ = [
    "MILOutput",
    "as_bag",
    "default_hidden_dim",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
    "model_architecture",
    "checkpoint_model_kwargs",
    "ABMIL",
    "ACMIL",
    "ASMIL",
    "MeanPoolMIL",
    "CLAMSB",
    "DSMIL",
    "TransMIL",
    "smooth_top1_svm_loss",
    "diversity_loss",
    "stochastic_topk_mask",
    "Anchor",
    "RandomDropping",
    "anchor_loss",
    "sigmax",
]
