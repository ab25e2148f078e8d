"""Realistic pyramidal test slides written with tifffile, with a known tissue layout.

Tissue pixels are real H&E from ``slides/CMU-1-Small-Region.svs`` of the test data (``tests/data.py``; tissue-rich
blocks of it, tiled with mirroring) when that file is present, else a synthetic H&E-like texture (pink stroma,
purple nuclei). The background is slightly noisy glass-white. Levels are tiled JPEG (or lossless) TIFF pages,
written tile by tile from a generator, so even a 40k x 30k slide never exists whole in memory.

``vendor="aperio"`` writes an Aperio ImageDescription (OpenSlide reports vendor aperio and ``MPP``);
``vendor="generic"`` writes TIFF resolution tags (OpenSlide's generic-tiff driver reads mpp from them). With
``mpp=None`` neither is written, so the slide has no physical resolution.

Examples
--------
>>> from tests.slide_factory import make_pyramid_slide
>>> made = make_pyramid_slide(tmp / "a.svs", width=4000, height=3000, mpp=0.25,
...                           tissue_boxes=[(500, 400, 2500, 2200)])  # doctest: +SKIP
>>> made.mask(downsample=32).shape  # the true tissue mask at any scale  # doctest: +SKIP
(94, 125)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.data import data_root

__all__ = ["GeneratedSlide", "make_pyramid_slide", "he_texture", "CMU_SMALL", "DEFAULT_BOXES"]

CMU_SMALL = data_root() / "slides" / "CMU-1-Small-Region.svs"

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in level-0 pixels (x1, y1 exclusive)

# Fractions of (width, height): two separate pieces of tissue and a small fragment.
DEFAULT_BOXES: tuple[tuple[float, float, float, float], ...] = (
    (0.10, 0.12, 0.45, 0.70),
    (0.55, 0.30, 0.90, 0.88),
    (0.15, 0.80, 0.30, 0.92),
)

_BACKGROUND = np.array([242, 241, 244], dtype=np.int16)


@dataclass
class GeneratedSlide:
    """A slide written by ``make_pyramid_slide`` and the truth about it."""

    path: Path
    width: int
    height: int
    mpp: float | None
    tissue_boxes: list[Box]
    level_downsamples: list[int] = field(default_factory=list)
    vendor: str = "aperio"
    source: str = "real"

    def mask(self, downsample: float = 1.0, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The true tissue mask at ``downsample`` (level-0 pixels per mask pixel), pixel centres sampled."""
        if shape is None:
            shape = (max(1, round(self.height / downsample)), max(1, round(self.width / downsample)))
        h, w = shape
        sy, sx = self.height / h, self.width / w
        ys = (np.arange(h) + 0.5) * sy
        xs = (np.arange(w) + 0.5) * sx
        return _boxes_mask(self.tissue_boxes, xs, ys)

    def tissue_fraction(self, x: int, y: int, size: float) -> float:
        """Exact fraction of the square ``[x, x+size) x [y, y+size)`` (level 0) covered by tissue boxes."""
        sample = 32
        xs = x + (np.arange(sample) + 0.5) * size / sample
        ys = y + (np.arange(sample) + 0.5) * size / sample
        return float(_boxes_mask(self.tissue_boxes, xs, ys).mean())


