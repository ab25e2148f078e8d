"""Mean pooling: the attention-free baseline every attention MIL model must beat.

fc ``D -> d`` + ReLU, the plain mean over the instances, linear classifier. Its attention is uniform by
construction (all logits 0), so heatmaps say so and the anchor plug-in has nothing to stabilise; on sparse bags
(a few key instances among hundreds) the key instances' signal is diluted by the bag size and it stays near chance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._base import MILOutput, as_bag, default_hidden_dim
from ._registry import register_model

__all__ = ["MeanPoolMIL"]


class MeanPoolMIL(nn.Module):
    """fc ``D -> d`` + ReLU, mean over the instances, linear classifier; ``attention_logits`` are zeros."""

    n_tokens = 0  # no branch tokens: token dropping does not apply, instance dropping does
    uniform_attention = True  # attention logits are 0 by construction (heatmaps and tests rely on it)

    def __init__(self, in_dim: int, n_classes: int, hidden_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        hidden_dim = hidden_dim or default_hidden_dim(in_dim)
        self.in_dim, self.n_classes = in_dim, n_classes
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(self, x: Tensor, keep_tokens: Tensor | None = None) -> MILOutput:
        if keep_tokens is not None:
            raise ValueError("mean pooling has no branch tokens to drop; use instance dropping")
        x = as_bag(x)  # (B, N, D)
        pooled = self.fc(x).mean(dim=1)  # (B, d)
        logits_attn = torch.zeros(x.shape[0], 1, x.shape[1], device=x.device, dtype=pooled.dtype)  # (B, 1, N)
        return MILOutput(logits=self.classifier(pooled), attention_logits=logits_attn)


@register_model
def meanpool(in_dim: int, n_classes: int, **kwargs: Any) -> MeanPoolMIL:
    """Mean pooling (no attention): the baseline that shows what attention adds."""
    return MeanPoolMIL(in_dim=in_dim, n_classes=n_classes, **kwargs)
