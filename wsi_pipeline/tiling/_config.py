"""``TileConfig``: every setting of the tile stage (defaults mirrored in ``configs/tile.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..tissue import TissueMaskConfig

__all__ = ["TileConfig", "QcConfig", "EDGE_POLICIES"]

EDGE_POLICIES = ("drop", "pad")


@dataclass
class QcConfig:
    """QC outputs written beside the stores: ``qc/<slide_id>.jpg`` and ``geojson/<slide_id>.geojson``."""

    enabled: bool = True
    geojson: bool = True
    thumbnail_size: int = 1024


@dataclass
class TileConfig:
    """Settings of ``tile_slide``/``tile_slides``.

    Attributes
    ----------
    target_mpp
        Microns per pixel of the tiles (0.5 is about 20x, 0.25 about 40x).
    tile_size
        Tile side in pixels at ``target_mpp``.
    stride
        Grid step in pixels at ``target_mpp``; None means ``tile_size`` (no overlap), smaller values overlap.
    min_tissue
        Keep a tile when at least this fraction of it is tissue (0 keeps every tile, 1 only tiles fully inside).
    mask_mpp
        Resolution of the picture the tissue mask is computed on (8-16 um/px: detailed enough, always small).
    edge
        ``"drop"``: only tiles lying wholly inside the slide; ``"pad"``: also tiles crossing the right/bottom edge,
        whose outside part reads as white glass.
    max_tiles
        Keep at most this many tiles per slide (a seeded random subset, still in row-major order); None keeps all.
    seed
        Seed of that subset.
    mask
        Tissue detection settings.
    qc
        QC picture and GeoJSON settings (not part of the tiling signature: changing them never invalidates a store).
    """

    target_mpp: float = 0.5
    tile_size: int = 224
    stride: int | None = None
    min_tissue: float = 0.5
    mask_mpp: float = 8.0
    edge: Literal["drop", "pad"] = "drop"
    max_tiles: int | None = None
    seed: int = 0
    mask: TissueMaskConfig = field(default_factory=TissueMaskConfig)
    qc: QcConfig = field(default_factory=QcConfig)

    def __post_init__(self) -> None:
        if not self.target_mpp > 0:
            raise ValueError(f"target_mpp must be > 0 (microns per pixel), got {self.target_mpp}")
        if self.tile_size < 8:
            raise ValueError(f"tile_size must be at least 8 pixels, got {self.tile_size}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1 pixel (or null for tile_size), got {self.stride}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"min_tissue is a fraction between 0 and 1, got {self.min_tissue}")
        if not self.mask_mpp > 0:
            raise ValueError(f"mask_mpp must be > 0, got {self.mask_mpp}")
        if self.edge not in EDGE_POLICIES:
            raise ValueError(f"edge {self.edge!r}: expected one of {', '.join(EDGE_POLICIES)}")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ValueError(f"max_tiles must be >= 1 or null, got {self.max_tiles}")

    @property
    def step(self) -> int:
        """The grid step in target pixels (``stride`` or ``tile_size``)."""
        return self.stride or self.tile_size

    def signature(self) -> dict[str, Any]:
        """The settings that decide which tiles a store holds (everything but ``qc``)."""
        from ..config import config_to_dict

        data = config_to_dict(self)
        data.pop("qc", None)
        data["stride"] = self.step
        return data
