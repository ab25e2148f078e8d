"""Composing one slide: real tissue pieces on glass, and real tumour tissue painted into irregular lesions.

Pure functions of numpy arrays and a random generator, plus ``TissueSource``, which reads crops of a source slide or
image at the cohort's resolution without ever holding a whole level 0 in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import CohortError, MissingMppError
from ..slide import Slide
from ..stain import MacenkoNormaliser, ReinhardNormaliser
from ..tissue import tissue_mask

__all__ = ["TissueSource", "ComposedSlide", "compose_slide", "blob_polygon", "lesion_masks", "paint_lesions"]

GLASS = np.array([243, 242, 245], dtype=np.float32)
_OVERVIEW_MPP = 8.0  # where a source's tissue is found
_MASK_MPP = 4.0  # where the composed slide's tissue is measured
_HOLD_PIXELS = 64_000_000  # a source this small at the cohort's resolution is read once and held (192 MB at most)


class TissueSource:
    """A slide or image read at ``out_mpp``: crops on request, and where its tissue is (from an 8 um/px overview).

    Raises ``CohortError`` naming the file when it cannot be opened, has no resolution, is too small for
    ``min_side`` output pixels, or has no tissue.
    """

    def __init__(self, path: str | Path, out_mpp: float, *, mpp: float | None, role: str, min_side: int) -> None:
        self.path, self.role, self.out_mpp = Path(path), role, out_mpp
        if not self.path.is_file():
            raise CohortError(
                f"{self.path}: {role} source not found; fetch the example data with `python examples/fetch_data.py "
                f"example` or pass --{role} PATH"
            )
        self.slide = Slide(self.path, mpp=mpp)
        try:
            self.mpp = self.slide.mpp
        except MissingMppError as err:
            raise CohortError(f"{self.path}: the {role} source states no resolution; pass --{role}-mpp UM") from err
        width, height = self.slide.dimensions
        self.scale = self.mpp / out_mpp  # output pixels per source level-0 pixel
        self.out_size = (int(width * self.scale), int(height * self.scale))
        if min(self.out_size) < min_side:
            raise CohortError(
                f"{self.path}: the {role} source is {self.out_size[0]}x{self.out_size[1]} px at {out_mpp} um/px, "
                f"smaller than the {min_side} px needed; use a larger source or a coarser --mpp"
            )
        self._held: np.ndarray | None = None
        overview, ov_scale = self.slide.read_at_mpp(_OVERVIEW_MPP)
        self.overview_scale = ov_scale * self.scale  # output pixels per overview pixel
        self.mask = tissue_mask(overview, self.mpp * ov_scale)
        if not self.mask.any():
            raise CohortError(f"{self.path}: no tissue found in the {role} source; use a slide or image of tissue")

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB ``(h, w, 3)`` of the output-pixel box at ``(x, y)``, read at the nearest finer pyramid level; a small
        source is read whole once (every slide crops it many times) and cropped from memory."""
        if self.out_size[0] * self.out_size[1] <= _HOLD_PIXELS:
            if self._held is None:
                self._held, _ = self.slide.read_at_mpp(self.out_mpp)
            x, y = min(x, self._held.shape[1] - w), min(y, self._held.shape[0] - h)
            return np.ascontiguousarray(self._held[y : y + h, x : x + w])
        level = self.slide.best_level_for_mpp(self.out_mpp)
        level_scale = self.scale * self.slide.level_downsamples[level]  # output px per level px
        lx, ly = x / self.scale, y / self.scale  # level-0 source px
        lw, lh = max(1, math.ceil(w / level_scale)), max(1, math.ceil(h / level_scale))
        region = self.slide.read_region((round(lx), round(ly)), level, (lw, lh))
        if region.shape[:2] == (h, w):
            return region
        return cv2.resize(region, (w, h), interpolation=cv2.INTER_AREA if level_scale < 1 else cv2.INTER_LINEAR)

    def random_crop(self, side: int, rng: np.random.Generator, tries: int = 50) -> np.ndarray:
        """A ``side x side`` crop centred on a random tissue point (the tissue-richest of a few draws)."""
        side = min(side, *self.out_size)
        ys, xs = np.nonzero(self.mask)
        best, best_cover = None, -1.0
        for _ in range(min(tries, 8)):
            i = int(rng.integers(len(xs)))
            cx, cy = (xs[i] + 0.5) * self.overview_scale, (ys[i] + 0.5) * self.overview_scale
            x = int(np.clip(cx - side / 2, 0, self.out_size[0] - side))
            y = int(np.clip(cy - side / 2, 0, self.out_size[1] - side))
            m = self.mask[
                int(y / self.overview_scale) : int((y + side) / self.overview_scale) + 1,
                int(x / self.overview_scale) : int((x + side) / self.overview_scale) + 1,
            ]
            cover = float(m.mean()) if m.size else 0.0
            if cover > best_cover:
                best, best_cover = (x, y), cover
        assert best is not None
        return self.read(best[0], best[1], side, side)

    def texture(self, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
        """``(h, w, 3)`` of the source's tissue: a random crop, turned and flipped at random, mirrored to size
        when the source is smaller (mirroring is continuous at every seam)."""
        side = max(w, h)
        crop = self.random_crop(min(side, *self.out_size), rng)
        if len(crop) < side:
            crop = np.pad(crop, ((0, side - len(crop)), (0, side - crop.shape[1]), (0, 0)), mode="symmetric")
        crop = np.rot90(crop, int(rng.integers(4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return np.ascontiguousarray(crop[:h, :w])


def blob_polygon(
    centre: tuple[float, float], radius: float, rng: np.random.Generator, roughness: float = 0.18
) -> np.ndarray:
    """An irregular closed outline ``(K, 2)`` (x, y): a circle whose radius varies with a few random harmonics."""
    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 7):
        r += rng.uniform(0, roughness / (k - 1) ** 0.5) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r *= radius * rng.uniform(0.97, 1.03, len(theta))
    return np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], axis=1)


def _fill(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """A mask as blending weights with a soft border of about ``2 sigma`` pixels."""
    alpha = mask.astype(np.float32)
    return cv2.GaussianBlur(alpha, (0, 0), sigma) if sigma > 0 else alpha


def _paste(canvas: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    h, w = alpha.shape
    region = canvas[y : y + h, x : x + w]
    a = alpha[..., None]
    region[...] = region * (1 - a) + patch.astype(np.float32) * a


def measured_tissue(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """The tissue mask of a composed slide as the tile stage finds it (at 4 um/px), at full size."""
    factor = max(1, round(_MASK_MPP / mpp))
    small = cv2.resize(rgb, (rgb.shape[1] // factor, rgb.shape[0] // factor), interpolation=cv2.INTER_AREA)
    mask = tissue_mask(small, mpp * rgb.shape[1] / small.shape[1]).astype(np.float32)
    return cv2.resize(mask, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR) > 0.5  # smooth edges


def _free_spot(occupied: np.ndarray, shape: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """A random top-left corner where ``shape`` overlaps nothing ``occupied``, checked on an 8x coarser grid
    (conservatively: a coarse cell counts as taken when any of its pixels is), or None after 400 tries."""
    f = 8
    small_occ = cv2.resize(occupied.astype(np.uint8), None, fx=1 / f, fy=1 / f, interpolation=cv2.INTER_AREA) > 0
    small_shape = cv2.resize(shape.astype(np.uint8), None, fx=1 / f, fy=1 / f, interpolation=cv2.INTER_AREA) > 0
    sh, sw = small_shape.shape
    max_y, max_x = small_occ.shape[0] - sh - 1, small_occ.shape[1] - sw - 1
    if max_x < 0 or max_y < 0:
        return None
    for _ in range(400):
        cx, cy = int(rng.integers(0, max_x + 1)), int(rng.integers(0, max_y + 1))
        if not (small_occ[cy : cy + sh + 1, cx : cx + sw + 1][:sh, :sw] & small_shape).any():
            x, y = cx * f, cy * f
            if x + shape.shape[1] <= occupied.shape[1] and y + shape.shape[0] <= occupied.shape[0]:
                return x, y
    return None


@dataclass
class ComposedSlide:
    """One composed slide at level 0 and the truth about it."""

    rgb: np.ndarray
    tissue: np.ndarray  # bool, the pieces' tissue
    lesion_masks: list[np.ndarray] = field(default_factory=list)  # bool per lesion, inside the tissue
    pieces: int = 0

    @property
    def tissue_px(self) -> int:
        return int(self.tissue.sum())


def compose_slide(
    width: int,
    height: int,
    mpp: float,
    background: TissueSource,
    rng: np.random.Generator,
    *,
    n_pieces: int,
    cover: float,
) -> ComposedSlide:
    """Glass with ``n_pieces`` real tissue pieces: crops of the background source, rotated and flipped, cut to
    irregular outlines, placed without overlap."""
    canvas = np.empty((height, width, 3), dtype=np.float32)
    canvas[...] = GLASS + rng.normal(0, 1.2, (height, width, 1)).astype(np.float32)
    occupied = np.zeros((height, width), dtype=bool)
    tissue = np.zeros((height, width), dtype=bool)
    placed = 0
    piece_area = width * height * cover / n_pieces
    for _ in range(4 * n_pieces):  # a crop of mostly glass or a piece with no room left: another draw
        if placed == n_pieces:
            break
        # The outline (radius 0.36 side) covers about 0.4 of the square it is cut from.
        side = int(np.clip(math.sqrt(piece_area / 0.4) * rng.uniform(0.85, 1.15), 256, 0.9 * min(width, height)))
        crop = background.random_crop(int(side * 1.1) + 2, rng)  # its inscribed circle holds the outline
        centre = (crop.shape[1] / 2, crop.shape[0] / 2)
        turn = cv2.getRotationMatrix2D(centre, float(rng.uniform(0, 360)), 1.0)
        rotated = cv2.warpAffine(crop, turn, (crop.shape[1], crop.shape[0]), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT)  # fmt: skip
        side = min(side, rotated.shape[0], rotated.shape[1])
        off = ((rotated.shape[1] - side) // 2, (rotated.shape[0] - side) // 2)
        piece = rotated[off[1] : off[1] + side, off[0] : off[0] + side]
        if rng.random() < 0.5:
            piece = piece[:, ::-1]
        outline = blob_polygon((side / 2, side / 2), side * 0.36, rng, roughness=0.25)  # inside the crop
        shape = _fill((side, side), outline) & measured_tissue(np.ascontiguousarray(piece), mpp)
        if shape.sum() < 0.05 * side * side:
            continue  # a crop of mostly glass: no piece
        spot = _free_spot(occupied, shape, rng)
        if spot is None:
            continue
        x, y = spot
        _paste(canvas, piece, _soft(shape, 1.5), x, y)
        grown = cv2.dilate(shape.astype(np.uint8), np.ones((25, 25), np.uint8)) > 0  # a gap between pieces
        occupied[y : y + side, x : x + side] |= grown
        tissue[y : y + side, x : x + side] |= shape
        placed += 1
    if placed == 0:
        raise CohortError(
            f"{background.path}: no tissue piece could be cut from the background source; use a source with more "
            "tissue or a larger --size"
        )
    rgb = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return ComposedSlide(rgb=rgb, tissue=tissue, pieces=placed)


def lesion_masks(tissue: np.ndarray, areas: list[float], rng: np.random.Generator) -> list[np.ndarray]:
    """One bool mask per lesion: an irregular outline inside the tissue with about the requested area (pixels),
    lesions apart from each other."""
    height, width = tissue.shape
    inside = cv2.distanceTransform(tissue.astype(np.uint8), cv2.DIST_L2, 5)
    taken = np.zeros_like(tissue)
    masks: list[np.ndarray] = []
    for area in areas:
        radius = math.sqrt(area / math.pi)
        free = (inside >= min(0.7 * radius, inside.max() * 0.8)) & ~taken
        ys, xs = np.nonzero(free)
        if len(xs) == 0:
            continue
        i = int(rng.integers(len(xs)))
        centre = np.array([xs[i], ys[i]], dtype=np.float64)
        unit = blob_polygon((0.0, 0.0), 1.0, rng)  # one shape, scaled below
        mask = np.zeros_like(tissue)
        scale = 1.0
        for _ in range(4):  # grow or shrink until the part inside the tissue has about the area wanted
            mask = _fill((height, width), centre + unit * radius * scale) & tissue & ~taken
            got = int(mask.sum())
            if got == 0 or abs(got - area) < 0.1 * area:
                break
            scale *= math.sqrt(area / got)
        if mask.sum() == 0:
            continue
        masks.append(mask)
        taken |= cv2.dilate(mask.astype(np.uint8), np.ones((41, 41), np.uint8)) > 0
    return masks


def paint_lesions(
    slide: ComposedSlide,
    masks: list[np.ndarray],
    lesion: TissueSource,
    rng: np.random.Generator,
    stain: ReinhardNormaliser | MacenkoNormaliser | None = None,
) -> None:
    """Fill each lesion mask with real tumour tissue (a crop of the lesion source, optionally stain-matched),
    blended over a soft border."""
    for mask in masks:
        ys, xs = np.nonzero(mask)
        pad = 6
        y0, y1 = max(0, ys.min() - pad), min(mask.shape[0], ys.max() + pad + 1)
        x0, x1 = max(0, xs.min() - pad), min(mask.shape[1], xs.max() + pad + 1)
        texture = lesion.texture(x1 - x0, y1 - y0, rng)
        if stain is not None:
            texture = stain.transform(texture)
        alpha = _soft(mask[y0:y1, x0:x1], 2.0)  # 1/2 on the outline: the annotation is where the lesion is
        region = slide.rgb[y0:y1, x0:x1].astype(np.float32)
        _paste(region, texture, alpha, 0, 0)
        slide.rgb[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    slide.lesion_masks = masks
