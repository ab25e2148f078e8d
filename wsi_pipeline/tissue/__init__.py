"""Tissue detection (``tissue_mask``) and tissue outlines as QuPath-compatible GeoJSON."""

from ._geojson import mask_to_geojson, write_geojson
from ._mask import TissueMaskConfig, pen_mask, tissue_mask, tissue_mask_with_info

__all__ = ["TissueMaskConfig", "tissue_mask", "tissue_mask_with_info", "pen_mask", "mask_to_geojson", "write_geojson"]
