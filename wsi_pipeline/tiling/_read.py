"""Reading one tile of a store the way the tile stage defined it (and the encoder saw it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from ..errors import StoreError
from ..slide import Slide

__all__ = ["read_tile"]


def read_tile(slide: Slide, xy: Sequence[int] | np.ndarray, tiling: Mapping[str, Any]) -> np.ndarray:
    """Tile ``xy`` of a store as an RGB ``uint8`` array ``(tile_size, tile_size, 3)``.

    The region is read at the store's ``tiling.read_level`` (``read_size`` pixels a side, the level closest to the
    target resolution) and resized to ``tiling.tile_size``, as the store layout defines tile ``i``
    (``wsi_pipeline.store``): a 40x slide tiled at 20x costs a quarter of a level-0 read. Stores without
    ``read_level``/``read_size`` (bags made outside ``tile``) are read at level 0 over ``tile_size_level0``.

    Parameters
    ----------
    slide
        The open (or lazily opened) slide of the store.
    xy
        Level-0 ``(x, y)`` of the tile's top-left corner, a row of the store's ``coords``.
    tiling
        The store's ``tiling`` attrs (``read_attrs(store)["tiling"]``).

    Examples
    --------
    >>> from wsi_pipeline.store import read_attrs, read_coords  # doctest: +SKIP
    >>> attrs = read_attrs("stores/CMU-1.zarr")  # doctest: +SKIP
    >>> with Slide(attrs["slide"]["path"]) as slide:  # doctest: +SKIP
    ...     tile = read_tile(slide, read_coords("stores/CMU-1.zarr")[0], attrs["tiling"])  # (224, 224, 3) uint8
    """
    try:
        tile_size = int(tiling["tile_size"])
        if "read_level" in tiling and "read_size" in tiling:
            level, read_size = int(tiling["read_level"]), int(tiling["read_size"])
        else:
            level, read_size = 0, int(round(float(tiling["tile_size_level0"])))
    except (KeyError, TypeError, ValueError) as err:
        raise StoreError(
            f"tiling attrs {dict(tiling)} lack tile_size and read_level/read_size (or tile_size_level0); "
            "remake the store with `wsi-pipeline tile --overwrite`"
        ) from err
    x, y = (int(v) for v in xy)
    rgb = slide.read_region((x, y), level, (read_size, read_size))
    if read_size != tile_size:
        shrink = read_size > tile_size
        rgb = cv2.resize(rgb, (tile_size, tile_size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.ascontiguousarray(rgb)
