"""Attention heatmaps over the slide thumbnail and the top-k tiles as image patches."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..files import atomic_path, temporary_then_rename
from ..slide import Slide
from ..tiling import TileView, read_tile

__all__ = [
    "scale_scores",
    "relative_attention",
    "RELATIVE_LOG2_RANGE",
    "colormap_for",
    "attention_spread",
    "colour_bar_ticks",
    "uniformity_note",
    "draw_heatmap",
    "save_top_tiles",
    "NEARLY_UNIFORM_RATIO",
]

log = logging.getLogger(__name__)

Scaling = Literal["relative", "rank", "percentile", "linear"]
SCALINGS = ("relative", "rank", "percentile", "linear")

# ``relative``: N * attention (1 = what every tile gets from a uniform map) on a log2 scale from 1/16 to 16 times
# uniform, with a diverging colour map whose middle is uniform. A flat map is one flat colour, whatever its max/min;
# a tile with 16 times its share (a 1% lesion holding 16% of the attention) is the hottest colour.
RELATIVE_LOG2_RANGE = 4.0
_RELATIVE_TICKS = ((-4, "1/16"), (-2, "1/4"), (0, "1 = uniform"), (2, "4"), (4, "16"))


def relative_attention(scores: np.ndarray) -> np.ndarray:
    """``N * a / sum(a)``: each tile's attention relative to a uniform map's (1.0 everywhere when flat)."""
    scores = np.asarray(scores, dtype=np.float64)
    total = scores.sum()
    if scores.size == 0 or total <= 0:
        return np.ones_like(scores)
    return scores * (len(scores) / total)


def colormap_for(scaling: Scaling) -> str:
    """The matplotlib colour map of a scaling: diverging around uniform for ``relative``, ``jet`` otherwise."""
    return "RdBu_r" if scaling == "relative" else "jet"


def scale_scores(scores: np.ndarray, scaling: Scaling = "relative") -> np.ndarray:
    """Map tile scores to [0, 1] for colouring.

    ``relative`` (default): log2 of the attention relative to uniform (``relative_attention``), 1/16 to 16 times
    mapped to 0..1, uniform at 0.5, so a flat map looks flat; ``rank``: the tile's rank among all tiles (uniform
    colours whatever the spread: a flat map looks like a rainbow); ``percentile``: linear between the 1st and 99th
    percentiles, clipped; ``linear``: min-max.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    if scaling == "relative":
        ratio = np.maximum(relative_attention(scores), 2.0**-30)
        return np.clip((np.log2(ratio) + RELATIVE_LOG2_RANGE) / (2 * RELATIVE_LOG2_RANGE), 0.0, 1.0)
    if scaling == "rank":
        order = scores.argsort(kind="stable")
        ranks = np.empty_like(scores)
        ranks[order] = np.arange(len(scores))
        return ranks / max(len(scores) - 1, 1)
    if scaling == "percentile":
        lo, hi = np.percentile(scores, [1, 99])
    elif scaling == "linear":
        lo, hi = scores.min(), scores.max()
    else:
        raise ValueError(f"scaling {scaling!r} is not one of {', '.join(map(repr, SCALINGS))}")
    return np.clip((scores - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


NEARLY_UNIFORM_RATIO = 1.1  # max/min attention at or below which a map is called nearly uniform on the image


def attention_spread(scores: np.ndarray) -> float:
    """max / min of the per-tile attention (inf when the smallest is 0): how far from uniform the map is."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return 1.0
    low, high = float(scores.min()), float(scores.max())
    return high / low if low > 0 else float("inf")


def uniformity_note(scores: np.ndarray) -> str | None:
    """What the heatmap says about a nearly uniform map (max/min <= ``NEARLY_UNIFORM_RATIO``), else None."""
    spread = attention_spread(scores)
    return f"attention nearly uniform (max/min {spread:.3f})" if spread <= NEARLY_UNIFORM_RATIO else None


def colour_bar_ticks(scores: np.ndarray, scaling: Scaling, n: int = 5) -> tuple[np.ndarray, list[str]]:
    """Positions on the [0, 1] colour bar and the real attention each stands for, as labels.

    Colours are scaled (``scale_scores``); the labels undo the scaling, so the bar reads in attention values
    whatever the scaling: the score at that rank (``rank``), or the value mapped there (``percentile``,
    ``linear``). Labels get as many digits as it takes to tell them apart. ``relative`` has fixed ticks in times
    uniform (1/16, 1/4, 1 = uniform, 4, 16).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scaling == "relative":
        span = 2 * RELATIVE_LOG2_RANGE
        return np.array([(v + RELATIVE_LOG2_RANGE) / span for v, _ in _RELATIVE_TICKS]), [t for _, t in _RELATIVE_TICKS]
    positions = np.linspace(0.0, 1.0, n)
    if scaling == "rank":
        values = np.quantile(scores, positions)
    else:
        lo, hi = np.percentile(scores, [1, 99]) if scaling == "percentile" else (scores.min(), scores.max())
        values = lo + positions * (hi - lo)
    for digits in range(3, 10):
        labels = [f"{v:.{digits}g}" for v in values]
        if len(set(labels)) == len(set(np.round(values, 15))):
            break
    return positions, labels


def draw_heatmap(
    thumbnail: np.ndarray,
    thumb_scale: float,
    coords: np.ndarray,
    tile_size_level0: int,
    scores: np.ndarray,
    out_png: Path,
    *,
    scaling: Scaling = "relative",
    title: str = "",
    alpha: float = 0.5,
    outlines: list[np.ndarray] | None = None,
) -> Path:
    """Draw each tile's scaled score over ``thumbnail`` (level-0 px per thumbnail px: ``thumb_scale``) with a
    colour bar labelled in real attention values (``relative``: times uniform); tiles without a score stay
    transparent. A nearly uniform map (max/min <= ``NEARLY_UNIFORM_RATIO``) also says so on the image (with
    ``rank``, ``percentile`` or ``linear`` it would otherwise look like any other: they stretch it over every colour).
    ``outlines`` (rings of level-0 ``(x, y)`` points: the annotated lesions) are drawn over it in black and white.
    The PNG is written under a temporary name and renamed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    h, w = thumbnail.shape[:2]
    cmap = matplotlib.colormaps[colormap_for(scaling)]
    fig, ax = plt.subplots(figsize=(8, 8 * h / max(w, 1) + 0.5))
    blended = _blend_tiles(thumbnail, thumb_scale, coords, tile_size_level0, scores, scaling, cmap, alpha)
    # The picture keeps the thumbnail's pixel coordinates (extent), which the outlines are drawn in.
    ax.imshow(_for_imshow(blended, DRAWN_PX), extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    del blended
    for ring in outlines or []:
        xy = np.asarray(ring, dtype=np.float64) / thumb_scale
        xy = np.vstack([xy, xy[:1]])
        ax.plot(xy[:, 0], xy[:, 1], color="white", linewidth=3.0)  # a halo, visible over every colour
        ax.plot(xy[:, 0], xy[:, 1], color="black", linewidth=1.2)
    if outlines:
        ax.plot([], [], color="black", linewidth=1.2, label="annotation")
        ax.legend(loc="lower right", fontsize=9, framealpha=0.85)
    how = {
        "relative": f"x uniform 1/N, N={len(scores)}, log scale",
        "rank": "colours by rank",
        "percentile": "colours 1st-99th percentile",
        "linear": "colours min-max",
    }
    scale = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0.0, 1.0), cmap=cmap)
    bar = fig.colorbar(scale, ax=ax, alpha=alpha, fraction=0.046, pad=0.04, label=f"attention ({how[scaling]})")
    if len(scores):
        positions, labels = colour_bar_ticks(scores, scaling)
        bar.set_ticks(positions, labels=labels)
        note = uniformity_note(scores)
        if note:
            ax.text(
                0.5,
                0.98,
                note,
                transform=ax.transAxes,
                ha="center",
                va="top",
                fontsize=12,
                fontweight="bold",
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "black"},
            )
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(out_png)
    try:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        os.replace(tmp, out_png)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out_png


def _blend_tiles(
    thumbnail: np.ndarray,
    thumb_scale: float,
    coords: np.ndarray,
    tile_size_level0: int,
    scores: np.ndarray,
    scaling: Scaling,
    cmap: Any,
    alpha: float,
) -> np.ndarray:
    """The thumbnail (uint8 RGB) with each tile's colour blended over it (``alpha``); a later tile replaces an
    earlier one where they overlap, and the thumbnail shows through where no tile has a score."""
    rgb = np.asarray(thumbnail, dtype=np.uint8)
    rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb[..., :3]
    blended = rgb.copy()
    colours = cmap(scale_scores(scores, scaling))[:, :3] * 255.0
    size = max(1, int(round(tile_size_level0 / thumb_scale)))
    for (x, y), colour in zip(np.asarray(coords), colours, strict=True):
        col, row = int(x / thumb_scale), int(y / thumb_scale)
        under = rgb[row : row + size, col : col + size]  # the thumbnail's own pixels, not an earlier tile's blend
        blended[row : row + size, col : col + size] = np.rint(under * (1.0 - alpha) + colour * alpha)
    return blended


# The heatmap figure is 8 inches wide at 100 dpi: its picture is drawn ~600 px wide. A thumbnail of more than
# DRAWN_PX on its long side is shrunk to it (area means) before matplotlib draws it: matplotlib makes float copies
# of all it is given (two float64 RGBA copies of a 2048 px overlay were ~250 MB of predict's peak RSS).
DRAWN_PX = 1024


def _for_imshow(picture: np.ndarray, max_px: int) -> np.ndarray:
    """uint8 RGB -> float32 RGBA in [0, 1] of at most ``max_px`` on its long side, as matplotlib draws it: a uint8
    picture would be divided in numpy.ma, which makes a float64 copy of it."""
    import cv2

    h, w = picture.shape[:2]
    if max(h, w) > max_px:
        factor = max_px / max(h, w)
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
    rgba = np.ones(picture.shape[:2] + (4,), dtype=np.float32)
    np.multiply(picture, np.float32(1 / 255), out=rgba[..., :3])
    return rgba


def save_top_tiles(
    slide: Slide,
    coords: np.ndarray,
    tiling: Mapping[str, Any],
    scores: np.ndarray,
    out_dir: Path,
    *,
    k: int = 8,
    view: TileView | None = None,
) -> list[Path]:
    """Save the ``k`` highest-scoring tiles as PNGs named ``rank<r>_x<x>_y<y>.png`` in ``out_dir``.

    Tiles are read with ``read_tile`` and ``view``, the encoder's view of the embeddings
    (``wsi_pipeline.embedding.features_view``), so they are the pixels the encoder saw; without a view, the store's
    tiles (``tile_size``). ``out_dir`` is filled under a temporary name and replaces any previous folder when
    complete.
    """
    from PIL import Image

    top = np.argsort(-np.asarray(scores), kind="stable")[:k]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    names = []
    with temporary_then_rename(out_dir) as tmp:
        tmp.mkdir()
        for rank, index in enumerate(top, start=1):
            x, y = (int(v) for v in coords[index])
            name = f"rank{rank:02d}_x{x}_y{y}.png"
            Image.fromarray(read_tile(slide, (x, y), tiling, view)).save(tmp / name)
            names.append(name)
    return [out_dir / name for name in names]
