"""Tissue detection on a low-resolution picture of a slide (OpenCV), with sizes in microns.

The default is the usual H&E recipe: HSV saturation, median blur, Otsu threshold (never below a floor, so a blank
slide does not turn its noise into tissue), morphological closing, then dropping tissue pieces and filling holes
smaller than an area in um^2. Every size is physical, so the same config means the same thing at any mask mpp.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ._config import TissueMaskConfig

__all__ = ["TissueMaskConfig", "tissue_mask", "tissue_mask_with_info", "pen_mask"]


def _odd(pixels: float, minimum: int = 1) -> int:
    k = max(minimum, round(pixels))
    return k if k % 2 == 1 else k + 1


def pen_mask(hsv: np.ndarray, config: TissueMaskConfig) -> np.ndarray:
    """Pixels of marker ink: an ink hue (green/cyan/blue) with enough saturation."""
    lo, hi = config.pen_hue_range
    hue, sat = hsv[..., 0], hsv[..., 1]
    return (hue >= lo) & (hue <= hi) & (sat > config.pen_min_saturation)


def _drop_small(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """Remove 8-connected True components smaller than ``min_pixels``."""
    if min_pixels <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    keep[0] = False  # label 0 is the background
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_pixels: float) -> np.ndarray:
    """Fill background components smaller than ``max_pixels`` that do not touch the border (true holes)."""
    if max_pixels <= 0 or mask.all():
        return mask
    inverse = (~mask).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inverse, connectivity=4)
    small = stats[:, cv2.CC_STAT_AREA] < max_pixels
    x, y, w, h = (stats[:, k] for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    touches = (x == 0) | (y == 0) | (x + w == mask.shape[1]) | (y + h == mask.shape[0])
    fill = small & ~touches
    fill[0] = False  # label 0 is the tissue itself
    return mask | fill[labels]


def tissue_mask_with_info(
    rgb: np.ndarray, mpp: float, config: TissueMaskConfig | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """``tissue_mask`` plus what it used: the threshold and the kernel sizes in mask pixels."""
    config = config or TissueMaskConfig()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 picture (h, w, 3), got {rgb.dtype} {rgb.shape}")
    if not mpp > 0:
        raise ValueError(f"mask mpp must be positive, got {mpp}")
    px_area = mpp * mpp
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = hsv[..., 1]
    median_k = _odd(config.median_um / mpp, 3)
    if min(sat.shape) > median_k:
        sat = cv2.medianBlur(np.ascontiguousarray(sat), min(median_k, 255))
    if config.method == "otsu":
        otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        threshold = max(float(otsu), config.min_threshold)
    else:
        threshold = float(config.threshold)
    mask = sat > threshold
    mask &= hsv[..., 2] >= config.min_value
    if config.pen_filter:
        mask &= ~pen_mask(hsv, config)
    close_k = _odd(config.close_um / mpp) if config.close_um > 0 else 0
    if close_k > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_k, close_k))
        # Pad so closing does not glue tissue to the picture border.
        pad = close_k
        padded = cv2.copyMakeBorder(mask.astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        mask = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel)[pad:-pad, pad:-pad].astype(bool)
    mask = _drop_small(mask, config.min_tissue_area_um2 / px_area)
    mask = _fill_small_holes(mask, config.min_hole_area_um2 / px_area)
    info = {
        "threshold": threshold,
        "median_px": median_k,
        "close_px": close_k,
        "min_tissue_area_px": config.min_tissue_area_um2 / px_area,
        "min_hole_area_px": config.min_hole_area_um2 / px_area,
        "tissue_fraction": float(mask.mean()) if mask.size else 0.0,
    }
    return mask, info


def tissue_mask(rgb: np.ndarray, mpp: float, config: TissueMaskConfig | None = None) -> np.ndarray:
    """Boolean tissue mask of an RGB picture of a slide taken at ``mpp`` microns per pixel.

    Parameters
    ----------
    rgb
        ``uint8`` (h, w, 3) picture, glass white (``Slide.read_at_mpp`` gives one).
    mpp
        Microns per pixel of ``rgb``; converts the config's micron sizes to pixels.
    config
        Mask settings; defaults to ``TissueMaskConfig()``.

    Returns
    -------
    np.ndarray
        ``bool`` (h, w), True on tissue.

    Examples
    --------
    >>> overview, scale = slide.read_at_mpp(8.0)  # doctest: +SKIP
    >>> mask = tissue_mask(overview, slide.mpp * scale)  # doctest: +SKIP
    """
    return tissue_mask_with_info(rgb, mpp, config)[0]
