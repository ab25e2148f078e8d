"""Training curves to PNG (matplotlib, Agg backend): losses, validation metrics, attention stability."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_history"]


def plot_history(history: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write ``curves.png`` (losses and validation metrics) and ``stability.png`` (JS divergence between
    consecutive epochs and attention entropy) from per-epoch rows; returns the files written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not history:
        return []
    epochs = [row["epoch"] for row in history]

    def series(key: str) -> list[float]:
        return [float(row.get(key, float("nan"))) for row in history]

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, series("train_loss"), label="train")
    ax_loss.plot(epochs, series("val_loss"), label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    for key in ("val_accuracy", "val_balanced_accuracy", "val_f1_macro", "val_auc"):
        ax_metric.plot(epochs, series(key), label=key.removeprefix("val_"))
    ax_metric.set(xlabel="epoch", ylabel="score", title="Validation metrics", ylim=(0, 1.02))
    ax_metric.legend()
    fig.tight_layout()
    curves = out_dir / "curves.png"
    fig.savefig(curves, dpi=100)
    plt.close(fig)

    fig, (ax_js, ax_h) = plt.subplots(1, 2, figsize=(10, 4))
    ax_js.plot(epochs, series("attn_js"), marker=".")
    ax_js.set(xlabel="epoch", ylabel="mean JS divergence", title="Attention change vs previous epoch")
    ax_h.plot(epochs, series("attn_entropy_norm"), marker=".")
    ax_h.set(xlabel="epoch", ylabel="entropy / ln N", title="Attention entropy (1 = uniform)", ylim=(0, 1.02))
    fig.tight_layout()
    stability = out_dir / "stability.png"
    fig.savefig(stability, dpi=100)
    plt.close(fig)
    return [curves, stability]
