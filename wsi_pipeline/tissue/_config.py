"""``TissueMaskConfig`` (torch-, numpy- and OpenCV-free, so the CLI checks a config before loading them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["TissueMaskConfig"]


@dataclass
class TissueMaskConfig:
    """How tissue is told from glass on the mask picture.

    Attributes
    ----------
    method
        ``"otsu"``: Otsu threshold on the blurred saturation, at least ``min_threshold``;
        ``"fixed"``: saturation above ``threshold``.
    threshold
        Saturation (0-255) for ``method="fixed"``.
    min_threshold
        Floor of the Otsu threshold (saturation 0-255).
    median_um
        Median-blur window in microns (rounded to an odd number of mask pixels, at least 3).
    close_um
        Diameter of the closing element in microns (joins tissue split by thin gaps); 0 disables.
    min_tissue_area_um2
        Tissue pieces smaller than this are dropped (dust, debris).
    min_hole_area_um2
        Holes in tissue smaller than this are filled (nuclei-free lumens, fat cells).
    min_value
        Pixels darker than this HSV value (0-255) are not tissue: black borders and black ink saturate wrongly.
    pen_filter
        Remove marker ink: green, cyan and blue hues (H&E is purple to pink), saturated above ``pen_min_saturation``.
    pen_hue_range
        OpenCV hue range (0-180) counted as ink.
    pen_min_saturation
        Saturation (0-255) above which a pixel of an ink hue counts as ink.
    """

    method: Literal["otsu", "fixed"] = "otsu"
    threshold: float = 20.0
    min_threshold: float = 15.0
    median_um: float = 56.0
    close_um: float = 64.0
    min_tissue_area_um2: float = 50_000.0
    min_hole_area_um2: float = 20_000.0
    min_value: int = 30
    pen_filter: bool = False
    pen_hue_range: tuple[int, int] = (35, 122)
    pen_min_saturation: float = 40.0

    def __post_init__(self) -> None:
        if self.method not in ("otsu", "fixed"):
            raise ValueError(f"mask.method {self.method!r}: expected 'otsu' or 'fixed'")
        if not 0 <= self.threshold <= 255 or not 0 <= self.min_threshold <= 255:
            raise ValueError("mask.threshold and mask.min_threshold are saturations between 0 and 255")
        if min(self.median_um, self.close_um, self.min_tissue_area_um2, self.min_hole_area_um2) < 0:
            raise ValueError("mask sizes (median_um, close_um, min_*_area_um2) must be >= 0")
        self.pen_hue_range = tuple(self.pen_hue_range)  # type: ignore[assignment]
