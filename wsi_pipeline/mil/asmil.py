"""ASMIL: attention-stabilized multiple instance learning (the student network).

Ye, Mohajer Hamidi, Chi, Li, Pilanci, Ogawa, Haseyama, Plataniotis, "ASMIL: Attention-Stabilized Multiple Instance
Learning for Whole Slide Imaging", ICLR 2026 (arXiv 2603.06658); built as specified in docs/ASMIL.md. The anchor
model, its loss and token dropping are training-loop plug-ins (``wsi_pipeline.mil.plugins``), usable with every
registered model.

Computed without ever projecting the instances to keys or values: for a query q, ``<q, Wk h_n + b_k>`` equals
``<Wk^T q, h_n> + <q, b_k>``, and ``sum_n alpha_n (Wv h_n + b_v)`` equals ``Wv (sum_n alpha_n h_n) + b_v`` because
the weights sum to 1. Both are exact rewrites of the formulas (tests compare them with the literal computation);
they cost O(N d T H) instead of O(N d^2) for the keys and values of every instance.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ._base import MILOutput, as_bag, default_hidden_dim
from ._registry import register_model

__all__ = ["BranchAttention", "ASMIL"]


class BranchAttention(nn.Module):
    """Multi-head attention from learned queries over a set: ``(Q, d), (B, N, d) -> (B, Q, d)`` and the attention
    logits ``(B, Q*H, N)``, query-major (row ``q*H + h`` is head h of query q), scaled by ``1/sqrt(d/H)``.
    ``Wq, Wk, Wv, Wo`` are shared by the queries.

    ``bias=False`` drops the projection biases (the paper's formulas have none; the authors' code has them).
    """

    def __init__(self, dim: int, n_heads: int = 8, *, bias: bool = True) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden_dim {dim} must be divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.o_proj = nn.Linear(dim, dim, bias=bias)

    def logits(self, queries: Tensor, x: Tensor) -> Tensor:
        """``(Q, d), (B, N, d) -> (B, Q*H, N)``: ``<Wq q + b_q, Wk x_n + b_k>`` per head / sqrt(d/H)."""
        d = x.shape[-1]
        q = self.q_proj(queries).view(len(queries), self.n_heads, self.head_dim) / math.sqrt(self.head_dim)
        heads = self.k_proj.weight.view(self.n_heads, self.head_dim, d)  # (H, dh, d)
        folded = torch.einsum("qhj,hjd->qhd", q, heads).reshape(-1, d)  # (Q*H, d): Wk^T q per head
        logits = torch.matmul(folded, x.transpose(1, 2))  # (B, Q*H, N)
        if self.k_proj.bias is not None:
            shift = torch.einsum("qhj,hj->qh", q, self.k_proj.bias.view(self.n_heads, -1))  # (Q, H): <q, b_k>
            logits = logits + shift.reshape(-1, 1)
        return logits

    def forward(self, queries: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        b, n, d = x.shape
        n_q = len(queries)
        logits = self.logits(queries, x)  # (B, Q*H, N)
        pooled = torch.softmax(logits, dim=-1) @ x  # (B, Q*H, d): sum_n alpha_n x_n per query and head
        heads = self.v_proj.weight.view(self.n_heads, self.head_dim, d)  # (H, dh, d)
        values = torch.einsum("bqhd,hjd->bqhj", pooled.view(b, n_q, self.n_heads, d), heads).reshape(b, n_q, d)
        if self.v_proj.bias is not None:
            values = values + self.v_proj.bias  # = sum_n alpha_n (Wv x_n + b_v): the weights sum to 1
        return self.o_proj(values), logits  # (B, Q, d), (B, Q*H, N)


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
        Branches T (default 16), each a learned query ``q_t ~ N(0, query_std)``.
    n_heads
        Heads of both attentions (default 8).
    dropout
        Dropout on the branch tokens before their LayerNorm (default 0.1).
    bias
        Biases in the attention projections (default, as in the authors' code; the paper's formulas have none).
    query_std
        Standard deviation of the branch queries at initialisation (1e-6 in the paper).
    token_norm
        LayerNorm over the branch tokens (default, as in the paper); ``False`` is the change of the asmil-localise
        preset (docs/asmil.md: with it the student leaves its initial plateau of uniform attention).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int | None = None,
        n_tokens: int = 16,
        n_heads: int = 8,
        dropout: float = 0.1,
        bias: bool = True,
        query_std: float = 1e-6,
        token_norm: bool = True,
    ) -> None:
        super().__init__()
        hidden_dim = hidden_dim or default_hidden_dim(in_dim)
        self.in_dim, self.n_classes, self.n_tokens = in_dim, n_classes, n_tokens
        self.reduce = nn.Linear(in_dim, hidden_dim, bias=False)
        self.token_queries = nn.Parameter(torch.empty(n_tokens, hidden_dim))
        nn.init.normal_(self.token_queries, std=query_std)
        self.token_attention = BranchAttention(hidden_dim, n_heads, bias=bias)
        self.token_dropout = nn.Dropout(dropout)
        self.token_norm = nn.LayerNorm(hidden_dim) if token_norm else nn.Identity()
        self.class_query = nn.Parameter(torch.zeros(1, hidden_dim))
        self.bag_attention = BranchAttention(hidden_dim, n_heads, bias=bias)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def instance_features(self, x: Tensor) -> Tensor:
        """``(B, N, D) -> (B, N, d)``: ``ReLU(x W_r)``."""
        return torch.relu(self.reduce(x))

    def attention_logits(self, x: Tensor) -> Tensor:
        """Only the instance-attention logits ``(B, T*H, N)``, branch-major (what the anchor needs)."""
        return self.token_attention.logits(self.token_queries, self.instance_features(as_bag(x)))

    def forward(self, x: Tensor, keep_tokens: Tensor | None = None) -> MILOutput:
        x = as_bag(x)  # (B, N, D)
        h = self.instance_features(x)  # (B, N, d)
        tokens, attention_logits = self.token_attention(self.token_queries, h)  # (B, T, d), (B, T*H, N)
        tokens = self.token_norm(self.token_dropout(tokens))  # (B, T, d)
        if keep_tokens is not None:
            tokens = tokens[:, keep_tokens]  # (B, T', d)
        bag, _ = self.bag_attention(self.class_query, tokens)  # (B, 1, d)
        logits = self.classifier(bag.squeeze(1))  # (B, C)
        return MILOutput(logits=logits, attention_logits=attention_logits)


def _create_asmil(in_dim: int, n_classes: int, **kwargs: Any) -> ASMIL:
    return ASMIL(in_dim=in_dim, n_classes=n_classes, **kwargs)


@register_model
def asmil(in_dim: int, n_classes: int, **kwargs: Any) -> ASMIL:
    """ASMIL student, T = 16 branch tokens, 8 heads (Ye et al. 2026)."""
    return _create_asmil(in_dim, n_classes, **kwargs)