def _boxes_mask(boxes: Sequence[Box], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    out = np.zeros((len(ys), len(xs)), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        out |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return out


# --------------------------------------------------------------------------------------------- textures
@functools.lru_cache(maxsize=4)
def he_texture(source: str = "auto", size: int = 1024, seed: int = 0) -> tuple[np.ndarray, str]:
    """A ``size x size`` RGB texture of tissue: real H&E blocks when available (``"auto"``/``"real"``), else synthetic.

    Returns ``(texture, kind)`` with kind ``"real"`` or ``"synthetic"``.
    """
    if source not in ("auto", "real", "synthetic"):
        raise ValueError(f"source {source!r}: expected 'auto', 'real' or 'synthetic'")
    if source != "synthetic" and CMU_SMALL.exists():
        return _real_texture(size, seed), "real"
    if source == "real":
        raise FileNotFoundError(f"{CMU_SMALL}: real H&E pixels not available")
    return _synthetic_texture(size, seed), "synthetic"


def _real_texture(size: int, seed: int) -> np.ndarray:
    import cv2
    import openslide

    with openslide.OpenSlide(str(CMU_SMALL)) as osr:
        w, h = osr.dimensions
        rgb = np.asarray(osr.read_region((0, 0), 0, (w, h)).convert("RGB"))
    block = 128
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    tissue = (hsv[..., 1] > 40) & (hsv[..., 2] < 235)
    candidates = []
    for y in range(0, h - block + 1, block // 2):
        for x in range(0, w - block + 1, block // 2):
            if tissue[y : y + block, x : x + block].mean() > 0.97:
                candidates.append((x, y))
    if not candidates:  # should not happen with CMU-1; keep the factory usable anyway
        return _synthetic_texture(size, seed)
    rng = np.random.default_rng(seed)
    out = np.empty((size, size, 3), dtype=np.uint8)
    for by in range(0, size, block):
        for bx in range(0, size, block):
            x, y = candidates[rng.integers(len(candidates))]
            piece = rgb[y : y + block, x : x + block]
            # Random flips keep the texture from repeating visibly.
            if rng.random() < 0.5:
                piece = piece[:, ::-1]
            if rng.random() < 0.5:
                piece = piece[::-1]
            out[by : by + block, bx : bx + block] = piece[: size - by, : size - bx]
    return out


def _synthetic_texture(size: int, seed: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    stroma = np.array([232, 160, 205], dtype=np.float32)  # eosin pink
    nucleus = np.array([110, 60, 150], dtype=np.float32)  # haematoxylin purple
    fibres = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 6)
    fibres = (fibres - fibres.min()) / (np.ptp(fibres) + 1e-6)
    img = stroma[None, None] * (0.85 + 0.15 * fibres[..., None])
    nuclei = np.zeros((size, size), dtype=np.float32)
    for _ in range(size * size // 600):
        cx, cy = rng.integers(0, size, 2)
        axes = (int(rng.integers(3, 8)), int(rng.integers(3, 8)))
        cv2.ellipse(nuclei, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    nuclei = cv2.GaussianBlur(nuclei, (0, 0), 1.0)[..., None]
    img = img * (1 - nuclei) + nucleus[None, None] * nuclei
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- writing
def _tile_pixels(
    texture: np.ndarray, boxes: Sequence[Box], x: int, y: int, tile: int, downsample: int, noise: np.ndarray
) -> np.ndarray:
    """Tile of a level whose top-left is level pixel (x, y): texture inside boxes, glass elsewhere."""
    xs0 = (x + np.arange(tile)) * downsample
    ys0 = (y + np.arange(tile)) * downsample
    inside = _boxes_mask(boxes, xs0 + downsample / 2, ys0 + downsample / 2)
    size = texture.shape[0]
    out = np.broadcast_to(_BACKGROUND, (tile, tile, 3)) + noise
    if inside.any():
        # Texture coordinates follow level-0 pixels, so every level shows the same tissue.
        tex = texture[np.ix_(ys0 % size, xs0 % size)]
        out = np.where(inside[..., None], tex.astype(np.int16), out)
    return np.clip(out, 0, 255).astype(np.uint8)


def make_pyramid_slide(
    path: str | Path,
    *,
    width: int = 4000,
    height: int = 3000,
    mpp: float | None = 0.25,
    tissue_boxes: Sequence[Box] | None = None,
    tile: int = 256,
    levels: int | None = None,
    level_factor: int = 4,
    vendor: str = "aperio",
    source: str = "auto",
    jpeg: bool = True,
    quality: int = 85,
    seed: int = 0,
) -> GeneratedSlide:
    """Write a tiled pyramidal TIFF slide with tissue in known boxes; return its description and true mask.

    Parameters
    ----------
    path
        Output file (``.svs`` for Aperio-style, ``.tiff``/``.tif`` for generic).
    width, height
        Level-0 size in pixels.
    mpp
        Microns per pixel at level 0, or None for a slide without physical resolution.
    tissue_boxes
        ``(x0, y0, x1, y1)`` level-0 rectangles of tissue; default: ``DEFAULT_BOXES`` scaled to the slide.
    tile
        TIFF tile size (a multiple of 16).
    levels
        Number of pyramid levels; default: until the smallest level's longer side is below ~1500 px.
    level_factor
        Downsample between consecutive levels (Aperio uses 4, many scanners 2).
    vendor
        ``"aperio"`` (ImageDescription with ``MPP = x``) or ``"generic"`` (TIFF resolution tags).
    source
        ``"auto"`` (real H&E when the test data is there), ``"real"`` or ``"synthetic"``.
    jpeg
        JPEG tiles (realistic, lossy) or zlib (lossless).
    """
    import tifffile

    if vendor not in ("aperio", "generic"):
        raise ValueError(f"vendor {vendor!r}: expected 'aperio' or 'generic'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tissue_boxes is None:
        tissue_boxes = [
            (round(a * width), round(b * height), round(c * width), round(d * height)) for a, b, c, d in DEFAULT_BOXES
        ]
    boxes = [tuple(int(v) for v in box) for box in tissue_boxes]
    if levels is None:
        levels = 1
        while max(width, height) / level_factor ** (levels - 1) > 1500 and levels < 8:
            levels += 1
    downsamples = [level_factor**k for k in range(levels)]
    texture, kind = he_texture(source, 1024, seed)
    rng = np.random.default_rng(seed + 1)
    noise = rng.normal(0, 2.0, (tile, tile, 3)).astype(np.int16)

    def tiles(level_w: int, level_h: int, ds: int) -> Iterator[np.ndarray]:
        for ty in range(0, level_h, tile):
            for tx in range(0, level_w, tile):
                yield _tile_pixels(texture, boxes, tx, ty, tile, ds, noise)

    compression = "jpeg" if jpeg else "zlib"
    compressionargs = {"level": quality} if jpeg else {}
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as tif:
        for k, ds in enumerate(downsamples):
            level_w, level_h = math.ceil(width / ds), math.ceil(height / ds)
            kwargs: dict = {}
            if k == 0:
                if vendor == "aperio":
                    desc = f"Aperio Image Library v12.0.15\n{width}x{height} ({tile}x{tile}) JPEG/RGB Q={quality}"
                    desc += "|AppMag = 20" if mpp is None else f"|AppMag = {round(10 / mpp)}|MPP = {mpp}"
                    kwargs["description"] = desc
                else:
                    kwargs["description"] = "generated by tests/slide_factory.py"
                    if mpp is not None:
                        kwargs["resolution"] = (1e4 / mpp, 1e4 / mpp)
                        kwargs["resolutionunit"] = "CENTIMETER"
            else:
                kwargs["subfiletype"] = 1
                if vendor == "aperio":
                    kwargs["description"] = f"Aperio Image Library v12.0.15\n{width}x{height} -> {level_w}x{level_h}"
                elif mpp is not None:
                    kwargs["resolution"] = (1e4 / (mpp * ds), 1e4 / (mpp * ds))
                    kwargs["resolutionunit"] = "CENTIMETER"
            tif.write(
                tiles(level_w, level_h, ds),
                shape=(level_h, level_w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                compressionargs=compressionargs,
                metadata=None,
                **kwargs,
            )
    return GeneratedSlide(
        path=path,
        width=width,
        height=height,
        mpp=mpp,
        tissue_boxes=list(boxes),
        level_downsamples=downsamples,
        vendor=vendor,
        source=kind,
    )
