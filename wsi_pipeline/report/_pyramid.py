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
        return _jpeg(self.generator.get_tile(level, (col, row)), quality)


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
        with temporary_then_rename(files_dir) as tmp:
            n_bytes = _write_levels(dz, tmp, quality)
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


def _write_levels(dz: DeepZoom, folder: Path, quality: int) -> int:
    """Write every level of ``dz`` up to its top as ``folder/<level>/<col>_<row>.jpeg``; return the bytes written.

    The top level's tiles are ``DeepZoomGenerator``'s (what ``view`` serves); each level below is made from the
    level above by 2 x 2 means, a band of rows at a time, rather than read from the slide again: reading each lower
    level's regions through OpenSlide cost as much again as the top level (Deep Zoom level 11 of a 4096 px slide
    reads its 512 px regions from level 0). Memory: a band of tile rows per level.
    """
    import cv2
    import numpy as np

    n_bytes = 0

    def write(level: int, col: int, row: int, pixels: Any) -> None:
        nonlocal n_bytes
        data = _jpeg(pixels, quality)
        (folder / str(level) / f"{col}_{row}.jpeg").write_bytes(data)
        n_bytes += len(data)

    top = dz.top_level
    for level in range(top + 1):
        (folder / str(level)).mkdir(parents=True)
    size, overlap = dz.tile_size, dz.overlap
    below = None
    for level in range(top):  # from level 0 up, so that each knows the level below it
        width, height = dz.generator.level_dimensions[level]
        below = _HalvedLevel(level, width, height, size, overlap, write, below)
    cols, rows = dz.generator.level_tiles[top]
    for row in range(rows):
        band = []
        for col in range(cols):
            tile = dz.generator.get_tile(top, (col, row))
            write(top, col, row, tile)
            if below is None:
                continue
            top_y, bottom_y = _span(row, size, overlap, dz.height)
            left_x, right_x = _span(col, size, overlap, dz.width)
            pixels = np.asarray(tile)
            if pixels.shape[:2] != (bottom_y - top_y, right_x - left_x):  # 1 px short when resized (kept aspect)
                pixels = cv2.resize(pixels, (right_x - left_x, bottom_y - top_y), interpolation=cv2.INTER_AREA)
            up, left = row * size - top_y, col * size - left_x  # without the overlap: the tile's own pixels
            band.append(
                pixels[up : up + min(size, dz.height - row * size), left : left + min(size, dz.width - col * size)]
            )
        if below is not None:
            below.push(np.concatenate(band, axis=1))
    if below is not None:
        below.finish()
    return n_bytes


def _jpeg(pixels: Any, quality: int) -> bytes:
    from PIL import Image

    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class _HalvedLevel:
    """A Deep Zoom level below the top one, made as the rows of the level above arrive (``push``): each pair of
    rows becomes one row of 2 x 2 means (an odd last row or column is averaged alone, as a level's size is the
    ceiling of half the one above). A row of tiles is written as soon as its rows, with the overlap, are in; rows
    no tile needs any more are dropped; each finished row is passed on to the level below."""

    def __init__(
        self, level: int, width: int, height: int, tile_size: int, overlap: int, write: Any, below: Any
    ) -> None:
        import numpy as np

        self.level, self.width, self.height = level, width, height
        self.tile_size, self.overlap, self.write, self.below = tile_size, overlap, write, below
        self.rows = np.zeros((0, width, 3), dtype=np.uint8)  # this level's rows from ``first`` on
        self.first = self.made = self.tile_row = 0
        self.odd: Any = None  # a row of the level above waiting for its pair
        self.tile_rows = -(-height // tile_size)
        self.tile_cols = -(-width // tile_size)

    def push(self, above: Any) -> None:
        import numpy as np

        if self.odd is not None:
            above, self.odd = np.concatenate([self.odd, above]), None
        if len(above) % 2:
            above, self.odd = above[:-1], above[-1:]
        if len(above):
            self._add(_halve(above))

    def finish(self) -> None:
        import numpy as np

        if self.odd is not None:
            self._add(_halve(np.concatenate([self.odd, self.odd])))
            self.odd = None
        if self.made != self.height:
            raise RuntimeError(f"Deep Zoom level {self.level}: made {self.made} rows of {self.height}")
        if self.below is not None:
            self.below.finish()

    def _add(self, rows: Any) -> None:
        import numpy as np

        self.rows = np.concatenate([self.rows, rows])
        self.made += len(rows)
        if self.below is not None:
            self.below.push(rows)
        size, overlap = self.tile_size, self.overlap
        while self.tile_row < self.tile_rows:
            row = self.tile_row
            top, bottom = _span(row, size, overlap, self.height)
            if self.made < bottom:
                return
            band = self.rows[top - self.first : bottom - self.first]
            for col in range(self.tile_cols):
                left, right = _span(col, size, overlap, self.width)
                self.write(self.level, col, row, np.ascontiguousarray(band[:, left:right]))
            self.tile_row += 1
            keep_from = (row + 1) * size - overlap  # where the next row of tiles starts
            if keep_from > self.first:
                self.rows = self.rows[keep_from - self.first :]
                self.first = keep_from


def _span(index: int, tile_size: int, overlap: int, length: int) -> tuple[int, int]:
    """Where Deep Zoom tile ``index`` starts and stops along a level of ``length`` px: its own ``tile_size`` px and
    ``overlap`` px of each neighbour, within the level."""
    return max(0, index * tile_size - overlap), min(length, (index + 1) * tile_size + overlap)


def _halve(rows: Any) -> Any:
    """2 x 2 means of an even number of rows; an odd last column is averaged with itself."""
    import cv2
    import numpy as np

    if rows.shape[1] % 2:
        rows = np.concatenate([rows, rows[:, -1:]], axis=1)
    height, width = rows.shape[0] // 2, rows.shape[1] // 2
    return cv2.resize(rows, (width, height), interpolation=cv2.INTER_AREA)  # at exactly 1/2: the 2 x 2 means
