"""CLAM-SB: clustering-constrained attention multiple instance learning, single attention branch.

Lu, Williamson, Chen, Chen, Barbieri, Mahmood, "Data-efficient and weakly supervised computational pathology on
whole-slide images", Nature Biomedical Engineering 2021 (arXiv 2004.09666). Gated attention pooling, plus an
instance-level clustering loss: the ``k`` most and ``k`` least attended instances of a slide are pseudo-labelled
positive and negative for the binary instance classifier of the slide's class (and, for subtyping, the most attended
ones negative for the other classes' classifiers).

Defaults as in the authors' code (mahmoodlab/CLAM, ``size_arg="small"``): fc D -> 512 + ReLU + dropout 0.25, gated
attention 512 -> 256 -> 1 with dropout 0.25 on both gates, k = 8 (``--B``), smooth top-1 SVM instance loss
(``--inst_loss svm`` in their training commands; ``ce`` is offered), total loss 0.7 bag + 0.3 instance
(``--bag_weight 0.7``). Here ``hidden_dim`` defaults to ``default_hidden_dim(D)`` like the other models (512 for
D >= 1024, the paper's) and the attention width to d / 2.

The instance loss needs the slide label: ``forward(x, label=y)`` adds it to ``aux_losses["instance"]``, weighted
0.3 / 0.7 so that with the bag cross-entropy at weight 1 the two keep CLAM's 0.7 : 0.3 ratio. Without a label the
model trains on the bag loss alone (and logs a warning once).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import MILOutput, as_bag, default_hidden_dim
from ._registry import register_model

__all__ = ["smooth_top1_svm_loss", "CLAMSB"]

log = logging.getLogger(__name__)

InstanceLoss = Literal["svm", "ce"]


def smooth_top1_svm_loss(logits: Tensor, target: Tensor, alpha: float = 1.0, tau: float = 1.0) -> Tensor:
    """Smooth top-1 SVM (Berrada, Zisserman, Kumar, ICLR 2018), mean over rows:
    ``tau * log sum_j exp((s_j + alpha [j != y] - s_y) / tau)``, a smoothed multi-class hinge with margin alpha."""
    margin = alpha * (1.0 - F.one_hot(target, logits.shape[-1]).to(logits.dtype))  # (M, 2)
    return tau * F.cross_entropy((logits + margin) / tau, target)


class CLAMSB(nn.Module):
    """CLAM with a single attention branch.

    Parameters
    ----------
    in_dim, n_classes
        Instance embedding dimension D and number of classes C.
    hidden_dim
        Width d after the first layer; default from ``default_hidden_dim(in_dim)`` (paper: 512).
    attn_dim
        Width of the gated attention; default d / 2 (paper: 256).
    dropout
        Dropout after the first layer and on both attention gates (0.25).
    k_sample
        Instances pseudo-labelled at each end of the attention ranking (8); at most half the bag.
    instance_loss
        ``"svm"`` (smooth top-1 SVM, alpha = tau = 1) or ``"ce"``.
    instance_weight
        Weight of the instance loss relative to the bag cross-entropy (0.3 / 0.7).
    subtyping
        Also push the most attended instances to negative for the other classes' classifiers (CLAM's
        ``--subtyping``, for tasks where every class is a positive class).
    """

    n_tokens = 0  # no branch tokens: token dropping does not apply, instance dropping does
    takes_label = True  # forward(x, label=y) in training adds the instance clustering loss

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int | None = None,
        attn_dim: int | None = None,
        dropout: float = 0.25,
        k_sample: int = 8,
        instance_loss: InstanceLoss = "svm",
        instance_weight: float = 0.3 / 0.7,
        subtyping: bool = False,
    ) -> None:
        super().__init__()
        if instance_loss not in ("svm", "ce"):
            raise ValueError(f"instance_loss {instance_loss!r} is not one of 'svm', 'ce'")
        if k_sample < 1:
            raise ValueError(f"k_sample must be >= 1, got {k_sample}")
        hidden_dim = hidden_dim or default_hidden_dim(in_dim)
        attn_dim = attn_dim or max(1, hidden_dim // 2)
        self.in_dim, self.n_classes = in_dim, n_classes
        self.k_sample, self.instance_loss, self.instance_weight = k_sample, instance_loss, instance_weight
        self.subtyping = subtyping
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attn_a = nn.Sequential(nn.Linear(hidden_dim, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.attn_b = nn.Sequential(nn.Linear(hidden_dim, attn_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.attn_c = nn.Linear(attn_dim, 1)
        self.classifier = nn.Linear(hidden_dim, n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden_dim, 2) for _ in range(n_classes))
        self._warned_no_label = False

    def _instance_criterion(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.instance_loss == "svm":
            return smooth_top1_svm_loss(logits, target)
        return F.cross_entropy(logits, target)

    def instance_clustering_loss(self, attn_logits: Tensor, h: Tensor, label: Tensor) -> Tensor:
        """CLAM's instance loss for one bag: ``attn_logits`` (N,), ``h`` (N, d), ``label`` () -> ().

        The ``k = min(k_sample, N // 2)`` most attended instances are positive and the ``k`` least attended negative
        for the classifier of class ``label``; with ``subtyping`` the most attended are also negative for every other
        class's classifier, and the terms are averaged over the classes. A bag of one instance gives 0.
        """
        k = min(self.k_sample, h.shape[0] // 2)
        if k == 0:
            return h.new_zeros(())
        top = attn_logits.topk(k).indices  # (k,)
        bottom = (-attn_logits).topk(k).indices  # (k,)
        y = int(label)
        ones, zeros = label.new_ones(k), label.new_zeros(k)
        pair = torch.cat([h[top], h[bottom]])  # (2k, d)
        loss = self._instance_criterion(self.instance_classifiers[y](pair), torch.cat([ones, zeros]).long())
        if not self.subtyping:
            return loss
        for c, classifier in enumerate(self.instance_classifiers):
            if c != y:
                loss = loss + self._instance_criterion(classifier(h[top]), zeros.long())
        return loss / self.n_classes

    def forward(self, x: Tensor, keep_tokens: Tensor | None = None, label: Tensor | None = None) -> MILOutput:
        if keep_tokens is not None:
            raise ValueError("CLAM-SB has no branch tokens to drop; use instance dropping")
        x = as_bag(x)  # (B, N, D)
        h = self.fc(x)  # (B, N, d)
        attn = self.attn_c(self.attn_a(h) * self.attn_b(h)).transpose(1, 2)  # (B, 1, N)
        pooled = torch.bmm(torch.softmax(attn, dim=-1), h).squeeze(1)  # (B, d)
        logits = self.classifier(pooled)  # (B, C)
        aux: dict[str, Tensor] = {}
        if self.training and self.instance_weight:
            if label is None:
                if not self._warned_no_label:
                    log.warning(
                        "clam_sb: no slide label passed to forward(), so the instance clustering loss is off "
                        "(pass label=...)"
                    )
                    self._warned_no_label = True
            else:
                labels = label.reshape(-1).expand(x.shape[0])  # (B,)
                per_bag = [self.instance_clustering_loss(attn[i, 0], h[i], labels[i]) for i in range(x.shape[0])]
                aux["instance"] = self.instance_weight * torch.stack(per_bag).mean()  # ()
        return MILOutput(logits=logits, attention_logits=attn, aux_losses=aux)


def _create_clam(in_dim: int, n_classes: int, **kwargs: Any) -> CLAMSB:
    return CLAMSB(in_dim=in_dim, n_classes=n_classes, **kwargs)


@register_model
def clam_sb(in_dim: int, n_classes: int, **kwargs: Any) -> CLAMSB:
    """CLAM-SB: gated attention, instance clustering on the top/bottom 8 instances, 0.7 : 0.3 (Lu et al. 2021)."""
    return _create_clam(in_dim, n_classes, **kwargs)
