"""Flat images (no pyramid): stripped TIFF, PNG, JPEG, read when OpenSlide does not recognise a file.

Users have such images: crops exported from a viewer, microscope camera frames, stripped TIFFs. They have one level,
so the whole image is decoded once into memory: Pillow reads the header (format, size, resolution) without decoding,
then OpenCV decodes the pixels straight into one RGB array, 3 bytes a pixel (an image with transparency needs 4 more
for a moment). That is only safe up to a size: images above ``max_flat_pixels()`` (default 2**27 = 134 million
pixels, e.g. 11,500 x 11,500; environment variable ``WSI_PIPELINE_MAX_FLAT_PIXELS``) are refused before decoding,
with a message that says how to make a pyramidal TIFF of them. Their resolution comes from the TIFF resolution tags
(PNG pHYs and JPEG density are read the same way); writer defaults such as 72 dpi do not count (see
``slide.resolve_mpp``), so such images are usually tiled with ``--slide-mpp``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SlideOpenError

__all__ = ["FlatImage", "open_flat_image", "max_flat_pixels", "MAX_FLAT_PIXELS_ENV"]

MAX_FLAT_PIXELS_ENV = "WSI_PIPELINE_MAX_FLAT_PIXELS"
_DEFAULT_MAX_PIXELS = 2**27
_CONVERT = (
    "make a pyramidal tiled TIFF of it, e.g. `vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg --Q 90` "
    "(libvips), and tile that"
)


def max_flat_pixels() -> int:
    """The largest flat image (width x height) the fallback reader decodes into memory."""
    raw = os.environ.get(MAX_FLAT_PIXELS_ENV, "").strip()
    if not raw:
        return _DEFAULT_MAX_PIXELS
    try:
        return int(float(raw))
    except ValueError as err:
        raise SlideOpenError(f"{MAX_FLAT_PIXELS_ENV}={raw!r}: expected a number of pixels, e.g. 200e6") from err


class FlatImage:
    """An OpenSlide-like handle on a decoded flat image: one level, ``read_region`` returns RGB ``uint8``.

    Areas outside the image read as white glass, as OpenSlide's transparent areas do after ``Slide`` composites them.
    """

    def __init__(self, rgb: np.ndarray, properties: dict[str, str]) -> None:
        self._rgb: np.ndarray | None = rgb
        self.properties = properties
        self.dimensions = (rgb.shape[1], rgb.shape[0])
        self.level_count = 1
        self.level_dimensions = (self.dimensions,)
        self.level_downsamples = (1.0,)

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        if self._rgb is None:
            raise ValueError("read from a closed flat image")
        if level != 0:
            raise ValueError(f"a flat image has one level; asked for level {level}")
        (x, y), (w, h) = location, size
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        height, width = self._rgb.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._rgb[y0:y1, x0:x1]
        return out

    def close(self) -> None:
        self._rgb = None


def _resolution_properties(image: Any, fmt: str) -> dict[str, str]:
    """TIFF-style resolution keys (``tiff.XResolution``, ``tiff.ResolutionUnit``) from a PIL image's metadata."""
    props: dict[str, str] = {}
    tags = getattr(image, "tag_v2", None)
    if fmt == "TIFF" and tags is not None and 282 in tags:
        unit = {2: "inch", 3: "centimeter"}.get(int(tags.get(296, 2)))
        if unit:
            props = {"tiff.XResolution": str(float(tags[282])), "tiff.ResolutionUnit": unit}
    elif "dpi" in image.info:
        props = {"tiff.XResolution": str(float(image.info["dpi"][0])), "tiff.ResolutionUnit": "inch"}
    return props


def _decode(path: Path, has_alpha: bool) -> np.ndarray | None:
    """RGB ``uint8`` pixels of the file's first page, decoded by OpenCV straight into one array (3 bytes a pixel;
    4 more for a moment when there is an alpha channel, which is composited onto white glass). None when the data
    cannot be decoded. EXIF orientation is ignored: coordinates are those of the stored pixels."""
    import cv2

    flags = (cv2.IMREAD_UNCHANGED if has_alpha else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imread(str(path), flags)
    if pixels is None:
        return None
    if pixels.dtype != np.uint8:  # 16-bit images: keep the high byte
        pixels = (pixels >> 8).astype(np.uint8) if pixels.dtype == np.uint16 else None
        if pixels is None:
            return None
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    if pixels.shape[2] == 4:  # BGRA: composite onto white band by band, so float temporaries stay small
        rgb = np.empty((*pixels.shape[:2], 3), dtype=np.uint8)
        for y in range(0, len(pixels), 512):
            band = pixels[y : y + 512]
            alpha = band[..., 3:].astype(np.float32) / 255
            rgb[y : y + 512] = (band[..., 2::-1] * alpha + 255 * (1 - alpha) + 0.5).astype(np.uint8)
        return rgb
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=pixels)  # in place: no second copy of a big image


def open_flat_image(path: str | Path) -> FlatImage:
    """Decode a flat image into memory, or raise ``SlideOpenError`` saying what the file is and what to do.

    Raises
    ------
    SlideOpenError
        The file is no image Pillow can read (truncated, corrupt, not an image), cannot be decoded, or is larger than
        ``max_flat_pixels()``.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    limit = max_flat_pixels()
    saved = Image.MAX_IMAGE_PIXELS
    try:
        # Our own size check below replaces Pillow's decompression-bomb guard, which would refuse above ~179 MPx
        # (whatever the limit set here) and call a big image "not an image".
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():  # Pillow warns about damaged metadata of files we then refuse or decode
            warnings.simplefilter("ignore")
            image = Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        raise SlideOpenError(
            f"{path}: OpenSlide does not recognise this file and it is no image Pillow can read either (truncated, "
            "corrupt or not a slide); re-export or re-copy it"
        ) from err
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    with image:
        fmt = image.format or path.suffix.lstrip(".").upper()
        width, height = image.size
        pages = getattr(image, "n_frames", 1)
        what = f"a flat {fmt} image of {width} x {height} px" + (
            f" ({pages} pages, the first is read)" if pages > 1 else ""
        )
        if width * height > limit:
            raise SlideOpenError(
                f"{path}: {what} ({width * height / 1e6:.0f} MPx), more than the {limit / 1e6:.0f} MPx a flat image "
                f"may have (it is decoded whole into memory); {_CONVERT}, or raise {MAX_FLAT_PIXELS_ENV}"
            )
        properties = {"openslide.vendor": f"flat-{fmt.lower()}", **_resolution_properties(image, fmt)}
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    rgb = _decode(path, has_alpha)
    if rgb is None or rgb.shape[:2] != (height, width):
        raise SlideOpenError(f"{path}: {what} that cannot be decoded (damaged data); re-export or re-copy it")
    return FlatImage(rgb, properties)
