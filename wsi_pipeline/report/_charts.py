"""The cohort page's figures as inline SVG (no script, no library): ROC curves, the confusion matrix and a
reliability diagram of the labelled slides' predictions."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["roc_svg", "confusion_html", "reliability_svg", "labelled"]

SIZE, PAD = 260, 36
_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def labelled(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> list[dict[str, Any]]:
    """Slides whose label is one of the classes and whose prediction never trained on them (out-of-fold or new)."""
    return [r for r in rows if r.get("label") in classes and r.get("source") != "in-training"]


def _frame(title: str, x_label: str, y_label: str, body: str, heading: str | None = None) -> str:
    """A square chart: axes, diagonal, ticks and labels around ``body``; ``title`` names it for screen readers and
    tooltips, ``heading`` (default: the title) is what fits above it."""
    inner = SIZE - 2 * PAD
    ticks = "".join(
        f'<text x="{PAD + t * inner:.1f}" y="{SIZE - PAD + 14}" text-anchor="middle">{t:g}</text>'
        f'<text x="{PAD - 4}" y="{SIZE - PAD - t * inner + 4:.1f}" text-anchor="end">{t:g}</text>'
        for t in (0, 0.5, 1)
    )
    return (
        f'<svg class="chart" viewBox="0 0 {SIZE} {SIZE}" width="{SIZE}" height="{SIZE}" role="img" '
        f'aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>'
        f'<rect x="{PAD}" y="{PAD}" width="{inner}" height="{inner}" class="axes"/>'
        f'<line x1="{PAD}" y1="{SIZE - PAD}" x2="{SIZE - PAD}" y2="{PAD}" class="diagonal"/>{ticks}'
        f'<text x="{SIZE / 2}" y="{SIZE - 4}" text-anchor="middle">{html.escape(x_label)}</text>'
        f'<text x="10" y="{SIZE / 2}" text-anchor="middle" transform="rotate(-90 10 {SIZE / 2})">'
        f"{html.escape(y_label)}</text>"
        f'<text x="{SIZE / 2}" y="16" text-anchor="middle" class="title">{html.escape(heading or title)}</text>'
        f"{body}</svg>"
    )


def _xy(x: float, y: float) -> str:
    inner = SIZE - 2 * PAD
    return f"{PAD + x * inner:.1f},{SIZE - PAD - y * inner:.1f}"


def roc_svg(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> str:
    """One ROC curve per class, one-vs-rest (binary: the second class only), with its AUC in the legend."""
    from ..training import binary_auc, roc_curve

    if not rows:
        return ""
    y = np.array([r["label"] for r in rows])
    shown = list(classes[1:2]) if len(classes) == 2 else list(classes)
    body, legend = "", ""
    for i, name in enumerate(shown):
        positive = y == name
        if positive.all() or not positive.any():
            continue
        score = np.array([float(r["probabilities"][name]) for r in rows])
        fpr, tpr, _ = roc_curve(positive, score)
        auc = binary_auc(positive, score)
        colour = _COLOURS[i % len(_COLOURS)]
        points = " ".join(_xy(a, b) for a, b in zip(fpr, tpr, strict=True))
        body += f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
        legend += (
            f'<text x="{SIZE - PAD - 4}" y="{SIZE - PAD - 8 - 14 * i}" text-anchor="end" fill="{colour}">'
            f"{html.escape(name)}: AUC {auc:.3f}</text>"
        )
    if not body:
        return ""
    return _frame(f"ROC ({len(rows)} slides)", "false positive rate", "true positive rate", body + legend)


def _cell_class(i: int, j: int, counts: np.ndarray) -> str:
    return "hit" if i == j else "miss" if counts[i, j] else ""


def confusion_html(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> str:
    """A table of counts: label (rows) by predicted class (columns), the diagonal marked."""
    if not rows:
        return ""
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    for r in rows:
        counts[index[r["label"]], index[r["predicted_class"]]] += 1
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    body = "".join(
        f"<tr><th>{html.escape(c)}</th>"
        + "".join(
            f'<td class="{"hit" if i == j else "miss" if counts[i, j] else ""}">{counts[i, j]}</td>'
            for j in range(len(classes))
        )
        + "</tr>"
        for i, c in enumerate(classes)
    )
    return (
        '<table class="confusion"><caption>confusion matrix (rows: label, columns: prediction)</caption>'
        f"<tr><th></th>{head}</tr>{body}</table>"
    )


def reliability_svg(rows: Sequence[dict[str, Any]], n_classes: int, n_bins: int = 5) -> str:
    """Accuracy against confidence (the predicted class's probability) in equal-width bins from 1/C (the least a
    prediction's probability can be) to 1; a dot's area is its number of slides. A calibrated model's dots lie on
    the diagonal. Raw probabilities are blue dots; the temperature-scaled ones (``calibrated_probabilities``, where
    the results have them) orange rings; each series' ECE in the legend and both in the chart's name."""
    if not rows:
        return ""
    correct = np.array([r["label"] == r["predicted_class"] for r in rows], dtype=float)
    edges = np.linspace(1 / max(n_classes, 1), 1, n_bins + 1)
    series = [("probabilities", "bin", "raw", "#2166ac")]
    if all(r.get("calibrated_probabilities") for r in rows):
        series.append(("calibrated_probabilities", "bin calibrated", "temperature-scaled", "#d95f02"))
    body, legend, eces = "", "", []
    for i, (key, css, name, colour) in enumerate(series):
        confidence = np.array([float(r[key][r["predicted_class"]]) for r in rows])
        ece = _ece(confidence, correct)
        eces.append(f"ECE {name} {ece:.3f}")
        legend += (
            f'<text x="{SIZE - PAD - 4}" y="{SIZE - PAD - 8 - 14 * (len(series) - 1 - i)}" text-anchor="end" '
            f'fill="{colour}">{name}: ECE {ece:.3f}</text>'
        )
        which = np.clip(np.digitize(confidence, edges) - 1, 0, n_bins - 1)
        for b in range(n_bins):
            members = which == b
            if not members.any():
                continue
            conf, acc, n = confidence[members].mean(), correct[members].mean(), int(members.sum())
            cx, cy = _xy(conf, acc).split(",")
            body += (
                f'<circle cx="{cx}" cy="{cy}" r="{3 + 2 * np.sqrt(n):.1f}" class="{css}">'
                f"<title>{name}: {n} slide(s), confidence {conf:.2f}, accuracy {acc:.2f}</title></circle>"
            )
    return _frame(
        f"reliability ({', '.join(eces)})", "confidence", "accuracy", body + legend, f"reliability ({len(rows)} slides)"
    )


def _ece(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Top-label expected calibration error over 10 bins, as train and predict compute it (``metrics.json``)."""
    from ..training import confidence_bins, ece_of_bins

    return ece_of_bins(confidence_bins(confidence, correct))
