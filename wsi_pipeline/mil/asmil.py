"""ASMIL: attention-stabilized multiple instance learning (the student network).

Ye, Mohajer Hamidi, Chi, Li, Pilanci, Ogawa, Haseyama, Plataniotis, "ASMIL: Attention-Stabilized Multiple Instance
Learning for Whole Slide Imaging", ICLR 2026 (arXiv 2603.06658); built as specified in docs/asmil.md. The anchor
model, its loss and token dropping are training-loop plug-ins (``wsi_pipeline.mil.plugins``), usable with every
registered model.

Computed without ever projecting the instances to keys or values: for a query q, ``<q, Wk h_n + b_k>`` equals
``<Wk^T q, h_n> + <q, b_k>``, and ``sum_n alpha_n (Wv h_n + b_v)`` equals ``Wv (sum_n alpha_n h_n) + b_v`` because
the weights sum to 1. Both are exact rewrites of the formulas (tests compare them with the literal computation);
they cost O(N d T H) instead of O(N d^2) for the keys and values of every instance.

Each branch has its own attention module and its own LayerNorm, as in the paper and the authors' code
(``ACMIL_MYMHA.sub_attention``, one ``MutiHeadAttention`` per branch). The T modules are held as stacked weights
(``(T, d, d)``) and run through the same folded einsums in one pass, not a Python loop over branches. With queries
initialised near zero, each branch's effective query starts at its own random bias b_q^t, so the branches start
different; ``shared_branches=True`` builds the earlier model of this project (one module and one LayerNorm shared
by all branches, which start identical), kept for comparison and for its checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ._base import MILOutput, as_bag, default_hidden_dim
from ._registry import register_model

__all__ = ["BranchAttention", "PerBranchAttention", "BranchLayerNorm", "ASMIL"]


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


def _uniform_(tensor: Tensor, fan_in: int) -> Tensor:
    """``nn.Linear``'s default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for stacked weights."""
    bound = 1 / math.sqrt(fan_in)
    return nn.init.uniform_(tensor, -bound, bound)


