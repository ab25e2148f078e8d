"""Tissue detection (``tissue_mask``) and tissue outlines as QuPath-compatible GeoJSON."""

from .._lazy import lazy_exports

# Loaded on first use: `from wsi_pipeline.tissue import X` imports only X's module (and what it needs).
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mask_to_geojson": "._geojson",
        "write_geojson": "._geojson",
        "TissueMaskConfig": "._config",
        "pen_mask": "._mask",
        "tissue_mask": "._mask",
        "tissue_mask_with_info": "._mask",
    },
)

__all__ = ["TissueMaskConfig", "tissue_mask", "tissue_mask_with_info", "pen_mask", "mask_to_geojson", "write_geojson"]
