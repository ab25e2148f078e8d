"""DSMIL: dual-stream multiple instance learning.

Li, Li, Eliceiri, "Dual-stream Multiple Instance Learning Network for Whole Slide Image Classification with
Self-supervised Contrastive Learning", CVPR 2021 (arXiv 2011.08939). Two streams over the instances:

- the instance stream scores every instance per class; the bag's score for class c in this stream is the maximum
  over the instances (max pooling), and the top-scoring instance of class c is its *critical instance* m_c;
- the bag stream attends from the critical instance to all instances by the distance of their queries,
  ``a_c,n = softmax_n(<q_n, q_m_c> / sqrt(128))``, pools the instances with it per class, and a 1-D convolution over
  the classes' pooled embeddings gives the bag logits.

Defaults as in the authors' code (binli123/dsmil-wsi): query network D -> 128 + ReLU -> 128 + Tanh ("nonlinear"),
values = the instance embeddings ("passing_v" off), loss 0.5 bag + 0.5 max-instance, prediction from the bag stream;
their recipe is Adam(betas 0.5, 0.9), lr 2e-4, weight decay 5e-3, cosine schedule. Differences here: an fc
D -> d + ReLU first, as in the other models (the authors' instance classifier reads the raw features), and softmax
cross-entropy over the C classes in both streams instead of their binary cross-entropy on one-hot labels, so that
the training loop's losses apply unchanged: the max-instance logits are ``branch_logits`` (the loop adds their
cross-entropy at the bag loss's weight: the 0.5 : 0.5 split, scaled by 2).

Attention for the plug-ins and heatmaps: the bag stream's logits, one row per class, ``(B, C, N)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ._base import MILOutput, as_bag, default_hidden_dim
from ._registry import register_model

__all__ = ["DSMIL"]


class DSMIL(nn.Module):
    """DSMIL.

    Parameters
    ----------
    in_dim, n_classes
        Instance embedding dimension D and number of classes C.
    hidden_dim
        Width d of the instance embeddings the two streams read; default from ``default_hidden_dim(in_dim)``.
    query_dim
        Width of the queries (128).
    dropout
        Dropout on the instance embeddings (0, as the authors' ``dropout_node``).
    """

    n_tokens = 0  # no branch tokens: token dropping does not apply, instance dropping does

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int | None = None,
        query_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_dim = hidden_dim or default_hidden_dim(in_dim)
        self.in_dim, self.n_classes, self.query_dim = in_dim, n_classes, query_dim
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.instance_classifier = nn.Linear(hidden_dim, n_classes)
        self.query = nn.Sequential(
            nn.Linear(hidden_dim, query_dim), nn.ReLU(), nn.Linear(query_dim, query_dim), nn.Tanh()
        )
        # Conv1d over the C pooled embeddings with a kernel as wide as an embedding: every class's logit reads
        # every class's pooled embedding.
        self.bag_classifier = nn.Conv1d(n_classes, n_classes, kernel_size=hidden_dim)

    def forward(self, x: Tensor, keep_tokens: Tensor | None = None) -> MILOutput:
        if keep_tokens is not None:
            raise ValueError("DSMIL has no branch tokens to drop; use instance dropping")
        x = as_bag(x)  # (B, N, D)
        h = self.fc(x)  # (B, N, d)
        instance_logits = self.instance_classifier(h)  # (B, N, C)
        max_logits, critical = instance_logits.max(dim=1)  # (B, C), (B, C)
        queries = self.query(h)  # (B, N, q)
        critical_queries = queries.gather(1, critical.unsqueeze(-1).expand(-1, -1, self.query_dim))  # (B, C, q)
        attn = critical_queries @ queries.transpose(1, 2) / math.sqrt(self.query_dim)  # (B, C, N)
        pooled = torch.softmax(attn, dim=-1) @ h  # (B, C, d)
        logits = self.bag_classifier(pooled).squeeze(-1)  # (B, C)
        return MILOutput(logits=logits, attention_logits=attn, branch_logits=max_logits.unsqueeze(1))  # (B, 1, C)


def _create_dsmil(in_dim: int, n_classes: int, **kwargs: Any) -> DSMIL:
    return DSMIL(in_dim=in_dim, n_classes=n_classes, **kwargs)


@register_model
def dsmil(in_dim: int, n_classes: int, **kwargs: Any) -> DSMIL:
    """DSMIL: max-pooled instance stream + critical-instance distance attention (Li et al. 2021)."""
    return _create_dsmil(in_dim, n_classes, **kwargs)
