"""TransMIL: transformer-based correlated multiple instance learning.

Shao, Bian, Chen, Wang, Zhang, Ji, Zhang, "TransMIL: Transformer based Correlated Multiple Instance Learning for
Whole Slide Image Classification", NeurIPS 2021 (arXiv 2106.00908). A class token and the instances go through two
Nystrom self-attention layers (Xiong et al., "Nystromformer", AAAI 2021) with a pyramid position encoding generator
(PPEG: 7x7, 5x5 and 3x3 depthwise convolutions over the instances laid on a square) between them; the class token
is classified.

Defaults as in the authors' code (szc19990412/TransMIL): fc D -> 512 + ReLU, 8 heads of width d/8, d/2 landmarks,
6 Moore-Penrose iterations, a depthwise convolution (kernel 33) over the values as residual, dropout 0.1 after the
attention output, LayerNorm before the classifier; their recipe is Lookahead(RAdam), lr 2e-4, weight decay 1e-5.
Here ``hidden_dim`` defaults to ``default_hidden_dim(D)`` like the other models (512 for D >= 1024, the paper's).

Attention for the plug-ins and heatmaps: each head's exact softmax logits of the class token over the instances in
the last layer (the row that the Nystrom approximation approximates), ``(B, heads, N)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ._base import MILOutput, as_bag, default_hidden_dim
from ._registry import register_model

__all__ = ["iterative_pinv", "NystromAttention", "PPEG", "TransMIL"]


def iterative_pinv(a: Tensor, iterations: int = 6) -> Tensor:
    """Moore-Penrose pseudo-inverse of each matrix ``(..., m, m)`` by the iteration of Nystromformer (eq. 16):
    ``Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4`` from ``Z_0 = A^T / (||A||_1 ||A||_inf)``."""
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    magnitude = a.abs()
    norm_1 = magnitude.sum(-2).amax(-1)  # (...,) largest column sum
    norm_inf = magnitude.sum(-1).amax(-1)  # (...,) largest row sum
    z = a.transpose(-1, -2) / (norm_1 * norm_inf)[..., None, None]  # (..., m, m)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(nn.Module):
    """Multi-head self-attention approximated with ``n_landmarks`` landmarks (Nystromformer).

    Landmarks are the means of ``n_landmarks`` contiguous segments of the sequence (no zero padding, unlike the
    ``nystrom-attention`` package the authors used); a sequence of at most ``n_landmarks`` tokens gets exact softmax
    attention, which is what the approximation converges to there anyway. Returns the output ``(B, L, d)`` and
    the first token's exact attention logits ``(B, heads, L)`` (the class token's, in TransMIL).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int = 8,
        n_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual_kernel: int = 33,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden_dim {dim} must be divisible by n_heads {n_heads}")
        if n_landmarks < 1:
            raise ValueError(f"n_landmarks must be >= 1, got {n_landmarks}")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.n_landmarks, self.pinv_iterations = n_landmarks, pinv_iterations
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        # Depthwise convolution of each head's values along the sequence (Nystromformer's skip connection).
        self.value_conv = (
            nn.Conv2d(
                n_heads, n_heads, (residual_kernel, 1), padding=(residual_kernel // 2, 0), groups=n_heads, bias=False
            )
            if residual_kernel
            else None
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, n, d = x.shape  # (B, L, d)
        qkv = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, L, dh)
        q, k, v = qkv[0] / math.sqrt(self.head_dim), qkv[1], qkv[2]  # (B, H, L, dh) each
        first_logits = (q[:, :, :1] @ k.transpose(-1, -2)).squeeze(2)  # (B, H, L)
        if n <= self.n_landmarks:
            out = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v  # (B, H, L, dh)
        else:
            m = self.n_landmarks
            segment = torch.arange(n, device=x.device) * m // n  # (L,) contiguous segments, none empty
            count = torch.bincount(segment, minlength=m).to(q.dtype)[:, None]  # (m, 1)
            q_land = q.new_zeros(b, self.n_heads, m, self.head_dim).index_add_(2, segment, q) / count  # (B,H,m,dh)
            k_land = k.new_zeros(b, self.n_heads, m, self.head_dim).index_add_(2, segment, k) / count  # (B,H,m,dh)
            kernel_1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1)  # (B, H, L, m)
            kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)  # (B, H, m, m)
            kernel_3 = torch.softmax(q_land @ k.transpose(-1, -2), dim=-1)  # (B, H, m, L)
            out = (kernel_1 @ iterative_pinv(kernel_2, self.pinv_iterations)) @ (kernel_3 @ v)  # (B, H, L, dh)
        if self.value_conv is not None:
            out = out + self.value_conv(v)  # (B, H, L, dh)
        out = out.transpose(1, 2).reshape(b, n, d)  # (B, L, d)
        return self.out(out), first_logits


