"""Reading tiles for the encoder: a ``Dataset`` over a store's coordinates, one OpenSlide handle per worker.

Workers return ``uint8`` tiles already resized to the encoder's input (the small array crosses process
boundaries and pinned memory); conversion to float and normalisation happen on the device (``to_model_input``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..encoders import EncoderConfig
from ..slide import Slide

__all__ = ["TileDataset", "prepare_tile", "to_model_input"]

_INTERPOLATION = {
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST,
}


def prepare_tile(rgb: np.ndarray, spec: EncoderConfig) -> np.ndarray:
    """An RGB ``uint8`` tile resized (and centre-cropped) to the encoder's input, still ``uint8`` (S, S, 3)."""
    size = spec.resize_size
    if rgb.shape[0] != size or rgb.shape[1] != size:
        rgb = cv2.resize(rgb, (size, size), interpolation=_INTERPOLATION[spec.interpolation])
    if size != spec.input_size:
        top = (size - spec.input_size) // 2
        rgb = rgb[top : top + spec.input_size, top : top + spec.input_size]
    return np.ascontiguousarray(rgb)


def to_model_input(
    tiles: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *, channels_last: bool = False
) -> torch.Tensor:
    """``uint8`` tiles (B, S, S, 3) -> normalised float32 images (B, 3, S, S), on the tiles' device.

    ``mean`` and ``std`` are (1, 3, 1, 1) tensors on that device.
    """
    x = tiles.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, S, S), NHWC strides
    x = x.sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class TileDataset(Dataset):
    """Tile ``i`` of a store: ``slide.read_region(coords[i], read_level, (read_size, read_size))``, resized.

    The slide is opened lazily in whichever process reads first, so each DataLoader worker holds its own handle
    (a handle shared across a fork is not safe). Returns ``(index, uint8 tensor (S, S, 3))``.
    """

    def __init__(
        self, slide_path: str | Path, coords: np.ndarray, *, read_level: int, read_size: int, spec: EncoderConfig
    ):
        self.slide = Slide(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.read_level = int(read_level)
        self.read_size = int(read_size)
        self.spec = spec

    def __len__(self) -> int:
        return len(self.coords)

    def read(self, index: int) -> np.ndarray:
        x, y = self.coords[index]
        rgb = self.slide.read_region((int(x), int(y)), self.read_level, (self.read_size, self.read_size))
        return prepare_tile(rgb, self.spec)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, torch.from_numpy(self.read(index))

    def close(self) -> None:
        self.slide.close()
