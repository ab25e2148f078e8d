"""Deep-zoom (DZI) pyramids of a slide's own pixels with ``openslide.deepzoom``, written capped or served live.

The report writes levels up to ``max_size`` pixels on the long side (a cap, so 100 slides stay in the hundreds of
MB) and describes them to OpenSeadragon inline (``tile_source``): no ``.dzi`` file is fetched, since Chrome blocks
XHR from ``file://``. ``wsi-pipeline view`` serves every level, read from the slide file on request.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..files import atomic_write_text, temporary_then_rename
from ..slide import Slide
from ..store import provenance

__all__ = ["DeepZoom", "open_deepzoom", "write_pyramid", "read_pyramid_stamp", "tile_source", "PYRAMID_LAYOUT"]

PYRAMID_LAYOUT = 1  # bump when the files written change meaning


SMALL_LEVEL_PX = 2048  # a slide whose smallest level is larger gets one more, made in memory (see below)


class _SlideAsOpenSlide:
    """What ``DeepZoomGenerator`` needs of an OpenSlide object, over a ``Slide`` (OpenSlide or flat image).

    A slide without a small level (a flat image, a single-level TIFF) would have every low Deep Zoom level read
    from its full level again; so it gets one extra level, its thumbnail of at most ``SMALL_LEVEL_PX`` px read once,
    from which the low levels are cut. Slides with a small level of their own are read as they are.
    """

    def __init__(self, slide: Slide) -> None:
        self._slide = slide
        self.properties = slide.properties
        self.dimensions = slide.dimensions
        self.level_dimensions = list(slide.level_dimensions)
        self.level_downsamples = list(slide.level_downsamples)
        self._thumb = None
        self._thumb_level = -1
        if min(max(dims) for dims in self.level_dimensions) > SMALL_LEVEL_PX:
            import numpy as np

            thumb, scale = slide.thumbnail(SMALL_LEVEL_PX)
            self._thumb = np.ascontiguousarray(thumb)
            self._thumb_level = len(self.level_dimensions)
            self.level_dimensions.append((thumb.shape[1], thumb.shape[0]))
            self.level_downsamples.append(float(scale))
        self.level_count = len(self.level_dimensions)

    def get_best_level_for_downsample(self, downsample: float) -> int:
        if self._thumb is not None and downsample >= self.level_downsamples[self._thumb_level]:
            return self._thumb_level
        return int(self._slide.osr.get_best_level_for_downsample(downsample))

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Any:
        from PIL import Image

        if level != self._thumb_level:
            return Image.fromarray(self._slide.read_region(location, level, size)).convert("RGBA")
        import numpy as np

        scale = self.level_downsamples[level]
        x, y = int(location[0] / scale), int(location[1] / scale)
        out = np.full((size[1], size[0], 4), 255, dtype=np.uint8)  # outside the slide: white, as OpenSlide's
        crop = self._thumb[max(y, 0) : y + size[1], max(x, 0) : x + size[0]]
        out[max(-y, 0) : max(-y, 0) + crop.shape[0], max(-x, 0) : max(-x, 0) + crop.shape[1], :3] = crop
        return Image.fromarray(out, "RGBA")


class DeepZoom:
    """A slide's Deep Zoom levels (``openslide.deepzoom.DeepZoomGenerator``), capped at ``top_level``."""

    def __init__(self, slide: Slide, *, tile_size: int = 254, overlap: int = 1, max_size: int | None = None) -> None:
        from openslide.deepzoom import DeepZoomGenerator

        self.slide = slide
        self.tile_size, self.overlap = tile_size, overlap
        self.generator = DeepZoomGenerator(_SlideAsOpenSlide(slide), tile_size=tile_size, overlap=overlap)
        dims = self.generator.level_dimensions
        top = len(dims) - 1
        if max_size:
            while top > 0 and max(dims[top]) > max_size:
                top -= 1
        self.top_level = top
        self.width, self.height = dims[top]

    def tile_jpeg(self, level: int, col: int, row: int, quality: int = 80) -> bytes:
        """One tile as JPEG bytes; ``ValueError`` for a tile outside the (capped) pyramid."""
        if not 0 <= level <= self.top_level:
            raise ValueError(f"no level {level}")
        cols, rows = self.generator.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise ValueError(f"no tile {col}_{row} at level {level}")
        buffer = io.BytesIO()
        self.generator.get_tile(level, (col, row)).save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()


@contextmanager
def open_deepzoom(slide_path: str | Path, **kwargs: Any) -> Iterator[DeepZoom]:
    with Slide(slide_path) as slide:
        yield DeepZoom(slide, **kwargs)


def tile_source(url: str, width: int, height: int, tile_size: int = 254, overlap: int = 1) -> dict[str, Any]:
    """OpenSeadragon's inline DZI description (the JSON form of a ``.dzi`` file): nothing to fetch but tiles."""
    return {
        "Image": {
            "xmlns": "http://schemas.microsoft.com/deepzoom/2008",
            "Url": url,
            "Format": "jpeg",
            "Overlap": str(overlap),
            "TileSize": str(tile_size),
            "Size": {"Width": str(width), "Height": str(height)},
        }
    }


def read_pyramid_stamp(stamp_path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return None


def write_pyramid(
    slide_path: str | Path,
    files_dir: Path,
    stamp_path: Path,
    want: dict[str, Any],
    *,
    max_size: int,
    tile_size: int = 254,
    overlap: int = 1,
    quality: int = 80,
) -> dict[str, Any]:
    """Write the slide's levels up to ``max_size`` px (long side) as ``files_dir/<level>/<col>_<row>.jpeg``.

    ``files_dir`` is filled under a temporary name and renamed when complete; ``stamp_path`` (``want`` plus the
    written size) is written last, so its presence means the pyramid is whole. Returns the stamp.
    """
    files_dir.parent.mkdir(parents=True, exist_ok=True)
    with open_deepzoom(slide_path, tile_size=tile_size, overlap=overlap, max_size=max_size) as dz:
        n_bytes = 0
        with temporary_then_rename(files_dir) as tmp:
            for level in range(dz.top_level + 1):
                folder = tmp / str(level)
                folder.mkdir(parents=True)
                cols, rows = dz.generator.level_tiles[level]
                for row in range(rows):
                    for col in range(cols):
                        data = dz.tile_jpeg(level, col, row, quality)
                        (folder / f"{col}_{row}.jpeg").write_bytes(data)
                        n_bytes += len(data)
        l0_w, l0_h = dz.slide.dimensions
        stamp = {
            **want,
            "width": dz.width,
            "height": dz.height,
            "level0": [l0_w, l0_h],
            "downsample": l0_w / dz.width,
            "levels": dz.top_level + 1,
            "bytes": n_bytes,
            "wsi_pipeline": provenance(),  # what made it (not compared: new versions reuse the same pixels)
        }
    atomic_write_text(stamp_path, json.dumps(stamp, indent=1) + "\n")
    return stamp
