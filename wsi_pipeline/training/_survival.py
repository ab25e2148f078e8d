"""Survival: the losses a MIL model learns a slide's risk with, and the measures a risk is judged by.

Two heads, chosen by ``survival_loss``:

* ``cox``: one output per slide, its log relative risk, trained with the Cox partial likelihood (Breslow's handling
  of tied times) over a mini-batch of slides, since a risk means something only against the slides still at risk.
  Survival curves come from Breslow's baseline cumulative hazard, estimated on the training slides.
* ``nll``: one output per time bin, the logit of the hazard in that bin (discrete-time survival, the loss of
  Zadeh & Schmid 2021 and Chen et al.'s Patch-GCN/MCAT): the negative log-likelihood of each slide's observed
  bin and event, with the bins' edges at quantiles of the training slides' event times. Its risk score is the
  negative expected number of bins survived.

Measures (the definitions scikit-survival uses, so the numbers compare; tests check them against it):
Harrell's C-index; Uno's C-index (weighted by the inverse probability of censoring, the censoring distribution
estimated on the training slides); the cumulative/dynamic AUC at given times; and the integrated Brier score of the
predicted survival curves (Graf's inverse-probability-of-censoring weights). Plus the Kaplan-Meier estimator and the
log-rank test used for risk groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

__all__ = [
    "BaselineHazard",
    "bin_edges",
    "censoring_survival",
    "concordance_harrell",
    "concordance_uno",
    "cox_loss",
    "cumulative_dynamic_auc",
    "discrete_time_nll",
    "integrated_brier_score",
    "kaplan_meier",
    "logrank_test",
    "time_bin",
]


# --------------------------------------------------------------------------------------------- losses
def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow ties) of log-risks ``risk`` (B,), mean over the events.

    Each slide with an event is compared with every slide still at risk at its time (``time_j >= time_i``); a
    batch without an event has no information and gives 0 (with a gradient of 0).
    """
    risk, time, event = risk.reshape(-1), time.reshape(-1), event.reshape(-1).to(risk.dtype)
    at_risk = time.unsqueeze(0) >= time.unsqueeze(1)  # (B, B): row i, the slides at risk when i has its event
    log_risk_set = torch.logsumexp(risk.unsqueeze(0).masked_fill(~at_risk, float("-inf")), dim=1)  # (B,)
    n_events = event.sum()
    return -((risk - log_risk_set) * event).sum() / n_events.clamp(min=1.0)


def discrete_time_nll(hazard_logits: torch.Tensor, bins: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Discrete-time survival NLL of hazard logits ``(B, K)``: a slide with an event in bin k survived bins < k and
    died in k; a slide censored in bin k survived bins < k and is known to have lived through k too (the common
    convention: censoring at the end of its bin). Mean over slides."""
    bins, event = bins.reshape(-1).long(), event.reshape(-1).to(hazard_logits.dtype)
    log_h = F.logsigmoid(hazard_logits)  # log h_k
    log_1mh = F.logsigmoid(-hazard_logits)  # log (1 - h_k)
    k = torch.arange(hazard_logits.shape[1], device=hazard_logits.device)
    before = (k.unsqueeze(0) < bins.unsqueeze(1)).to(log_h.dtype)  # (B, K): bins survived
    survived_before = (log_1mh * before).sum(1)
    in_bin = log_h.gather(1, bins.unsqueeze(1)).squeeze(1)
    survived_bin = log_1mh.gather(1, bins.unsqueeze(1)).squeeze(1)
    return -(survived_before + event * in_bin + (1 - event) * survived_bin).mean()


def bin_edges(time: np.ndarray, event: np.ndarray, n_bins: int) -> np.ndarray:
    """``n_bins - 1`` inner edges at quantiles of the event times (all times when there are too few events)."""
    times = np.asarray(time, dtype=np.float64)[np.asarray(event, dtype=bool)]
    if len(times) < n_bins:
        times = np.asarray(time, dtype=np.float64)
    return np.quantile(times, np.linspace(0, 1, n_bins + 1)[1:-1])


def time_bin(time: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each time: 0 below the first edge, ..., ``len(edges)`` from the last edge on."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(time, dtype=np.float64), side="right")


# --------------------------------------------------------------------------------------------- survival curves
@dataclass(frozen=True)
class BaselineHazard:
    """Breslow's baseline cumulative hazard H0 at the training slides' distinct event times: a Cox model's survival
    for a slide of log-risk r is ``S(t) = exp(-H0(t) exp(r))``."""

    times: np.ndarray
    cumulative: np.ndarray

    @classmethod
    def fit(cls, risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> BaselineHazard:
        risk, time = np.asarray(risk, dtype=np.float64), np.asarray(time, dtype=np.float64)
        event = np.asarray(event, dtype=bool)
        times = np.unique(time[event])
        exp_risk = np.exp(risk - risk.max())  # shifted for overflow; undone below
        steps = [event[time == t].sum() / exp_risk[time >= t].sum() for t in times]
        return cls(times, np.cumsum(steps) * math.exp(-risk.max()))

    def survival(self, risk: np.ndarray, at: np.ndarray) -> np.ndarray:
        """``S(t | r)`` for log-risks ``risk`` (S,) at times ``at`` (T,): (S, T)."""
        index = np.searchsorted(self.times, np.asarray(at, dtype=np.float64), side="right") - 1
        h0 = np.where(index >= 0, self.cumulative[np.clip(index, 0, None)] if len(self.times) else 0.0, 0.0)
        return np.exp(-np.outer(np.exp(np.asarray(risk, dtype=np.float64)), h0))


def bin_survival(hazard_logits: np.ndarray) -> np.ndarray:
    """``(S, K)``: the probability of surviving through each time bin, the product of (1 - h) up to it."""
    hazard = 1.0 / (1.0 + np.exp(-np.asarray(hazard_logits, dtype=np.float64)))
    return np.cumprod(1.0 - hazard, axis=1)


def discrete_survival(hazard_logits: np.ndarray, edges: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Survival ``(S, T)`` at times ``at`` from hazard logits ``(S, K)``: the product of (1 - h) over the bins ended
    by then (a step function that drops at each bin's end)."""
    survival = bin_survival(hazard_logits)  # (S, K): survived through bin k
    ended = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(at, dtype=np.float64), side="right")
    padded = np.concatenate([np.ones((len(survival), 1)), survival], axis=1)
    return padded[:, ended]


