"""ACMIL: attention-challenging multiple instance learning.

Zhang, Kang, Li, Li, Liang, Huang, Kwok, "Attention-Challenging Multiple Instance Learning for Whole Slide Image
Classification", ECCV 2024 (arXiv 2311.07125). Multiple gated-attention branches, each trained on the slide label,
stochastic top-k instance masking in training, and a diversity loss between the branches' attention maps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._base import MILOutput, as_bag, default_hidden_dim
from ._registry import register_model
from .abmil import GatedAttention

__all__ = ["stochastic_topk_mask", "diversity_loss", "ACMIL"]


def stochastic_topk_mask(logits: Tensor, top_k: int = 10, ratio: float = 0.6) -> Tensor:
    """Set a random ``ratio`` of each row's ``top_k`` largest logits to ``-inf`` (training only).

    ``logits`` is ``(B, K, N)``; at most ``int(min(top_k, N) * ratio)`` entries per row are masked, so at least
    one finite logit always remains.
    """
    k = min(top_k, logits.shape[-1])
    n_mask = int(k * ratio)
    if n_mask == 0:
        return logits
    top = logits.topk(k, dim=-1).indices  # (B, K, k)
    pick = torch.rand(top.shape, device=logits.device).argsort(dim=-1)[..., :n_mask]  # (B, K, n_mask)
    masked = top.gather(-1, pick)  # (B, K, n_mask)
    return logits.scatter(-1, masked, float("-inf"))  # (B, K, N)


def diversity_loss(alpha: Tensor) -> Tensor:
    """Mean pairwise cosine similarity between the branches' attention maps ``(B, K, N)``; 0 when K = 1."""
    n_branches = alpha.shape[1]
    if n_branches < 2:
        return alpha.new_zeros(())
    unit = nn.functional.normalize(alpha, dim=-1)  # (B, K, N)
    sim = unit @ unit.transpose(1, 2)  # (B, K, K)
    off_diag = sim.sum(dim=(1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(-1)  # (B,)
    return (off_diag / (n_branches * (n_branches - 1))).mean()


class ACMIL(nn.Module):
    """ACMIL with gated attention.

    Parameters
    ----------
    in_dim, n_classes
        Instance embedding dimension D and number of classes C.
    hidden_dim
        Width d after the first layer; default from ``default_hidden_dim(in_dim)``.
    attn_dim
        Width of the gated attention.
    n_branches
        Attention branches T (default 5), each with its own classifier.
    mask_topk, mask_ratio
        Stochastic top-k instance masking: of each branch's ``mask_topk`` largest logits, a random ``mask_ratio``
        is set to ``-inf`` in training.
    diversity_weight
        Weight of the diversity loss (mean pairwise cosine similarity of the branch attention maps).
    dropout
        Dropout after the first layer.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int | None = None,
        attn_dim: int = 128,
        n_branches: int = 5,
        mask_topk: int = 10,
        mask_ratio: float = 0.6,
        diversity_weight: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        hidden_dim = hidden_dim or default_hidden_dim(in_dim)
        self.in_dim, self.n_classes = in_dim, n_classes
        self.n_tokens = n_branches  # token dropping drops branches from the bag attention
        self.mask_topk, self.mask_ratio, self.diversity_weight = mask_topk, mask_ratio, diversity_weight
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden_dim, attn_dim, n_branches)
        self.branch_weight = nn.Parameter(torch.empty(n_branches, hidden_dim, n_classes))
        self.branch_bias = nn.Parameter(torch.zeros(n_branches, n_classes))
        nn.init.normal_(self.branch_weight, std=hidden_dim**-0.5)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(self, x: Tensor, keep_tokens: Tensor | None = None) -> MILOutput:
        x = as_bag(x)  # (B, N, D)
        h = self.fc(x)  # (B, N, d)
        raw = self.attention(h)  # (B, T, N)
        used = stochastic_topk_mask(raw, self.mask_topk, self.mask_ratio) if self.training else raw  # (B, T, N)
        alpha = torch.softmax(used, dim=-1)  # (B, T, N)
        branch_feat = torch.bmm(alpha, h)  # (B, T, d)
        branch_logits = torch.einsum("btd,tdc->btc", branch_feat, self.branch_weight) + self.branch_bias  # (B,T,C)
        kept = alpha if keep_tokens is None else alpha[:, keep_tokens]  # (B, T', N)
        bag_alpha = kept.mean(dim=1, keepdim=True)  # (B, 1, N)
        pooled = torch.bmm(bag_alpha, h).squeeze(1)  # (B, d)
        logits = self.classifier(pooled)  # (B, C)
        aux = {}
        if self.training and self.diversity_weight:
            aux["diversity"] = self.diversity_weight * diversity_loss(alpha)  # ()
        return MILOutput(logits=logits, attention_logits=raw, branch_logits=branch_logits, aux_losses=aux)


def _create_acmil(in_dim: int, n_classes: int, **kwargs: Any) -> ACMIL:
    return ACMIL(in_dim=in_dim, n_classes=n_classes, **kwargs)


@register_model
def acmil(in_dim: int, n_classes: int, **kwargs: Any) -> ACMIL:
    """ACMIL with gated attention, 5 branches, top-10 masking of 60% (Zhang et al. 2024)."""
    return _create_acmil(in_dim, n_classes, **kwargs)
