"""The ``Slide``: a lazily opened OpenSlide handle with physical resolution and bounded-memory reads.

OpenSlide reads .svs .ndpi .mrxs .scn .vms .bif, generic tiled TIFF and DICOM (give the path of one ``.dcm`` of the
series). A file OpenSlide does not recognise is tried as a flat image (stripped TIFF, PNG, JPEG: ``flat_image``),
decoded whole into memory up to a size limit. Pixels come back as RGB ``uint8`` arrays, transparent areas
composited onto white (what a glass slide's background looks like), so tissue detection and encoders see the same
pixels everywhere.

Examples
--------
>>> with Slide("CMU-1-Small-Region.svs") as slide:  # doctest: +SKIP
...     slide.mpp, slide.dimensions
...     overview, scale = slide.read_at_mpp(8.0)   # whole slide at ~8 um/px, never level 0 in full
...     tile = slide.read_region((1000, 1000), 0, (224, 224))
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import openslide

from .errors import MissingMppError, SlideOpenError, SlideReadError

if TYPE_CHECKING:
    from .flat_image import FlatImage

__all__ = ["Slide", "resolve_mpp"]

# Generic TIFF writers store 72 or 96 dpi when they know no resolution; OpenSlide turns those into
# ~352.8 or ~264.6 um/px. Such values describe a screen, not a scanner, so they count as "no mpp".
_DEFAULT_DPI_MPP = (25400 / 72, 25400 / 96)
_PLAUSIBLE_MPP = (0.05, 50.0)
_READ_CHUNK = 4096  # level pixels per side of each region read when building a downsampled picture


def resolve_mpp(
    properties: dict[str, str], override: float | None = None, default: float | None = None
) -> tuple[float | None, str]:
    """The slide's microns per pixel and where it came from, or ``(None, reason)``.

    Order: an explicit per-slide override, OpenSlide's ``openslide.mpp-x/y`` (which covers Aperio, Hamamatsu,
    MIRAX, DICOM, Leica and TIFF resolution tags), then vendor keys OpenSlide may leave unparsed, then ``default``
    (``--slide-mpp``: one value for the slides that state none). TIFF resolutions that are writer defaults
    (72/96 dpi) or outside a plausible microscope range are refused.
    """
    if override is not None:
        return _checked(override, "override"), "override"
    value, source = _metadata_mpp(properties)
    if value is None and default is not None:
        return _checked(default, "--slide-mpp"), "slide_mpp"
    return value, source


def _checked(mpp: float, what: str) -> float:
    if not _PLAUSIBLE_MPP[0] <= mpp <= _PLAUSIBLE_MPP[1]:
        raise MissingMppError(f"{what} {mpp} is outside {_PLAUSIBLE_MPP}; give microns per pixel")
    return float(mpp)


def _metadata_mpp(properties: dict[str, str]) -> tuple[float | None, str]:
    """The resolution the slide states itself, or ``(None, why not)``."""
    candidates = [
        ("openslide.mpp-x", properties.get("openslide.mpp-x")),
        ("aperio.MPP", properties.get("aperio.MPP")),
        ("tiff.XResolution", _mpp_from_tiff_tags(properties)),
    ]
    for key, raw in candidates:
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if not math.isfinite(value) or value <= 0:
            continue
        from_tiff_tags = key == "tiff.XResolution" or (key == "openslide.mpp-x" and "tiff.XResolution" in properties)
        if from_tiff_tags and any(abs(value - d) / d < 1e-3 for d in _DEFAULT_DPI_MPP):
            return None, f"its TIFF resolution ({value:.1f} um/px) is a {round(25400 / value)}-dpi writer default"
        if not _PLAUSIBLE_MPP[0] <= value <= _PLAUSIBLE_MPP[1]:
            return None, f"{key}={value:g} is not a plausible scan resolution"
        return value, key
    return None, "no microns-per-pixel in its metadata"


def _mpp_from_tiff_tags(properties: dict[str, str]) -> str | None:
    """mpp from TIFF resolution tags when OpenSlide left them unparsed (unit inch or centimeter only)."""
    unit = properties.get("tiff.ResolutionUnit", "").lower()
    per_unit_um = {"centimeter": 1e4, "inch": 25400.0}.get(unit)
    try:
        resolution = float(properties.get("tiff.XResolution", ""))
    except ValueError:
        return None
    if per_unit_um is None or not resolution > 0:
        return None
    return str(per_unit_um / resolution)


class Slide:
    """A whole-slide image, opened lazily on first use; usable as a context manager.

    Parameters
    ----------
    path
        The slide file (for DICOM, any ``.dcm`` of the series).
    mpp
        Microns per pixel at level 0 to use instead of the slide's own metadata.
    slide_id
        Stable identifier used in output names; defaults to the file stem.
    default_mpp
        Microns per pixel for a slide whose metadata states none (``--slide-mpp``); the slide's own value wins.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        mpp: float | None = None,
        slide_id: str | None = None,
        default_mpp: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.slide_id = slide_id or self.path.stem
        self._mpp_override = mpp
        self._default_mpp = default_mpp
        self._osr: openslide.OpenSlide | FlatImage | None = None

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> Slide:
        if self._osr is None:
            if not self.path.exists():
                raise SlideOpenError(_missing(self.path))
            try:
                self._osr = openslide.OpenSlide(str(self.path))
            except openslide.OpenSlideUnsupportedFormatError:
                # Not a format OpenSlide knows: maybe a flat image (stripped TIFF, PNG, JPEG). Its error says what
                # the file is and what to do when it is none either, or too big to decode whole.
                from .flat_image import open_flat_image

                self._osr = open_flat_image(self.path)
            except (openslide.OpenSlideError, OSError) as err:
                raise SlideOpenError(f"{self.path}: OpenSlide cannot open it ({err}); re-export or re-copy it") from err
        return self

    def close(self) -> None:
        if self._osr is not None:
            self._osr.close()
            self._osr = None

    def __enter__(self) -> Slide:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for DataLoader workers: each process opens its own handle.
        return {**self.__dict__, "_osr": None}

    @property
    def osr(self) -> openslide.OpenSlide | FlatImage:
        return self.open()._osr  # type: ignore[return-value]

    # ------------------------------------------------------------------ metadata
    @property
    def properties(self) -> dict[str, str]:
        return dict(self.osr.properties)

    @property
    def vendor(self) -> str:
        return self.osr.properties.get("openslide.vendor", "unknown")

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        return tuple(self.osr.dimensions)  # type: ignore[return-value]

    @property
    def level_count(self) -> int:
        return self.osr.level_count

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [tuple(d) for d in self.osr.level_dimensions]  # type: ignore[misc]

    @property
    def level_downsamples(self) -> list[float]:
        return [float(d) for d in self.osr.level_downsamples]

    def mpp_info(self) -> tuple[float | None, str]:
        """``(mpp, source)``, with ``mpp`` None (and the reason in ``source``) when unknown."""
        return resolve_mpp(self.properties, self._mpp_override, self._default_mpp)

    def mpp_note(self) -> str:
        """Why ``default_mpp`` (``--slide-mpp``) was not used, when it contradicts the slide's own resolution by
        more than 10% (one of the two is wrong: the user should know); empty otherwise."""
        if self._default_mpp is None or self._mpp_override is not None:
            return ""
        own, source = _metadata_mpp(self.properties)
        if own is None or abs(self._default_mpp - own) <= 0.1 * own:
            return ""
        return (
            f"{self.path}: --slide-mpp {self._default_mpp:g} ignored, the slide states {own:.4g} um/px ({source}); "
            "to override a slide's own resolution give it its own value (--mpp-csv or a manifest mpp column)"
        )

    def identity(self) -> dict[str, Any]:
        """Path-independent facts that tell this slide from any other, cheap to read: size in bytes, level-0
        dimensions, vendor, level count, a hash of the properties and of the file's first and last 64 KiB. A moved
        or copied slide keeps its identity; a replaced or re-scanned one does not."""
        from .provenance import fingerprint, head_tail_sha256

        width, height = self.dimensions
        return {
            "bytes": self.path.stat().st_size,
            "width": width,
            "height": height,
            "vendor": self.vendor,
            "level_count": self.level_count,
            "properties_sha256": fingerprint(self.properties),
            "head_tail_sha256": head_tail_sha256(self.path),
        }

    @property
    def mpp(self) -> float:
        """Microns per pixel at level 0; raises ``MissingMppError`` when neither metadata nor override give it."""
        value, source = self.mpp_info()
        if value is None:
            raise MissingMppError(
                f"{self.path}: {source}; pass --slide-mpp MPP or a per-slide CSV (--mpp-csv, columns slide,mpp)"
            )
        return value

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """The coarsest level whose resolution is at least as fine as ``target_mpp`` (level 0 if none is)."""
        best = 0
        for level in range(self.level_count):
            if self.level_mpp(level) <= target_mpp * 1.001:
                best = level
        return best

    def info(self) -> dict[str, Any]:
        """JSON-safe description recorded in every store."""
        mpp, source = self.mpp_info()
        width, height = self.dimensions
        return {
            "id": self.slide_id,
            "path": str(self.path.resolve()),
            "vendor": self.vendor,
            "width": width,
            "height": height,
            "mpp": mpp,
            "mpp_x": mpp,
            "mpp_y": self._mpp_y(mpp, source),
            "mpp_source": source,
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": self.level_downsamples,
            "objective_power": self.osr.properties.get("openslide.objective-power"),
            "identity": self.identity(),
        }

    def _mpp_y(self, mpp_x: float | None, source: str) -> float | None:
        # Pixels are square for every scanner we know; record mpp-y when the slide states its own.
        if mpp_x is None or source in ("override", "slide_mpp"):
            return mpp_x
        try:
            return float(self.osr.properties["openslide.mpp-y"])
        except (KeyError, ValueError):
            return mpp_x

    # ------------------------------------------------------------------ pixels
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB ``uint8`` array (h, w, 3) of ``size`` level pixels whose top-left is ``location`` in level-0 pixels."""
        try:
            rgba = np.asarray(self.osr.read_region((int(location[0]), int(location[1])), level, size))
        except openslide.OpenSlideError as err:
            raise SlideReadError(
                f"{self.path}: cannot decode the region at {location} level {level} ({err}); the file is damaged"
            ) from err
        if rgba.shape[-1] == 3:  # a flat image reads RGB on white already
            return rgba
        return _rgba_to_rgb_on_white(rgba)

    def read_at_mpp(self, target_mpp: float) -> tuple[np.ndarray, float]:
        """The whole slide as one RGB picture at about ``target_mpp``, with bounded memory.

        Reads the coarsest pyramid level at least as fine as the target in chunks of ``_READ_CHUNK`` pixels and
        shrinks each chunk (area interpolation), so level 0 of a big slide is never held in memory.

        Returns
        -------
        image, scale
            ``scale`` is level-0 pixels per output pixel (x and y share it up to rounding).
        """
        level = self.best_level_for_mpp(target_mpp)
        level_w, level_h = self.level_dimensions[level]
        factor = max(1.0, target_mpp / self.level_mpp(level))  # level pixels per output pixel
        out_w, out_h = max(1, round(level_w / factor)), max(1, round(level_h / factor))
        image = self._read_level_resized(level, out_w, out_h)
        return image, self.level_downsamples[level] * level_w / out_w

    def thumbnail(self, max_size: int = 2048) -> tuple[np.ndarray, float]:
        """A picture of the whole slide whose longer side is at most ``max_size``; returns ``(image, scale)``."""
        width, height = self.dimensions
        scale0 = max(width, height) / max_size  # level-0 px per output px
        if scale0 <= 1:
            return self.read_region((0, 0), 0, (width, height)), 1.0
        level = self.osr.get_best_level_for_downsample(scale0)
        level_w, level_h = self.level_dimensions[level]
        factor = scale0 / self.level_downsamples[level]
        out_w, out_h = max(1, round(level_w / factor)), max(1, round(level_h / factor))
        return self._read_level_resized(level, out_w, out_h), width / out_w

    def _read_level_resized(self, level: int, out_w: int, out_h: int) -> np.ndarray:
        """Level ``level`` shrunk to ``out_w x out_h``, read in chunks so memory stays bounded."""
        level_w, level_h = self.level_dimensions[level]
        level_down = self.level_downsamples[level]
        if (out_w, out_h) == (level_w, level_h) and level_w * level_h <= _READ_CHUNK * _READ_CHUNK:
            return self.read_region((0, 0), level, (level_w, level_h))
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        sx, sy = out_w / level_w, out_h / level_h
        for y0 in range(0, level_h, _READ_CHUNK):
            for x0 in range(0, level_w, _READ_CHUNK):
                w, h = min(_READ_CHUNK, level_w - x0), min(_READ_CHUNK, level_h - y0)
                ox0, oy0 = round(x0 * sx), round(y0 * sy)
                ox1, oy1 = round((x0 + w) * sx), round((y0 + h) * sy)
                if ox1 <= ox0 or oy1 <= oy0:
                    continue
                chunk = self.read_region((round(x0 * level_down), round(y0 * level_down)), level, (w, h))
                out[oy0:oy1, ox0:ox1] = cv2.resize(chunk, (ox1 - ox0, oy1 - oy0), interpolation=cv2.INTER_AREA)
        return out

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, slide_id={self.slide_id!r})"


def _rgba_to_rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite OpenSlide's premultiplied RGBA onto white."""
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)  # drops alpha ~20x faster than a numpy copy of rgba[..., :3]
    rgb = rgba[..., :3]
    # OpenSlide returns premultiplied colour, so background = colour + (255 - alpha).
    out = rgb.astype(np.uint16) + (255 - alpha)[..., None].astype(np.uint16)
    return np.minimum(out, 255).astype(np.uint8)


def _missing(path: Path) -> str:
    """Why ``path`` cannot be opened when it does not exist: no file, a symlink loop, or a link to nothing."""
    import errno
    import os

    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                return f"{path}: a symbolic link loop (it leads back to itself); point it at the slide or remove it"
        return f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; fix or remove the link"
    return f"{path}: no such file; check the slide path or manifest"
