"""What every MIL model shares: its output type, the bag-shape check and the default hidden width."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["MILOutput", "as_bag", "default_hidden_dim"]


@dataclass
class MILOutput:
    """The output of every registered MIL model.

    Attributes
    ----------
    logits
        ``(B, C)`` slide logits.
    attention_logits
        ``(B, K, N)`` instance-attention logits before softmax, one row per head/branch (K = 1 for ABMIL,
        T for ACMIL, T x heads for ASMIL). Never masked, so the anchor loss and the heatmaps can read them.
    branch_logits
        ``(B, T, C)`` per-branch logits for models that train each branch on the slide label (ACMIL), else None.
    aux_losses
        Extra scalar losses the model adds in training (e.g. ACMIL's diversity loss), already weighted.

    A model whose training loss needs the slide label (CLAM-SB's instance clustering) sets the class attribute
    ``takes_label = True``; the training loop then calls ``model(bag, label=y)``.
    """

    logits: Tensor
    attention_logits: Tensor
    branch_logits: Tensor | None = None
    aux_losses: dict[str, Tensor] = field(default_factory=dict)

    def attention(self) -> Tensor:
        """``(B, N)`` attention distribution: softmax over instances, averaged over heads and branches."""
        return torch.softmax(self.attention_logits.float(), dim=-1).mean(dim=1)


def as_bag(x: Tensor) -> Tensor:
    """A bag as ``(B, N, D)``: accepts ``(N, D)`` (one bag) or ``(B, N, D)``; anything else is an error."""
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() == 3:
        return x
    raise ValueError(f"a bag must be (N, D) or (B, N, D), got shape {tuple(x.shape)}")


def default_hidden_dim(in_dim: int) -> int:
    """The hidden width d for input dimension D (docs/asmil.md): 128 up to 384, 256 below 1024, else 512."""
    if in_dim <= 384:
        return 128
    if in_dim < 1024:
        return 256
    return 512
