"""Reading tiles for the encoder in DataLoader workers: tiles of many slides, one stream, one handle per slide.

The stream (``_stream.py``) hands the workers ``TileRef`` batches that may span slides. Each worker opens a slide
when its first tile comes and keeps the few most recent handles open (slides arrive in order, so a handle is
reused for all of a slide's tiles it reads). A tile that cannot be read is returned as an error line, never raised:
an exception would end the whole stream, and one bad slide must only fail itself. Workers return ``uint8`` tiles
already at the encoder's input size (``read_tile`` with the encoder's ``TileView``); conversion to float and
normalisation happen on the device (``to_model_input``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..batch import one_line
from ..encoders import EncoderConfig
from ..errors import SlideOpenError
from ..slide import Slide
from ..tiling import TileView, read_tile

__all__ = ["TileRef", "TileReader", "TileBatch", "encoder_view", "to_model_input"]

_OPEN_SLIDES = 4  # handles each worker keeps: the slide being read and the ones just before it
_BROKEN_KEEP = 1024  # failed slides a worker remembers, so it stops reading their other tiles


def encoder_view(spec: EncoderConfig) -> TileView:
    """What the encoder sees of a tile: resized to its ``resize_size``, centre-cropped to its ``input_size``."""
    return TileView(size=spec.resize_size, crop=spec.input_size, interpolation=spec.interpolation)


def to_model_input(
    tiles: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *, channels_last: bool = False
) -> torch.Tensor:
    """``uint8`` tiles (B, S, S, 3) -> normalised float32 images (B, 3, S, S), on the tiles' device.

    ``mean`` and ``std`` are (1, 3, 1, 1) tensors on that device.
    """
    x = tiles.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, S, S), NHWC strides
    x = x.sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class TileRef(NamedTuple):
    """One tile to read: row ``row`` of slide ``job`` (its number in this run), at level-0 ``(x, y)``."""

    job: int
    row: int
    path: str
    tiling: Mapping[str, Any]  # the store's tiling attrs (one object per slide, so a batch pickles it once)
    x: int
    y: int


class TileBatch(NamedTuple):
    """A batch from the readers: ``tiles[i]`` is row ``rows[i]`` of slide ``jobs[i]``; ``errors`` lists
    ``(i, one-line reason)`` for tiles that could not be read (their pixels are zeros)."""

    jobs: np.ndarray  # (B,) int64; small arrays travel pickled, only the tiles through shared memory
    rows: np.ndarray  # (B,) int64
    tiles: torch.Tensor  # (B, S, S, 3) uint8
    errors: list[tuple[int, str]]


class TileReader(Dataset):
    """``reader[ref]`` -> ``(job, row, tile or None, error)``: the tile as the encoder sees it, or why not.

    Indexed by ``TileRef`` (the stream's batch sampler yields them), not by integers: the slides to read are not
    known when the workers start.
    """

    def __init__(self, view: TileView) -> None:
        self.view = view
        self._slides: OrderedDict[str, Slide] = OrderedDict()
        self._broken: OrderedDict[int, str] = OrderedDict()

    def _slide(self, ref: TileRef) -> Slide:
        slide = self._slides.get(ref.path)
        if slide is not None:
            self._slides.move_to_end(ref.path)
            return slide
        slide = Slide(ref.path).open()
        level = int(ref.tiling.get("read_level", 0))
        if level >= slide.level_count:
            slide.close()
            raise SlideOpenError(f"{ref.path}: has no level {level} (its store says so); re-run `tile --overwrite`")
        self._slides[ref.path] = slide
        while len(self._slides) > _OPEN_SLIDES:
            self._slides.popitem(last=False)[1].close()
        return slide

    def __getitem__(self, ref: TileRef) -> tuple[int, int, np.ndarray | None, str]:  # type: ignore[override]
        broken = self._broken.get(ref.job)
        if broken is not None:
            return ref.job, ref.row, None, broken
        try:
            return ref.job, ref.row, read_tile(self._slide(ref), (ref.x, ref.y), ref.tiling, self.view), ""
        except Exception as err:  # noqa: BLE001 - reported per slide by the stream; raising would end the stream
            self._broken[ref.job] = reason = one_line(err)
            while len(self._broken) > _BROKEN_KEEP:
                self._broken.popitem(last=False)
            return ref.job, ref.row, None, reason

    def collate(self, items: Sequence[tuple[int, int, np.ndarray | None, str]]) -> TileBatch:
        """Stack a batch (in the worker): failed tiles become zeros and an entry of ``errors``."""
        side = self.view.crop or self.view.size
        assert side is not None, "the stream reads with an encoder's view (size known)"
        tiles = np.zeros((len(items), side, side, 3), dtype=np.uint8)
        errors = []
        for i, (_, _, tile, error) in enumerate(items):
            if tile is None:
                errors.append((i, error))
            else:
                tiles[i] = tile
        return TileBatch(
            jobs=np.array([item[0] for item in items], dtype=np.int64),
            rows=np.array([item[1] for item in items], dtype=np.int64),
            tiles=torch.from_numpy(tiles),
            errors=errors,
        )

    def close(self) -> None:
        while self._slides:
            self._slides.popitem()[1].close()