# --------------------------------------------------------------------------------------------- estimators
def kaplan_meier(time: np.ndarray, event: np.ndarray, *, reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier survival ``(times, S)`` at the distinct times; ``reverse``: the censoring distribution, where
    at a tied time the events leave the risk set first (so censoring at an event's time happens after it)."""
    time, event = np.asarray(time, dtype=np.float64), np.asarray(event, dtype=bool)
    times = np.unique(time)
    at_risk = np.array([(time >= t).sum() for t in times], dtype=np.float64)
    deaths = np.array([(event & (time == t)).sum() for t in times], dtype=np.float64)
    if reverse:
        censored = np.array([(~event & (time == t)).sum() for t in times], dtype=np.float64)
        denominator = at_risk - deaths
        factor = np.where(denominator > 0, 1.0 - censored / np.where(denominator > 0, denominator, 1.0), 1.0)
    else:
        factor = 1.0 - deaths / at_risk
    return times, np.cumprod(factor)


def censoring_survival(train_time: np.ndarray, train_event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """G: the probability of being still uncensored, as a step function ``(times, G)`` from the training slides."""
    times, g = kaplan_meier(train_time, train_event, reverse=True)
    return np.r_[-np.inf, times], np.r_[1.0, g]


def _step(times: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    return values[np.searchsorted(times, np.asarray(at, dtype=np.float64), side="right") - 1]


def _ipcw(train: tuple[np.ndarray, np.ndarray], time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """1 / G(t_i) for the slides with an event, 0 for the censored ones."""
    g = _step(*censoring_survival(*train), time)
    if np.any(g[event] <= 0):
        raise ValueError("the censoring survival is 0 at an event time: use times within the training follow-up")
    return np.where(event, 1.0 / np.where(g > 0, g, 1.0), 0.0)


# --------------------------------------------------------------------------------------------- measures
def _concordance(time: np.ndarray, event: np.ndarray, risk: np.ndarray, weights: np.ndarray) -> float:
    """Weighted concordance: over each slide i with an event and each slide j known to live longer (``t_j > t_i``,
    or censored at ``t_i``), whether i has the higher risk (ties count half). NaN without such a pair."""
    time, risk = np.asarray(time, dtype=np.float64), np.asarray(risk, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    numerator = denominator = 0.0
    for i in np.flatnonzero(event):
        comparable = (time > time[i]) | ((time == time[i]) & ~event)
        if not comparable.any():
            continue
        tied = np.abs(risk[comparable] - risk[i]) <= 1e-8
        numerator += weights[i] * ((risk[comparable] < risk[i]) & ~tied).sum() + 0.5 * weights[i] * tied.sum()
        denominator += weights[i] * comparable.sum()
    return float(numerator / denominator) if denominator > 0 else math.nan


def concordance_harrell(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index of risk scores (higher = earlier event expected)."""
    return _concordance(time, event, risk, np.ones(len(np.asarray(time))))


def concordance_uno(
    train: tuple[np.ndarray, np.ndarray], time: np.ndarray, event: np.ndarray, risk: np.ndarray, tau: float | None
) -> float:
    """Uno's C-index: Harrell's pairs weighted by 1 / G(t_i)^2 (G from ``train`` = (times, events)), over event
    times before ``tau``; less dependent on the censoring than Harrell's."""
    time, event = np.asarray(time, dtype=np.float64), np.asarray(event, dtype=bool)
    keep = np.ones(len(time), dtype=bool) if tau is None else time < tau
    weights = np.zeros(len(time))
    weights[keep] = _ipcw(train, time[keep], event[keep]) ** 2
    return _concordance(time, event, risk, weights)


def cumulative_dynamic_auc(
    train: tuple[np.ndarray, np.ndarray], time: np.ndarray, event: np.ndarray, risk: np.ndarray, at: Sequence[float]
) -> np.ndarray:
    """AUC(t) at each time of ``at``: cases had their event by t (weighted 1 / G(t_i)), controls live past t; the
    probability that a case has the higher risk (ties count half)."""
    time, event = np.asarray(time, dtype=np.float64), np.asarray(event, dtype=bool)
    risk, weights = np.asarray(risk, dtype=np.float64), _ipcw(train, time, event)
    out = []
    for t in at:
        cases, controls = (time <= t) & event, time > t
        if not cases.any() or not controls.any():
            out.append(math.nan)
            continue
        diff = risk[cases][:, None] - risk[controls][None, :]
        wins = (diff > 1e-8) + 0.5 * (np.abs(diff) <= 1e-8)
        out.append(float((weights[cases][:, None] * wins).sum() / (weights[cases].sum() * controls.sum())))
    return np.array(out)


def integrated_brier_score(
    train: tuple[np.ndarray, np.ndarray], time: np.ndarray, event: np.ndarray, survival: np.ndarray, at: np.ndarray
) -> float:
    """The Brier score of predicted survival ``(S, T)`` at times ``at`` (Graf's IPCW: a slide that died by t counts
    with 1 / G(t_i), one alive after t with 1 / G(t), one censored before t not at all), integrated over ``at`` by
    the trapezoid rule and divided by its span. 0 is perfect, 0.25 what S = 0.5 everywhere scores."""
    time, event = np.asarray(time, dtype=np.float64), np.asarray(event, dtype=bool)
    at = np.asarray(at, dtype=np.float64)
    cens_times, g = censoring_survival(*train)
    g_i = _step(cens_times, g, time)
    scores = []
    for k, t in enumerate(at):
        g_t = _step(cens_times, g, np.array([t]))[0]
        died = (time <= t) & event
        alive = time > t
        term = np.where(died, survival[:, k] ** 2 / np.where(g_i > 0, g_i, 1.0), 0.0)
        term = term + np.where(alive, (1.0 - survival[:, k]) ** 2 / g_t if g_t > 0 else 0.0, 0.0)
        scores.append(term.mean())
    if len(at) < 2:
        return float(scores[0]) if scores else math.nan
    return float(np.trapezoid(scores, at) / (at[-1] - at[0]))


def logrank_test(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> tuple[float, float]:
    """The log-rank test that two or more groups share one survival curve: ``(chi-square, p-value)``."""
    from scipy.stats import chi2

    time, event, group = np.asarray(time, dtype=np.float64), np.asarray(event, dtype=bool), np.asarray(group)
    labels = np.unique(group)
    if len(labels) < 2:
        return math.nan, math.nan
    observed_minus_expected = np.zeros(len(labels))
    covariance = np.zeros((len(labels), len(labels)))
    for t in np.unique(time[event]):
        at_risk = time >= t
        n = at_risk.sum()
        d = (event & (time == t)).sum()
        n_g = np.array([(at_risk & (group == g)).sum() for g in labels], dtype=np.float64)
        d_g = np.array([(event & (time == t) & (group == g)).sum() for g in labels], dtype=np.float64)
        observed_minus_expected += d_g - d * n_g / n
        if n > 1:
            share = n_g / n
            covariance += d * (n - d) / (n - 1) * (np.diag(share) - np.outer(share, share))
    # One group is redundant (the differences sum to 0): the statistic uses the others.
    u, v = observed_minus_expected[:-1], covariance[:-1, :-1]
    statistic = float(u @ np.linalg.pinv(v) @ u)
    return statistic, float(chi2.sf(statistic, len(labels) - 1))


__all__ += ["bin_survival", "discrete_survival"]
