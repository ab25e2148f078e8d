"""One epoch of a fold: training a model on its bags (``train_epoch``), scoring it on a list of slides
(``evaluate``), and the fold's log lines and CSV rows. ``train_fold`` (``_train.py``) and the tasks (``_tasks.py``)
both use them."""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..files import atomic_write_text
from ..mil import Anchor, RandomDropping
from ._bags import BagLoader
from ._localisation import bag_localisation, mean_localisation
from ._metrics import classification_metrics

__all__ = [
    "Evaluation",
    "add_terms",
    "bag_localisation_all",
    "bag_loss_terms",
    "evaluate",
    "optimiser_step",
    "train_epoch",
]

log = logging.getLogger("wsi_pipeline.training._train")  # the name users filter on
# Progress lines of a run always go to its train.log; they reach the console only at -v (through ``log``).
run_log = logging.getLogger("wsi_pipeline.training.run")
run_log.propagate = False
run_log.setLevel(logging.INFO)


def _note(message: str, *args: Any) -> None:
    log.info(message, *args)
    run_log.info(message, *args)


class Evaluation(NamedTuple):
    """A model on a list of slides: class probabilities ``(S, C)``, their float64 log-softmax ``(S, C)`` (what a
    temperature divides), the mean CE loss (NaN without labels) and each slide's attention ``(N,)``."""

    probs: np.ndarray
    loss: float
    attention: dict[str, np.ndarray]
    log_probs: np.ndarray
    outputs: np.ndarray  # (S, K) the raw outputs, float64 (a survival head's log-risk or hazard logits)


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: BagLoader, slide_ids: list[str], labels: dict[str, int] | None = None
) -> Evaluation:
    """The model on ``slide_ids`` (see ``Evaluation``)."""
    model.eval()
    probs, log_probs, outputs, losses, attention = [], [], [], [], {}
    for sid, bag in loader.iterate(slide_ids):
        out = model(bag)
        probs.append(torch.softmax(out.logits.float(), dim=-1)[0])  # (C,)
        log_probs.append(torch.log_softmax(out.logits.double(), dim=-1)[0])  # (C,)
        outputs.append(out.logits.double()[0])  # (C,)
        if labels is not None:
            target = torch.tensor([labels[sid]], device=bag.device)
            losses.append(F.cross_entropy(out.logits.float(), target))
        attention[sid] = out.attention()[0]  # (N,)
    if not probs:
        return Evaluation(np.zeros((0, 0)), math.nan, {}, np.zeros((0, 0)), np.zeros((0, 0)))
    probs_np = torch.stack(probs).cpu().numpy()
    loss = float(torch.stack(losses).mean()) if losses else math.nan
    attention_np = {sid: a.cpu().numpy() for sid, a in attention.items()}
    stacked = [torch.stack(rows).cpu().numpy() for rows in (log_probs, outputs)]
    return Evaluation(probs_np, loss, attention_np, *stacked)


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """A CSV of ``rows`` (columns: every key in order of first appearance), quoted by the csv module, atomic."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _fmt(row.get(k, "")) for k in keys} for row in rows)
    atomic_write_text(path, buffer.getvalue())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def bag_loss_terms(
    model: nn.Module,
    bag: torch.Tensor,
    target: torch.Tensor,
    *,
    keep_tokens: torch.Tensor | None = None,
    anchor: Anchor | None = None,
    loss_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The loss terms of one training bag: ``cls`` (CE of the slide logits), ``branch`` (mean CE of per-branch
    logits, ACMIL), the model's own auxiliary losses (e.g. ``diversity``) and ``anchor``; the loss is their sum."""
    kwargs: dict[str, Any] = {} if keep_tokens is None else {"keep_tokens": keep_tokens}
    if getattr(model, "takes_label", False):
        kwargs["label"] = target  # models with an instance loss on pseudo-labels (CLAM-SB)
    out = model(bag, **kwargs)
    if loss_of is not None:  # several targets: the bag's own loss over its targets
        terms = {"cls": loss_of(out.logits)}
        if out.branch_logits is not None:
            branches = out.branch_logits.shape[1]
            terms["branch"] = torch.stack([loss_of(out.branch_logits[:, t]) for t in range(branches)]).mean()
    else:
        terms = {"cls": F.cross_entropy(out.logits, target)}
        if out.branch_logits is not None:
            n_branches = out.branch_logits.shape[1]
            terms["branch"] = F.cross_entropy(out.branch_logits.flatten(0, 1), target.expand(n_branches))
    terms.update(out.aux_losses)
    if anchor is not None:
        terms["anchor"] = anchor.loss(bag, out)
    return terms


