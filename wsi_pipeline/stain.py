"""Stain matching of H&E pictures: Reinhard (colour statistics in LAB) and Macenko (stain vectors in optical density).

Both are fitted on a target picture (``fit``) and map other pictures to it (``transform``); only the pixels a mask
marks as tissue are used to fit, so glass does not pull the statistics. Pure numpy/OpenCV, so the cohort generator
uses them today and the embed stage could use them as a normalisation step.

- Reinhard, Adhikhmin, Gooch, Shirley (2001), "Color transfer between images": the mean and standard deviation of
  each CIELAB channel are matched to the target's.
- Macenko et al. (2009), "A method for normalizing histology slides for quantitative analysis": the two stain
  vectors (haematoxylin, eosin) are the extreme angles of the optical densities projected on their main plane; each
  pixel's stain concentrations are re-expressed with the target's vectors and scaled to its 99th-percentile
  concentrations.

Examples
--------
>>> normaliser = create_stain_normaliser("macenko").fit(target_rgb)  # doctest: +SKIP
>>> matched = normaliser.transform(source_rgb)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

__all__ = ["STAIN_METHODS", "ReinhardNormaliser", "MacenkoNormaliser", "create_stain_normaliser", "tissue_pixels"]

STAIN_METHODS = ("reinhard", "macenko")


def tissue_pixels(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The ``(K, 3)`` uint8 pixels of ``rgb`` under ``mask`` (default: every pixel not glass-white)."""
    rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
    # Glass is bright in every channel.
    keep = rgb.min(axis=1) < 215 if mask is None else np.asarray(mask, dtype=bool).reshape(-1)
    pixels = rgb[keep]
    if len(pixels) < 100:
        raise ValueError(f"only {len(pixels)} tissue pixels to fit a stain model on; need at least 100")
    return pixels


class ReinhardNormaliser:
    """Match each CIELAB channel's mean and standard deviation to the target's."""

    method = "reinhard"

    def __init__(self) -> None:
        self.target: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def _stats(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lab = cv2.cvtColor(pixels.reshape(-1, 1, 3), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)
        return lab.mean(axis=0), np.maximum(lab.std(axis=0), 1e-6)

    def fit(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> ReinhardNormaliser:
        self.target = self._stats(tissue_pixels(rgb, mask))
        return self

    def transform(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        if self.target is None:
            raise RuntimeError("fit the normaliser on a target picture first")
        mean, std = self._stats(tissue_pixels(rgb, mask))
        lab = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2LAB).astype(np.float64)
        lab = (lab - mean) / std * self.target[1] + self.target[0]
        return cv2.cvtColor(np.clip(np.rint(lab), 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


class MacenkoNormaliser:
    """Re-express each pixel's haematoxylin and eosin concentrations with the target's stain vectors.

    ``beta`` is the optical density below which a pixel counts as background; ``alpha`` the angle percentile
    taken as each stain's extreme direction.
    """

    method = "macenko"

    def __init__(self, alpha: float = 1.0, beta: float = 0.15, intensity: float = 240.0) -> None:
        self.alpha, self.beta, self.intensity = alpha, beta, intensity
        self.target: tuple[np.ndarray, np.ndarray] | None = None

    def _od(self, pixels: np.ndarray) -> np.ndarray:
        return -np.log(np.maximum(pixels.astype(np.float64), 1.0) / self.intensity)

    def _stains(self, od: np.ndarray) -> np.ndarray:
        """``(3, 2)`` unit stain vectors, haematoxylin first."""
        od = od[(od > self.beta).all(axis=1)]
        if len(od) < 100:
            raise ValueError("too few stained pixels to estimate stain vectors (is the picture glass only?)")
        _, vectors = np.linalg.eigh(np.cov(od.T))
        plane = vectors[:, 1:3]  # the two main directions
        plane = plane * np.where(plane[0:1] < 0, -1, 1)  # point into positive optical density
        angles = np.arctan2(od @ plane[:, 1], od @ plane[:, 0])
        low, high = np.percentile(angles, [self.alpha, 100 - self.alpha])
        v1 = plane @ np.array([np.cos(low), np.sin(low)])
        v2 = plane @ np.array([np.cos(high), np.sin(high)])
        stains = np.stack([v1, v2], axis=1) if v1[0] > v2[0] else np.stack([v2, v1], axis=1)  # H has more red OD
        return stains / np.linalg.norm(stains, axis=0, keepdims=True)

    def _concentrations(self, od: np.ndarray, stains: np.ndarray) -> np.ndarray:
        return np.linalg.lstsq(stains, od.T, rcond=None)[0].T  # (K, 2)

    def fit(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> MacenkoNormaliser:
        od = self._od(tissue_pixels(rgb, mask))
        stains = self._stains(od)
        self.target = (stains, np.percentile(self._concentrations(od, stains), 99, axis=0))
        return self

    def transform(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        if self.target is None:
            raise RuntimeError("fit the normaliser on a target picture first")
        od_fit = self._od(tissue_pixels(rgb, mask))
        stains = self._stains(od_fit)
        max_c = np.percentile(self._concentrations(od_fit, stains), 99, axis=0)
        shape = np.shape(rgb)
        conc = self._concentrations(self._od(np.asarray(rgb).reshape(-1, 3)), stains)
        conc *= self.target[1] / np.maximum(max_c, 1e-6)
        out = self.intensity * np.exp(-conc @ self.target[0].T)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(shape)


def create_stain_normaliser(method: Literal["reinhard", "macenko"]) -> ReinhardNormaliser | MacenkoNormaliser:
    """A stain normaliser by name (``STAIN_METHODS``)."""
    if method == "reinhard":
        return ReinhardNormaliser()
    if method == "macenko":
        return MacenkoNormaliser()
    raise ValueError(f"unknown stain method {method!r}; valid: {', '.join(STAIN_METHODS)}")
