"""ASMIL: attention-stabilized multiple instance learning (the student network).

Ye, Mohajer Hamidi, Chi, Li, Pilanci, Ogawa, Haseyama, Plataniotis, "ASMIL: Attention-Stabilized Multiple Instance
Learning for Whole Slide Imaging", ICLR 2026 (arXiv 2603.06658); built as specified in docs/ASMIL.md. The anchor
model, its loss and token dropping are training-loop plug-ins (``wsi_pipeline.mil.plugins``), usable with every
registered model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ._base import MILOutput, as_bag, default_hidden_dim
from ._registry import register_model

__all__ = ["QueryAttention", "ASMIL"]


class QueryAttention(nn.Module):
    """Multi-head attention from a few learned queries over a set: ``(Q, d), (B, N, d) -> (B, Q, d), logits``.

    Returns the pooled values and the attention logits ``(B, heads, Q, N)`` (scaled by ``1/sqrt(d/heads)``).
    """

    def __init__(self, dim: int, n_heads: int = 8) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden_dim {dim} must be divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        b, n, d = x.shape  # (B, N, d)
        q = self.q_proj(queries).view(-1, self.n_heads, self.head_dim).transpose(0, 1)  # (H, Q, dh)
        k = self.k_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, N, dh)
        v = self.v_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, N, dh)
        logits = q.unsqueeze(0) @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, Q, N)
        alpha = torch.softmax(logits, dim=-1)  # (B, H, Q, N)
        pooled = (alpha @ v).transpose(1, 2).reshape(b, -1, d)  # (B, Q, d)
        return self.o_proj(pooled), logits  # (B, Q, d), (B, H, Q, N)


class ASMIL(nn.Module):
    """The ASMIL student: reduction, T branch tokens from multi-head attention over the instances, and a bag
    token from a class query attending over the kept branch tokens.

    Parameters
    ----------
    in_dim, n_classes
        Instance embedding dimension D and number of classes C.
    hidden_dim
        d; default 128 for D = 384, 256 for D = 512, 512 for D >= 1024 (``default_hidden_dim``).
    n_tokens
        Branches T (default 16), each a learned query ``q_t ~ N(0, 1e-6)``.
    n_heads
        Heads of both attentions (default 8).
    dropout
        Dropout on the branch tokens before their LayerNorm (default 0.1).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int | None = None,
        n_tokens: int = 16,
        n_heads: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        hidden_dim = hidden_dim or default_hidden_dim(in_dim)
        self.in_dim, self.n_classes, self.n_tokens = in_dim, n_classes, n_tokens
        self.reduce = nn.Linear(in_dim, hidden_dim, bias=False)
        self.token_queries = nn.Parameter(torch.empty(n_tokens, hidden_dim))
        nn.init.normal_(self.token_queries, std=1e-6)
        self.token_attention = QueryAttention(hidden_dim, n_heads)
        self.token_dropout = nn.Dropout(dropout)
        self.token_norm = nn.LayerNorm(hidden_dim)
        self.class_query = nn.Parameter(torch.zeros(1, hidden_dim))
        self.bag_attention = QueryAttention(hidden_dim, n_heads)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(self, x: Tensor, keep_tokens: Tensor | None = None) -> MILOutput:
        x = as_bag(x)  # (B, N, D)
        b, n, _ = x.shape
        h = torch.relu(self.reduce(x))  # (B, N, d)
        tokens, attn = self.token_attention(self.token_queries, h)  # (B, T, d), (B, H, T, N)
        tokens = self.token_norm(self.token_dropout(tokens))  # (B, T, d)
        if keep_tokens is not None:
            tokens = tokens[:, keep_tokens]  # (B, T', d)
        bag, _ = self.bag_attention(self.class_query, tokens)  # (B, 1, d)
        logits = self.classifier(bag.squeeze(1))  # (B, C)
        attention_logits = attn.transpose(1, 2).reshape(b, -1, n)  # (B, T*H, N)
        return MILOutput(logits=logits, attention_logits=attention_logits)


def _create_asmil(in_dim: int, n_classes: int, **kwargs: Any) -> ASMIL:
    return ASMIL(in_dim=in_dim, n_classes=n_classes, **kwargs)


@register_model
def asmil(in_dim: int, n_classes: int, **kwargs: Any) -> ASMIL:
    """ASMIL student, T = 16 branch tokens, 8 heads (Ye et al. 2026)."""
    return _create_asmil(in_dim, n_classes, **kwargs)
