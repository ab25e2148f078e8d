"""ABMIL: gated attention-based deep multiple instance learning.

Ilse, Tomczak, Welling, "Attention-based Deep Multiple Instance Learning", ICML 2018 (arXiv 1802.04712).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._base import MILOutput, as_bag, default_hidden_dim
from ._registry import register_model

__all__ = ["GatedAttention", "ABMIL"]


class GatedAttention(nn.Module):
    """Gated attention logits ``w^T (tanh(V h) * sigmoid(U h))``, one row per branch: ``(B, N, d) -> (B, K, N)``."""

    def __init__(self, dim: int, attn_dim: int = 128, n_branches: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn_v = nn.Linear(dim, attn_dim)
        self.attn_u = nn.Linear(dim, attn_dim)
        self.drop = nn.Dropout(dropout)
        self.attn_w = nn.Linear(attn_dim, n_branches)

    def forward(self, h: Tensor) -> Tensor:
        gate = torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))  # (B, N, attn_dim)
        return self.attn_w(self.drop(gate)).transpose(1, 2)  # (B, K, N)


class ABMIL(nn.Module):
    """Gated-attention MIL: fc ``D -> d`` + ReLU, gated attention (``d -> attn_dim -> 1``), softmax over the
    instances, attention-weighted mean, linear classifier.

    Parameters
    ----------
    in_dim, n_classes
        Instance embedding dimension D and number of classes C.
    hidden_dim
        Width d after the first layer; default from ``default_hidden_dim(in_dim)``.
    attn_dim
        Width of the gated attention (128 as in the paper).
    dropout
        Dropout after the first layer and inside the attention.
    """

    n_tokens = 0  # no branch tokens: token dropping does not apply, instance dropping does

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int | None = None,
        attn_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_dim = hidden_dim or default_hidden_dim(in_dim)
        self.in_dim, self.n_classes = in_dim, n_classes
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden_dim, attn_dim, 1, dropout)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(self, x: Tensor, keep_tokens: Tensor | None = None) -> MILOutput:
        if keep_tokens is not None:
            raise ValueError("ABMIL has no branch tokens to drop; use instance dropping")
        x = as_bag(x)  # (B, N, D)
        h = self.fc(x)  # (B, N, d)
        logits_attn = self.attention(h)  # (B, 1, N)
        alpha = torch.softmax(logits_attn, dim=-1)  # (B, 1, N)
        pooled = torch.bmm(alpha, h).squeeze(1)  # (B, d)
        logits = self.classifier(pooled)  # (B, C)
        return MILOutput(logits=logits, attention_logits=logits_attn)


def _create_abmil(in_dim: int, n_classes: int, **kwargs: Any) -> ABMIL:
    return ABMIL(in_dim=in_dim, n_classes=n_classes, **kwargs)


@register_model
def abmil(in_dim: int, n_classes: int, **kwargs: Any) -> ABMIL:
    """ABMIL with gated attention (Ilse et al. 2018)."""
    return _create_abmil(in_dim, n_classes, **kwargs)