class TransLayer(nn.Module):
    """``x + NystromAttention(LayerNorm(x))`` (TransMIL's layer has no feed-forward block)."""

    def __init__(self, dim: int, n_heads: int, n_landmarks: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = NystromAttention(dim, n_heads, n_landmarks, dropout=dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out, first_logits = self.attention(self.norm(x))  # (B, L, d), (B, H, L)
        return x + out, first_logits


class PPEG(nn.Module):
    """Pyramid position encoding generator: the instances (after the class token) laid row-major on a
    ``side x side`` square, plus their 7x7, 5x5 and 3x3 depthwise convolutions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, x: Tensor, side: int) -> Tensor:
        b, _, d = x.shape  # (B, 1 + side^2, d)
        cls_token, grid = x[:, :1], x[:, 1:].transpose(1, 2).reshape(b, d, side, side)  # (B,1,d), (B,d,s,s)
        grid = grid + sum(conv(grid) for conv in self.convs)  # (B, d, s, s)
        return torch.cat([cls_token, grid.flatten(2).transpose(1, 2)], dim=1)  # (B, 1 + side^2, d)


class TransMIL(nn.Module):
    """TransMIL.

    Parameters
    ----------
    in_dim, n_classes
        Instance embedding dimension D and number of classes C.
    hidden_dim
        Width d after the first layer; default from ``default_hidden_dim(in_dim)`` (paper: 512).
    n_heads
        Attention heads (8); each has width d / n_heads.
    n_landmarks
        Nystrom landmarks; default d / 2 (256 for the paper's d = 512).
    dropout
        Dropout after each attention output (0.1).
    """

    n_tokens = 0  # no branch tokens: token dropping does not apply, instance dropping does

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int | None = None,
        n_heads: int = 8,
        n_landmarks: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        hidden_dim = hidden_dim or default_hidden_dim(in_dim)
        n_landmarks = n_landmarks or max(1, hidden_dim // 2)
        self.in_dim, self.n_classes = in_dim, n_classes
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden_dim))
        self.layer1 = TransLayer(hidden_dim, n_heads, n_landmarks, dropout)
        self.ppeg = PPEG(hidden_dim)
        self.layer2 = TransLayer(hidden_dim, n_heads, n_landmarks, dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(self, x: Tensor, keep_tokens: Tensor | None = None) -> MILOutput:
        if keep_tokens is not None:
            raise ValueError("TransMIL has no branch tokens to drop; use instance dropping")
        x = as_bag(x)  # (B, N, D)
        b, n, _ = x.shape
        h = self.fc(x)  # (B, N, d)
        side = math.ceil(math.sqrt(n))
        # Fill the square by repeating the first instances (as the authors do); they are not in the attention output.
        fill = torch.arange(side * side - n, device=x.device) % n
        h = torch.cat([self.cls_token.expand(b, -1, -1), h, h[:, fill]], dim=1)  # (B, 1 + side^2, d)
        h, _ = self.layer1(h)  # (B, 1 + side^2, d)
        h = self.ppeg(h, side)  # (B, 1 + side^2, d)
        h, cls_logits = self.layer2(h)  # (B, 1 + side^2, d), (B, H, 1 + side^2)
        logits = self.classifier(self.norm(h)[:, 0])  # (B, C)
        return MILOutput(logits=logits, attention_logits=cls_logits[:, :, 1 : n + 1])  # (B, H, N)


def _create_transmil(in_dim: int, n_classes: int, **kwargs: Any) -> TransMIL:
    return TransMIL(in_dim=in_dim, n_classes=n_classes, **kwargs)


@register_model
def transmil(in_dim: int, n_classes: int, **kwargs: Any) -> TransMIL:
    """TransMIL: 2 Nystrom attention layers (8 heads, d/2 landmarks) with PPEG (Shao et al. 2021)."""
    return _create_transmil(in_dim, n_classes, **kwargs)