def train_epoch(
    model: nn.Module,
    bags: Iterable[tuple[str, torch.Tensor]],
    targets: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    dropper: RandomDropping | None = None,
    anchor: Anchor | None = None,
    grad_clip: float | None = 5.0,
    loss_of: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """One pass over ``bags`` with batches of one bag (``loss_of(logits, slide_id)`` replaces the cross-entropy
    with ``targets`` for a run of several targets); returns each loss term summed over the bags, as tensors
    (no per-step sync; see ``bag_loss_terms``).

    The scheduler steps per iteration and the anchor follows the student after every optimiser step.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, torch.Tensor] = {}
    for sid, bag in bags:
        keep = None
        if dropper is not None:
            bag, keep = dropper(model, bag)  # (N', D), (T',) or None
        own = None if loss_of is None else (lambda logits, sid=sid: loss_of(logits, sid))
        terms = bag_loss_terms(model, bag, targets[sid], keep_tokens=keep, anchor=anchor, loss_of=own)
        optimiser_step(model, params, terms, optimizer, scheduler=scheduler, anchor=anchor, grad_clip=grad_clip)
        add_terms(sums, terms)
    return sums


def optimiser_step(
    model: nn.Module,
    params: list[nn.Parameter],
    terms: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    anchor: Anchor | None,
    grad_clip: float | None,
) -> None:
    """One step on the sum of the loss ``terms``: clip, step the optimiser and the per-iteration schedule, then let
    the anchor follow the student."""
    dtype = functools.reduce(torch.promote_types, (value.dtype for value in terms.values()))  # the widest term's
    loss = torch.stack([value.to(dtype) for value in terms.values()]).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if anchor is not None:
        anchor.update(model)


def add_terms(sums: dict[str, torch.Tensor], terms: dict[str, torch.Tensor]) -> None:
    """Add each loss term to its running sum, detached (no per-step sync with the device)."""
    for name, value in terms.items():
        sums[name] = sums[name] + value.detach() if name in sums else value.detach().clone()


def bag_localisation_all(loader: BagLoader, attention: dict[str, np.ndarray]) -> dict[str, dict[str, float] | None]:
    """Localisation of each bag's attention against its ``instance_labels`` (bags without any are left out)."""
    out = {}
    for sid, att in attention.items():
        labels = loader.instance_labels(sid)
        if labels is not None:
            out[sid] = bag_localisation(att, labels, loader.lesion_regions(sid))
    return out


def _score(
    model: nn.Module, loader: BagLoader, ids: list[str], y_of: dict[str, int], n_classes: int
) -> tuple[dict[str, Any], Evaluation, dict[str, dict[str, float] | None]]:
    """Metrics of ``ids`` (classification, loss and mean localisation), the evaluation they come from and per-bag
    localisation."""
    evaluation = evaluate(model, loader, ids, y_of)
    metrics = classification_metrics(np.array([y_of[s] for s in ids], dtype=np.int64), evaluation.probs, n_classes)
    metrics["loss"] = evaluation.loss
    per_bag = bag_localisation_all(loader, evaluation.attention)
    metrics.update(mean_localisation(per_bag.values()))
    return metrics, evaluation, per_bag
