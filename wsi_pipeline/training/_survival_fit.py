"""Training and scoring a MIL model for survival: the fold's survival head, an epoch of mini-batches of slides, and
a set of slides' risks and measures. The losses and measures themselves are in ``_survival``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..mil import Anchor, RandomDropping
from ._config import SurvivalSettings
from ._epoch import add_terms, optimiser_step
from ._survival import (
    BaselineHazard,
    bin_edges,
    bin_survival,
    concordance_harrell,
    concordance_uno,
    cox_loss,
    cumulative_dynamic_auc,
    discrete_survival,
    discrete_time_nll,
    integrated_brier_score,
    logrank_test,
    time_bin,
)

__all__ = ["SURVIVAL_KEYS", "SurvivalHead", "risk_groups", "survival_epoch"]

SURVIVAL_KEYS = ("loss", "c_index", "c_index_uno", "td_auc", "ibs")


@dataclass
class SurvivalHead:
    """What a fold's survival model needs beyond its weights, fitted on the fold's training slides: the loss, the
    time bins (``nll``), the baseline hazard (``cox``, after training), the median training risk that splits risk
    groups, and the times the measures are taken at. Saved in the checkpoint (``as_dict``) for predict."""

    loss: str
    train_time: np.ndarray
    train_event: np.ndarray
    edges: np.ndarray  # inner bin edges (nll); also where the survival curves are read
    baseline: BaselineHazard | None = None
    risk_cutoff: float = 0.0

    @classmethod
    def create(cls, settings: SurvivalSettings, time: np.ndarray, event: np.ndarray) -> SurvivalHead:
        return cls(settings.loss, time, event, bin_edges(time, event, settings.time_bins))

    @property
    def n_outputs(self) -> int:
        return 1 if self.loss == "cox" else len(self.edges) + 1

    # ---------------------------------------------------------------- outputs -> risk and survival
    def risk(self, outputs: np.ndarray) -> np.ndarray:
        """A risk score per slide (higher = earlier event): the log-risk (cox), or minus the expected number of
        bins survived (nll)."""
        outputs = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
        if self.loss == "cox":
            return outputs[:, 0]
        return -bin_survival(outputs).sum(axis=1)  # the expected number of bins survived, negated

    def survival(self, outputs: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Survival curves ``(S, T)`` at times ``at``."""
        outputs = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
        if self.loss == "cox":
            assert self.baseline is not None, "fit the baseline hazard first (finish)"
            return self.baseline.survival(outputs[:, 0], at)
        return discrete_survival(outputs, self.edges, at)

    def finish(self, train_outputs: np.ndarray) -> None:
        """After training: Breslow's baseline (cox) and the median risk on the training slides."""
        risk = self.risk(train_outputs)
        if self.loss == "cox":
            self.baseline = BaselineHazard.fit(risk, self.train_time, self.train_event)
        self.risk_cutoff = float(np.median(risk))

    # ---------------------------------------------------------------- training
    def loss_of(self, outputs: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
        """The survival loss of outputs ``(B, K)`` of a batch of slides."""
        if self.loss == "cox":
            return cox_loss(outputs[:, 0], time, event)
        bins = torch.as_tensor(time_bin(time.cpu().numpy(), self.edges), device=outputs.device)
        return discrete_time_nll(outputs, bins, event)

    # ---------------------------------------------------------------- measures
    def eval_times(self) -> np.ndarray:
        """Where td-AUC is read: the quartiles of the training slides' event times."""
        events = self.train_time[self.train_event.astype(bool)]
        return np.quantile(events, [0.25, 0.5, 0.75]) if len(events) else np.zeros(0)

    def metrics(self, outputs: np.ndarray, time: np.ndarray, event: np.ndarray) -> dict[str, Any]:
        """Harrell's and Uno's C-index, the mean cumulative/dynamic AUC at ``eval_times`` and the integrated Brier
        score between the 10th and 90th percentile of the training times (NaN where the slides allow none)."""
        event = np.asarray(event, dtype=bool)
        out: dict[str, Any] = {"n": len(time), "events": int(event.sum())}
        if not len(time):
            return {**out, **{k: math.nan for k in SURVIVAL_KEYS[1:]}}
        risk = self.risk(outputs)
        train = (self.train_time, self.train_event.astype(bool))
        out["c_index"] = concordance_harrell(time, event, risk)
        lo, hi = np.quantile(self.train_time, [0.1, 0.9])
        try:
            out["c_index_uno"] = concordance_uno(train, time, event, risk, tau=float(hi))
            aucs = cumulative_dynamic_auc(train, time, event, risk, self.eval_times())
            out["td_auc"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else math.nan
        except ValueError:  # an event after the training follow-up: its censoring weight is unknown
            out["c_index_uno"] = out["td_auc"] = math.nan
        grid = np.linspace(lo, hi, 20)
        if self.loss == "cox" and self.baseline is None:  # during training: no baseline hazard yet
            out["ibs"] = math.nan
            return out
        try:
            out["ibs"] = integrated_brier_score(train, time, event, self.survival(outputs, grid), grid)
        except ValueError:
            out["ibs"] = math.nan
        return out

    # ---------------------------------------------------------------- checkpoint
    def as_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "edges": self.edges.tolist(),
            "risk_cutoff": self.risk_cutoff,
            "baseline": None
            if self.baseline is None
            else {"times": self.baseline.times.tolist(), "cumulative": self.baseline.cumulative.tolist()},
            "train_time": self.train_time.tolist(),
            "train_event": self.train_event.astype(int).tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SurvivalHead:
        baseline = data.get("baseline")
        return cls(
            data["loss"],
            np.asarray(data["train_time"], dtype=np.float64),
            np.asarray(data["train_event"], dtype=np.int64),
            np.asarray(data["edges"], dtype=np.float64),
            None
            if baseline is None
            else BaselineHazard(np.asarray(baseline["times"]), np.asarray(baseline["cumulative"])),
            float(data.get("risk_cutoff", 0.0)),
        )


def _batches(bags: Iterable[tuple[str, torch.Tensor]], size: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    batch: list[tuple[str, torch.Tensor]] = []
    for item in bags:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def survival_epoch(
    model: nn.Module,
    head: SurvivalHead,
    bags: Iterable[tuple[str, torch.Tensor]],
    follow_up: dict[str, tuple[float, int]],
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    dropper: RandomDropping | None = None,
    anchor: Anchor | None = None,
    grad_clip: float | None = 5.0,
) -> dict[str, torch.Tensor]:
    """One pass over ``bags`` in mini-batches of ``batch_size`` slides (one optimiser step each); returns each
    loss term summed over the batches (``surv``; ``branch``, the same loss on each branch's outputs, for ACMIL and
    ASMIL; the models' own auxiliary losses and the anchor loss averaged over a batch's slides)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, torch.Tensor] = {}
    for batch in _batches(bags, batch_size):
        outputs, branches, per_bag = [], [], {}
        for _sid, bag in batch:
            kwargs: dict[str, Any] = {}
            if dropper is not None:
                bag, keep = dropper(model, bag)  # (N', D), (T',) or None
                if keep is not None:
                    kwargs["keep_tokens"] = keep
            out = model(bag, **kwargs)
            outputs.append(out.logits)  # (1, K)
            if out.branch_logits is not None:
                branches.append(out.branch_logits)  # (1, T, K)
            extra = dict(out.aux_losses)
            if anchor is not None:
                extra["anchor"] = anchor.loss(bag, out)
            for name, value in extra.items():
                per_bag[name] = per_bag[name] + value if name in per_bag else value
        device = outputs[0].device
        time = torch.tensor([follow_up[sid][0] for sid, _ in batch], dtype=torch.float64, device=device)
        event = torch.tensor([follow_up[sid][1] for sid, _ in batch], dtype=torch.float64, device=device)
        logits = torch.cat(outputs).double()  # (B, K)
        terms = {"surv": head.loss_of(logits, time, event)}
        if branches:
            stacked = torch.cat(branches).double()  # (B, T, K)
            terms["branch"] = torch.stack(
                [head.loss_of(stacked[:, t], time, event) for t in range(stacked.shape[1])]
            ).mean()
        terms.update({name: value / len(batch) for name, value in per_bag.items()})
        optimiser_step(model, params, terms, optimizer, scheduler=scheduler, anchor=anchor, grad_clip=grad_clip)
        add_terms(sums, terms)
    return sums


def risk_groups(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> dict[str, Any]:
    """Slides split into high and low predicted risk (``risk`` already centred at each model's median training
    risk, so > 0 is high): Harrell's C-index of the pooled risks and the log-rank test between the groups."""
    time, event, risk = np.asarray(time, dtype=np.float64), np.asarray(event, dtype=bool), np.asarray(risk)
    group = np.where(risk > 0, "high", "low")
    statistic, p_value = logrank_test(time, event, group)
    return {
        "slides": len(time),
        "events": int(event.sum()),
        "c_index": concordance_harrell(time, event, risk),
        "groups": {g: int((group == g).sum()) for g in ("high", "low")},
        "logrank_chi2": statistic,
        "logrank_p": p_value,
    }
