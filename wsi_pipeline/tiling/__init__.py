"""The tile stage: find tissue, lay a grid at a target mpp, store tile coordinates per slide.

Examples
--------
>>> from wsi_pipeline.discovery import discover_slides
>>> from wsi_pipeline.tiling import TileConfig, tile_slides
>>> result = tile_slides(discover_slides(["slides/"]), "out/", config=TileConfig(target_mpp=0.5))  # doctest: +SKIP
"""

from .._lazy import lazy_exports

# Loaded on first use: `from wsi_pipeline.tiling import X` imports only X's module (and what it needs).
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "EDGE_POLICIES": "._config",
        "QcConfig": "._config",
        "TileConfig": "._config",
        "grid_positions": "._grid",
        "select_tiles": "._grid",
        "tissue_fractions": "._grid",
        "TileGrid": "._grid",
        "qc_paths": "._qc",
        "qc_thumbnail": "._qc",
        "render_qc": "._qc",
        "write_qc": "._qc",
        "TileView": "._read",
        "read_tile": "._read",
        "resize_tile": "._read",
        "tile_read_params": "._read",
        "STAGE": "._tile",
        "check_store_settings": "._tile",
        "check_store_slide": "._tile",
        "compute_tile_grid": "._tile",
        "discard_stale_store": "._tile",
        "store_changes": "._tile",
        "tile_slide": "._tile",
        "tile_slides": "._tile",
    },
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
    "qc_paths",
    "qc_thumbnail",
    "render_qc",
    "write_qc",
    "read_tile",
    "resize_tile",
    "tile_read_params",
    "TileView",
]