class PerBranchAttention(nn.Module):
    """T attention modules, one per query, each with its own ``Wq, Wk, Wv, Wo`` (and biases), held stacked:
    ``(T, d), (B, N, d) -> (B, T, d)`` and the logits ``(B, T*H, N)``, query-major like ``BranchAttention``.

    Query t only ever meets module t, so this equals T separate ``BranchAttention`` modules each given one query
    (tests compare it with that literal computation, gradients included).
    """

    def __init__(self, n_branches: int, dim: int, n_heads: int = 8, *, bias: bool = True) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden_dim {dim} must be divisible by n_heads {n_heads}")
        self.n_branches, self.n_heads, self.head_dim = n_branches, n_heads, dim // n_heads
        for name in ("q", "k", "v", "o"):
            self.register_parameter(f"{name}_weight", nn.Parameter(_uniform_(torch.empty(n_branches, dim, dim), dim)))
            b = nn.Parameter(_uniform_(torch.empty(n_branches, dim), dim)) if bias else None
            self.register_parameter(f"{name}_bias", b)

    # Batched matrix products over the branches (and heads), laid out so that no weight is ever permuted or copied:
    # on CPU the einsum equivalents spend as long copying the (T, d, d) weights as computing.
    def _queries(self, queries: Tensor) -> Tensor:
        """``(T, d) -> (T*H, 1, dh)``: ``(Wq^t q_t + b_q^t) / sqrt(dh)`` per branch, split into heads."""
        q = torch.bmm(self.q_weight, queries.unsqueeze(-1)).squeeze(-1)  # (T, d)
        if self.q_bias is not None:
            q = q + self.q_bias
        return q.view(self.n_branches * self.n_heads, 1, self.head_dim) / math.sqrt(self.head_dim)

    def logits(self, queries: Tensor, x: Tensor) -> Tensor:
        """``(T, d), (B, N, d) -> (B, T*H, N)``: ``<Wq^t q_t + b_q^t, Wk^t x_n + b_k^t>`` per head / sqrt(dh)."""
        th, dh, d = self.n_branches * self.n_heads, self.head_dim, x.shape[-1]
        q = self._queries(queries)  # (T*H, 1, dh)
        folded = torch.bmm(q, self.k_weight.view(th, dh, d)).view(th, d)  # Wk^t^T q per branch and head
        logits = torch.matmul(folded, x.transpose(1, 2))  # (B, T*H, N)
        if self.k_bias is not None:
            shift = (q.view(th, dh) * self.k_bias.view(th, dh)).sum(-1)  # (T*H,): <q, b_k^t>
            logits = logits + shift.unsqueeze(-1)
        return logits

    def forward(self, queries: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        b, _, d = x.shape
        t, th, dh = self.n_branches, self.n_branches * self.n_heads, self.head_dim
        logits = self.logits(queries, x)  # (B, T*H, N)
        pooled = torch.softmax(logits, dim=-1) @ x  # (B, T*H, d): sum_n alpha_n x_n per branch and head
        values = torch.bmm(self.v_weight.view(th, dh, d), pooled.permute(1, 2, 0))  # (T*H, dh, B)
        values = values.reshape(t, d, b)
        if self.v_bias is not None:
            values = values + self.v_bias.unsqueeze(-1)  # = sum_n alpha_n (Wv^t x_n + b_v^t): weights sum to 1
        out = torch.bmm(self.o_weight, values)  # (T, d, B)
        if self.o_bias is not None:
            out = out + self.o_bias.unsqueeze(-1)
        return out.permute(2, 0, 1), logits  # (B, T, d), (B, T*H, N)


class BranchLayerNorm(nn.Module):
    """A LayerNorm per branch: ``(B, T, d)``, normalised over d, with branch t's own scale and shift."""

    def __init__(self, n_branches: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_branches, dim))
        self.bias = nn.Parameter(torch.zeros(n_branches, dim))

    def forward(self, tokens: Tensor) -> Tensor:
        normed = nn.functional.layer_norm(tokens, tokens.shape[-1:], eps=self.eps)
        return normed * self.weight + self.bias


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
        LayerNorm over the branch tokens (default, as in the paper and the authors' code); ``False`` removes it, a
        modification of the method (docs/asmil.md).
    shared_branches
        ``False`` (default): one attention module and one LayerNorm per branch, as the authors built it.
        ``True``: one module and one LayerNorm shared by every branch (this project's model before it followed the
        released code; kept for comparison and its checkpoints).
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
        shared_branches: bool = False,
    ) -> None:
        super().__init__()
        hidden_dim = hidden_dim or default_hidden_dim(in_dim)
        self.in_dim, self.n_classes, self.n_tokens = in_dim, n_classes, n_tokens
        self.reduce = nn.Linear(in_dim, hidden_dim, bias=False)
        self.token_queries = nn.Parameter(torch.empty(n_tokens, hidden_dim))
        nn.init.normal_(self.token_queries, std=query_std)
        self.shared_branches = shared_branches
        self.token_attention: BranchAttention | PerBranchAttention
        self.token_norm: nn.Module
        if shared_branches:
            self.token_attention = BranchAttention(hidden_dim, n_heads, bias=bias)
            self.token_norm = nn.LayerNorm(hidden_dim) if token_norm else nn.Identity()
        else:
            self.token_attention = PerBranchAttention(n_tokens, hidden_dim, n_heads, bias=bias)
            self.token_norm = BranchLayerNorm(n_tokens, hidden_dim) if token_norm else nn.Identity()
        self.token_dropout = nn.Dropout(dropout)
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


def asmil_architecture(kwargs: dict[str, Any]) -> str:
    """What an ASMIL built with ``kwargs`` is, for a run's identity: ``per-branch`` or ``shared-branches``."""
    return "shared-branches" if kwargs.get("shared_branches") else "per-branch"


def asmil_checkpoint_kwargs(kwargs: dict[str, Any], state_dict: dict[str, Any]) -> dict[str, Any]:
    """The kwargs that rebuild a checkpoint's ASMIL: checkpoints written before per-branch modules were the
    default have no ``shared_branches`` and a shared module's weights (``token_attention.q_proj.weight``)."""
    if "shared_branches" not in kwargs and "token_attention.q_proj.weight" in state_dict:
        return {**kwargs, "shared_branches": True}
    return kwargs


@register_model
def asmil(in_dim: int, n_classes: int, **kwargs: Any) -> ASMIL:
    """ASMIL student, T = 16 branch tokens, 8 heads, an attention module per branch (Ye et al. 2026)."""
    return _create_asmil(in_dim, n_classes, **kwargs)


asmil.architecture = asmil_architecture  # type: ignore[attr-defined]
asmil.checkpoint_kwargs = asmil_checkpoint_kwargs  # type: ignore[attr-defined]
