"""Training curves to PNG (matplotlib, Agg backend): losses, validation metrics, attention stability and
localisation."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_history", "plot_reliability", "plot_risk_groups"]


def _save(fig: Any, path: Path) -> None:
    """Save ``fig`` as PNG under a temporary name, then rename: a killed run never leaves half a picture."""
    from ..files import atomic_path

    tmp = atomic_path(path)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plot_history(history: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write ``curves.png`` and ``stability.png`` from per-epoch rows; returns the files written.

    ``curves.png``: the classification loss (train and validation), each auxiliary loss on its own axis (anchor,
    diversity, branch: their scale says nothing about the classification), and the validation metrics.
    ``stability.png``: JS divergence between consecutive epochs, attention entropy, and localisation against the
    instance labels when the bags have them.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not history:
        return []
    epochs = [row["epoch"] for row in history]
    keys = list(dict.fromkeys(k for row in history for k in row))

    def series(key: str) -> list[float]:
        return [float(row.get(key, math.nan)) for row in history]

    out_dir.mkdir(parents=True, exist_ok=True)
    aux = [k for k in keys if k.startswith("train_loss_") and k != "train_loss_cls"]
    fig, (ax_loss, ax_aux, ax_metric) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.plot(epochs, series("train_loss_cls" if "train_loss_cls" in keys else "train_loss"), label="train")
    ax_loss.plot(epochs, series("val_loss"), label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Classification loss")
    ax_loss.legend()
    for key in aux:
        ax_aux.plot(epochs, series(key), label=key.removeprefix("train_loss_"))
    ax_aux.set(xlabel="epoch", ylabel="loss (as weighted in training)", title="Auxiliary losses (train)")
    if aux:
        ax_aux.legend()
    else:
        ax_aux.text(0.5, 0.5, "no auxiliary loss", ha="center", va="center", transform=ax_aux.transAxes)
    for key in ("val_accuracy", "val_balanced_accuracy", "val_f1_macro", "val_auc"):
        ax_metric.plot(epochs, series(key), label=key.removeprefix("val_"))
    ax_metric.set(xlabel="epoch", ylabel="score", title="Validation metrics", ylim=(0, 1.02))
    ax_metric.legend()
    fig.tight_layout()
    curves = out_dir / "curves.png"
    _save(fig, curves)
    plt.close(fig)

    loc = [k for k in keys if "_loc_" in k]
    fig, axes = plt.subplots(1, 3 if loc else 2, figsize=(15 if loc else 10, 4))
    ax_js, ax_h = axes[0], axes[1]
    ax_js.plot(epochs, series("attn_js"), marker=".")
    ax_js.set(xlabel="epoch", ylabel="mean JS divergence", title="Attention change vs previous epoch")
    ax_h.plot(epochs, series("attn_entropy_norm"), marker=".")
    ax_h.set(xlabel="epoch", ylabel="entropy / ln N", title="Attention entropy (1 = uniform)", ylim=(0, 1.02))
    if loc:
        names = {"loc_auc": "AUC", "loc_precision": "top-k precision", "loc_mass": "attention mass on key"}
        for key in loc:
            measure = key[key.index("loc_") :]
            axes[2].plot(epochs, series(key), marker=".", label=f"{key.split('_loc_')[0]} {names.get(measure, key)}")
        axes[2].set(xlabel="epoch", ylabel="score", title="Localisation vs instance labels", ylim=(0, 1.02))
        axes[2].legend()
    fig.tight_layout()
    stability = out_dir / "stability.png"
    _save(fig, stability)
    plt.close(fig)
    return [curves, stability]


def plot_reliability(calibration: dict[str, Any], path: Path, *, title: str) -> Path:
    """A reliability diagram: per confidence bin, how often the predicted class is right, for raw and
    temperature-scaled probabilities (a calibrated model lies on the diagonal), with how many slides fill each bin.

    ``calibration`` holds ``reliability``/``reliability_calibrated`` bins and ``ece``/``ece_calibrated``
    (``calibration_metrics(..., bins=True)``).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfectly calibrated")
    series = (
        ("reliability", "ece", "raw", "tab:red"),
        ("reliability_calibrated", "ece_calibrated", "temperature-scaled", "tab:blue"),
    )
    for bins_key, ece_key, name, colour in series:
        bins = calibration.get(bins_key) or []
        if bins:
            ax.plot(
                [b["confidence"] for b in bins],
                [b["accuracy"] for b in bins],
                marker="o",
                color=colour,
                label=f"{name} (ECE {calibration[ece_key]:.3f})",
            )
            centres = [(b["lo"] + b["hi"]) / 2 + (-0.012 if name == "raw" else 0.012) for b in bins]
            ax_n.bar(centres, [b["n"] for b in bins], width=0.024, color=colour, label=name)
    n = calibration.get("slides")
    # The predicted class's probability is at least 1/C: a binary model's bins start at 0.5.
    lows = [b["lo"] for key in ("reliability", "reliability_calibrated") for b in calibration.get(key) or []]
    left = min([0.5, *lows])
    ax.set(ylabel="accuracy of the predicted class", xlim=(left, 1.0), ylim=(0, 1.02))
    ax.set_title(f"{title}\n{n} slides" if n else title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax_n.set(xlabel="probability of the predicted class (confidence)", ylabel="slides")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_risk_groups(
    time: Sequence[float], event: Sequence[int], risk: Sequence[float], path: Path, *, title: str, p_value: float
) -> Path:
    """Kaplan-Meier curves of the slides of high and low predicted risk (``risk`` > 0: above the model's median
    training risk), with each group's size and the log-rank p-value."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    from ._survival import kaplan_meier

    time_a, event_a, risk_a = np.asarray(time, dtype=float), np.asarray(event, dtype=bool), np.asarray(risk)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, members, colour in (("high risk", risk_a > 0, "tab:red"), ("low risk", risk_a <= 0, "tab:blue")):
        if members.any():
            times, survival = kaplan_meier(time_a[members], event_a[members])
            ax.step(
                np.r_[0.0, times],
                np.r_[1.0, survival],
                where="post",
                color=colour,
                label=f"{name} ({int(members.sum())} slides, {int(event_a[members].sum())} events)",
            )
            censored = members & ~event_a
            if censored.any():  # ticks where slides left follow-up
                at = np.searchsorted(times, time_a[censored], side="right") - 1
                ax.plot(time_a[censored], survival[at], "|", color=colour, markersize=8)
    ax.set(xlabel="time", ylabel="survival (Kaplan-Meier)", ylim=(0, 1.02))
    ax.set_title(f"{title}\nlog-rank p = {p_value:.3g}", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    plt.close(fig)
    return path
