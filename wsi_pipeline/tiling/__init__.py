"""The tile stage: find tissue, lay a grid at a target mpp, store tile coordinates per slide.

Examples
--------
>>> from wsi_pipeline.discovery import discover_slides
>>> from wsi_pipeline.tiling import TileConfig, tile_slides
>>> result = tile_slides(discover_slides(["slides/"]), "out/", config=TileConfig(target_mpp=0.5))  # doctest: +SKIP
"""

from ._config import EDGE_POLICIES, QcConfig, TileConfig
from ._grid import grid_positions, select_tiles, tissue_fractions
from ._read import TileView, read_tile, resize_tile, tile_read_params
from ._tile import (
    STAGE,
    TileGrid,
    check_store_settings,
    check_store_slide,
    compute_tile_grid,
    discard_stale_store,
    store_changes,
    tile_slide,
    tile_slides,
)

__all__ = [
    "TileConfig",
    "QcConfig",
    "EDGE_POLICIES",
    "tile_slide",
    "tile_slides",
    "compute_tile_grid",
    "check_store_settings",
    "store_changes",
    "check_store_slide",
    "discard_stale_store",
    "TileGrid",
    "STAGE",
    "grid_positions",
    "tissue_fractions",
    "select_tiles",
    "read_tile",
    "resize_tile",
    "tile_read_params",
    "TileView",
]
