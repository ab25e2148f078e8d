"""ASMIL's components as training-loop plug-ins, usable with every registered model.

- ``sigmax`` and ``anchor_loss``: the normalised-sigmoid target from an anchor's attention logits and the
  cross-entropy from it to the student's softmax attention.
- ``Anchor``: the anchor model, an EMA copy of the student (``ema``, the paper) or an independent random network
  never updated (``frozen``, what the released code effectively does).
- ``RandomDropping``: training-only dropping of ``n_drop`` branch tokens (models with ``n_tokens > 0``, e.g.
  ASMIL) or of ``n_drop`` random instances (any model); nothing is dropped at eval and nothing is rescaled.

Every model returns ``MILOutput.attention_logits`` ``(B, K, N)``, which is all these plug-ins need.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from ._base import MILOutput

__all__ = ["sigmax", "anchor_loss", "Anchor", "RandomDropping"]

AnchorMode = Literal["ema", "frozen"]
Reduction = Literal["sum", "mean"]
DropMode = Literal["none", "token", "instance"]


def sigmax(x: Tensor, tau: float = 1.0, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """Normalised sigmoid ``sigmoid(x_n / tau) / (sum_m sigmoid(x_m / tau) + eps)`` along ``dim``.

    Unlike softmax it is bounded by ``1 / (1 + (N - 1) * min sigmoid)`` for any logits, which keeps the target
    spread over the instances (ASMIL's remedy for over-concentrated attention).
    """
    s = torch.sigmoid(x / tau)
    return s / (s.sum(dim=dim, keepdim=True) + eps)


def anchor_loss(
    student_logits: Tensor, anchor_logits: Tensor, *, tau: float = 0.5, reduction: Reduction = "sum"
) -> Tensor:
    """``mean_{head,branch} ( -sum_n beta_n log alpha_n )``, beta = sigmax(anchor / tau), alpha = softmax(student).

    ``reduction="mean"`` averages over the instances instead of summing (the released code; 1/N smaller).
    Gradients flow only into ``student_logits``.
    """
    if student_logits.shape != anchor_logits.shape:
        raise ValueError(f"student and anchor attention differ: {student_logits.shape} vs {anchor_logits.shape}")
    beta = sigmax(anchor_logits.detach().float(), tau)  # (B, K, N)
    log_alpha = torch.log_softmax(student_logits.float(), dim=-1)  # (B, K, N)
    rows, n = beta.numel() // beta.shape[-1], beta.shape[-1]
    # One product and one sum over (B, K, N) (these are the largest tensors of the step after the bag itself).
    return -(beta * log_alpha).sum() / (rows if reduction == "sum" else rows * n)


class Anchor:
    """The anchor model of ASMIL: gives the attention target, never trained by gradients.

    Parameters
    ----------
    student
        The model being trained.
    mode
        ``"ema"``: a deepcopy of the student at initialisation, updated after every optimiser step by
        ``theta_a <- m theta_a + (1 - m) theta``. ``"frozen"``: an independent randomly initialised network built
        by ``rebuild`` and never updated.
    momentum, tau, weight, reduction
        EMA momentum m, sigmax temperature, loss weight lambda and reduction over instances.
    rebuild
        Builds a fresh model of the student's architecture (needed for ``"frozen"``).
    """

    def __init__(
        self,
        student: nn.Module,
        *,
        mode: AnchorMode = "ema",
        momentum: float = 0.999,
        tau: float = 0.5,
        weight: float = 1.0,
        reduction: Reduction = "sum",
        rebuild: Callable[[], nn.Module] | None = None,
    ) -> None:
        if mode not in ("ema", "frozen"):
            raise ValueError(f"anchor mode {mode!r} is not one of 'ema', 'frozen'")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"anchor reduction {reduction!r} is not one of 'sum', 'mean'")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"anchor momentum must be in [0, 1], got {momentum}")
        if mode == "frozen":
            if rebuild is None:
                raise ValueError("a frozen anchor needs `rebuild` to make an independent random network")
            model = rebuild()
        else:
            model = copy.deepcopy(student)
        param = next(student.parameters())
        self.model = model.to(device=param.device).requires_grad_(False).eval()
        self.mode, self.momentum, self.tau, self.weight, self.reduction = mode, momentum, tau, weight, reduction
        self._anchor_params = list(self.model.parameters())

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step towards the student's weights (a no-op for a frozen anchor)."""
        if self.mode != "ema":
            return
        student_params = [p.detach() for p in student.parameters()]
        torch._foreach_lerp_(self._anchor_params, student_params, 1.0 - self.momentum)
        for buf_a, buf_s in zip(self.model.buffers(), student.buffers(), strict=True):
            buf_a.copy_(buf_s)

    def loss(self, bag: Tensor, student_out: MILOutput) -> Tensor:
        """``lambda * L_anc`` for one bag, with the anchor run in eval mode on the same (possibly dropped) bag.

        Models with an ``attention_logits(bag)`` method (ASMIL) compute only the logits for the anchor, not the
        pooling and classification the loss does not use."""
        with torch.no_grad():
            logits_only = getattr(self.model, "attention_logits", None)
            target = logits_only(bag) if callable(logits_only) else self.model(bag).attention_logits  # (B, K, N)
        return self.weight * anchor_loss(student_out.attention_logits, target, tau=self.tau, reduction=self.reduction)


class RandomDropping:
    """Training-only random dropping of branch tokens or instances; nothing is dropped in eval.

    Parameters
    ----------
    mode
        ``"token"``: keep ``n_tokens - n_drop`` of the model's branch tokens, drawn uniformly without replacement
        each step (models with ``n_tokens > 0``). ``"instance"``: drop ``n_drop`` random instances of the bag
        (every model; at least one instance is kept). ``"none"``: off.
    n_drop
        How many tokens or instances to drop per step.
    generator
        Torch generator for the draws (seeded by the training loop for reproducibility).
    """

    def __init__(self, mode: DropMode = "token", n_drop: int = 10, generator: torch.Generator | None = None) -> None:
        if mode not in ("none", "token", "instance"):
            raise ValueError(f"dropping mode {mode!r} is not one of 'none', 'token', 'instance'")
        if n_drop < 0:
            raise ValueError(f"n_drop must be >= 0, got {n_drop}")
        self.mode, self.n_drop, self.generator = mode, n_drop, generator

    def check(self, model: nn.Module) -> None:
        """Raise ``ValueError`` when the model cannot use this mode (token dropping without enough tokens)."""
        if self.mode == "token":
            n_tokens = int(getattr(model, "n_tokens", 0) or 0)
            if n_tokens <= self.n_drop:
                name = getattr(model, "model_name", type(model).__name__)
                raise ValueError(
                    f"token dropping needs more than n_drop={self.n_drop} branch tokens; {name} has {n_tokens}; "
                    "use drop=instance or a smaller n_drop"
                )

    def keep_tokens(self, n_tokens: int) -> Tensor:
        """Sorted indices of the ``n_tokens - n_drop`` tokens kept this step."""
        perm = torch.randperm(n_tokens, generator=self.generator)
        return perm[: n_tokens - self.n_drop].sort().values

    def __call__(self, model: nn.Module, bag: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(bag, keep_tokens)`` for one forward: the bag minus dropped instances and the token indices to keep
        (None when not token dropping). Identity when the model is in eval mode."""
        if not model.training or self.mode == "none" or self.n_drop == 0:
            return bag, None
        if self.mode == "token":
            return bag, self.keep_tokens(int(model.n_tokens)).to(bag.device)
        n = bag.shape[-2]
        n_keep = max(1, n - self.n_drop)
        if n_keep >= n:
            return bag, None
        keep = torch.randperm(n, generator=self.generator)[:n_keep].sort().values.to(bag.device)
        return bag.index_select(-2, keep), None
