"""Reading one tile of a store: the one function behind ``embed``'s readers and ``predict``'s top tiles.

A store defines tile ``i`` as the ``read_size`` square at ``read_level`` whose top-left is ``coords[i]``
(``wsi_pipeline.store``). ``read_tile`` turns it into a picture of the store's ``tile_size``, or into exactly what an
encoder sees (``TileView``: its resize, interpolation and centre crop). Shrinking is always anti-aliased
(``INTER_AREA``: each output pixel averages the input pixels it covers); bicubic or bilinear kernels without
anti-aliasing alias at 2x and beyond (a 40x scan tiled at 20x), which changes embeddings (cosine ~0.96).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..errors import StoreError
from ..slide import Slide

__all__ = ["TileView", "read_tile", "resize_tile", "tile_read_params"]

_ENLARGE = {
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_LINEAR,  # area averaging is a shrinking rule; enlarging with it is bilinear
    "nearest": cv2.INTER_NEAREST,
}


@dataclass(frozen=True)
class TileView:
    """How a tile becomes a picture: resized to ``size`` (``None``: the store's ``tile_size``), then centre-cropped
    to ``crop`` (``None``: no crop). ``interpolation`` is used when enlarging; shrinking is always anti-aliased.

    An encoder's view is ``TileView(resize_size, input_size, interpolation)`` of its preset
    (``wsi_pipeline.embedding.encoder_view``); ``from_attrs`` rebuilds it from the attrs of stored embeddings.
    """

    size: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in _ENLARGE:
            raise ValueError(f"interpolation {self.interpolation!r}: expected one of {', '.join(_ENLARGE)}")
        if self.size is not None and self.crop is not None and self.crop > self.size:
            raise ValueError(f"crop {self.crop} is larger than the resized tile ({self.size})")
        if self.crop is not None and self.crop == self.size:
            object.__setattr__(self, "crop", None)  # cropping to the whole tile is no crop: one way to say it

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TileView:
        """The view recorded with ``features/<encoder>`` (``resize_size``, ``input_size``, ``interpolation``)."""
        size = attrs.get("resize_size", attrs.get("input_size"))
        crop = attrs.get("input_size")
        return cls(
            size=None if size is None else int(size),
            crop=None if crop is None else int(crop),
            interpolation=str(attrs.get("interpolation", "bicubic")),
        )


def tile_read_params(tiling: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(read_level, read_size, tile_size)`` of a store's ``tiling`` attrs.

    Stores without ``read_level``/``read_size`` (bags made outside ``tile``) are read at level 0 over
    ``tile_size_level0``.
    """
    try:
        tile_size = int(tiling["tile_size"])
        if "read_level" in tiling and "read_size" in tiling:
            return int(tiling["read_level"]), int(tiling["read_size"]), tile_size
        return 0, int(round(float(tiling["tile_size_level0"]))), tile_size
    except (KeyError, TypeError, ValueError) as err:
        raise StoreError(
            f"tiling attrs {dict(tiling)} lack tile_size and read_level/read_size (or tile_size_level0); "
            "remake the store with `wsi-pipeline tile --overwrite`"
        ) from err


def resize_tile(rgb: np.ndarray, size: int, *, crop: int | None = None, interpolation: str = "bilinear") -> np.ndarray:
    """A square RGB ``uint8`` tile resized to ``size`` (anti-aliased when shrinking) and centre-cropped to ``crop``."""
    if rgb.shape[0] != size or rgb.shape[1] != size:
        shrink = rgb.shape[0] > size and rgb.shape[1] > size
        rule = cv2.INTER_AREA if shrink else _ENLARGE[interpolation]
        rgb = cv2.resize(rgb, (size, size), interpolation=rule)
    if crop is not None and crop != size:
        top = (size - crop) // 2
        rgb = rgb[top : top + crop, top : top + crop]
    return np.ascontiguousarray(rgb)


def read_tile(
    slide: Slide, xy: Sequence[int] | np.ndarray, tiling: Mapping[str, Any], view: TileView | None = None
) -> np.ndarray:
    """Tile ``xy`` of a store as an RGB ``uint8`` array: ``(tile_size, tile_size, 3)``, or the ``view``'s picture.

    The region is read at the store's ``tiling.read_level`` (``read_size`` pixels a side, the level closest to the
    target resolution; a 40x slide tiled at 20x costs a quarter of a level-0 read) and resized once, straight to
    the view's size: ``embed`` reads every tile with this function and an encoder's view, and ``predict`` saves its
    top tiles with the same view, so they are the pixels the encoder saw.

    Parameters
    ----------
    slide
        The open (or lazily opened) slide of the store.
    xy
        Level-0 ``(x, y)`` of the tile's top-left corner, a row of the store's ``coords``.
    tiling
        The store's ``tiling`` attrs (``read_attrs(store)["tiling"]``).
    view
        ``None``: the store's tile (``tile_size``, bilinear when enlarging); an encoder's view otherwise.

    Examples
    --------
    >>> from wsi_pipeline.store import read_attrs, read_coords  # doctest: +SKIP
    >>> attrs = read_attrs("stores/CMU-1.zarr")  # doctest: +SKIP
    >>> with Slide(attrs["slide"]["path"]) as slide:  # doctest: +SKIP
    ...     tile = read_tile(slide, read_coords("stores/CMU-1.zarr")[0], attrs["tiling"])  # (224, 224, 3) uint8
    """
    level, read_size, tile_size = tile_read_params(tiling)
    view = view or TileView()
    x, y = (int(v) for v in xy)
    rgb = slide.read_region((x, y), level, (read_size, read_size))
    return resize_tile(rgb, view.size or tile_size, crop=view.crop, interpolation=view.interpolation)
