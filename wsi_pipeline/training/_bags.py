"""Bags of embeddings from the stores: one whole-bag read per slide, optionally all cached in memory."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import zarr

from ..errors import StoreMismatchError
from ..store import FEATURES, list_encoders, read_attrs, read_coords, read_features, read_instance_labels
from ._localisation import lesion_regions

__all__ = ["BagLoader", "resolve_encoder", "feature_shape", "standardization_scale"]

log = logging.getLogger(__name__)


def feature_shape(store: Path, encoder: str) -> tuple[int, int]:
    """``(N, D)`` of a store's embeddings without reading them."""
    return tuple(zarr.open_array(str(Path(store) / FEATURES / encoder), mode="r").shape)  # type: ignore[return-value]


def standardization_scale(std: torch.Tensor, rel_floor: float = 1e-3) -> torch.Tensor:
    """The divisor of each feature's z-score: its std, or 1 where the std is tiny (below ``rel_floor`` times the
    median std, or 0).

    A feature (nearly) constant in the training bags (a blank border pixel, a dead embedding unit) would otherwise
    be divided by ~0, so the slightest difference in a validation or test bag becomes a z-score of 1e4-1e8 that
    decides its prediction; with scale 1 it is only centred.
    """
    positive = std[std > 0]
    floor = rel_floor * float(positive.median()) if len(positive) else 0.0
    return torch.where(std > max(floor, 1e-12), std, torch.ones_like(std))


def resolve_encoder(stores: Sequence[Path], encoder: str | None) -> str:
    """The encoder whose features to use: ``encoder`` if every store has it, else the one they all share."""
    if not stores:
        raise StoreMismatchError("no stores to read; check the stores folder or CSV")
    common = set(list_encoders(stores[0]))
    for path in stores[1:]:
        common &= set(list_encoders(path))
    if encoder is None:
        if len(common) == 1:
            return common.pop()
        folder = stores[0].parent
        if common:
            raise StoreMismatchError(
                f"{folder}: the stores hold embeddings of several encoders ({', '.join(sorted(common))}); pass "
                "--encoder NAME"
            )
        every = sorted({name for path in stores for name in list_encoders(path)})
        if not every:
            raise StoreMismatchError(
                f"{folder}: the stores hold no embeddings yet; run `wsi-pipeline embed {folder} --encoder NAME` first"
            )
        raise StoreMismatchError(
            f"{folder}: no encoder's embeddings are in every store (found {', '.join(every)} in some); embed the "
            f"others (`wsi-pipeline embed {folder} --encoder NAME`) or pass --encoder NAME"
        )
    missing = [p for p in stores if encoder not in list_encoders(p)]
    if missing:
        raise StoreMismatchError(
            f"{missing[0]}: no finished '{encoder}' embeddings ({len(missing)} store(s) lack them); "
            f"run `wsi-pipeline embed {missing[0].parent} --encoder {encoder}` or pass the right --encoder"
        )
    return encoder


class BagLoader:
    """Bags as float32 tensors ``(N, D)``, read whole from the stores.

    Parameters
    ----------
    stores
        Slide id -> store path.
    encoder
        ``features/<encoder>`` to read.
    cache
        ``"memory"`` keeps every bag as a tensor after its first read; ``"auto"`` does so when the bags fit in
        ``max_cache_gb``; ``"none"`` reads each bag on demand (with one bag of read-ahead).
    device
        Where cached bags live (the training device, so a step never copies).
    """

    def __init__(
        self,
        stores: dict[str, Path],
        encoder: str,
        *,
        cache: str = "auto",
        max_cache_gb: float = 8.0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.stores, self.encoder, self.device = dict(stores), encoder, torch.device(device)
        shapes = {sid: feature_shape(path, encoder) for sid, path in self.stores.items()}
        dims = {shape[1] for shape in shapes.values()}
        if len(dims) != 1:
            raise StoreMismatchError(f"'{encoder}' embeddings have different dimensions across stores: {dims}")
        self.in_dim = dims.pop()
        self.n_instances = {sid: shape[0] for sid, shape in shapes.items()}
        total_gb = sum(self.n_instances.values()) * self.in_dim * 4 / 1e9
        self.cached = cache == "memory" or (cache == "auto" and total_gb <= max_cache_gb)
        self._cache: dict[str, torch.Tensor] = {}
        self._instance_labels: dict[str, np.ndarray | None] = {}
        self._regions: dict[str, np.ndarray | None] = {}
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        log.info(
            "%d bags of '%s' (D=%d, %.2f GB as float32), cache=%s",
            len(stores),
            encoder,
            self.in_dim,
            total_gb,
            "memory" if self.cached else "none",
        )

    def _read(self, slide_id: str) -> torch.Tensor:
        array = read_features(self.stores[slide_id], self.encoder)
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def _prepare(self, bag: torch.Tensor) -> torch.Tensor:
        bag = bag.to(self.device, non_blocking=True)
        if self.mean is not None and self.std is not None:
            bag = (bag - self.mean) / self.std
        return bag

    def set_standardization(self, mean: torch.Tensor | None, std: torch.Tensor | None) -> None:
        """Apply ``(x - mean) / std`` to every bag from now on (per fold; the cache keeps the raw bags)."""
        self.mean = None if mean is None else mean.to(self.device)
        self.std = None if std is None else std.to(self.device)

    def fit_standardization(self, slide_ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and z-score divisor (``standardization_scale``) of every instance of ``slide_ids`` (the training
        bags), computed in float64."""
        total = torch.zeros(self.in_dim, dtype=torch.float64)
        sq = torch.zeros(self.in_dim, dtype=torch.float64)
        count = 0
        for sid in slide_ids:
            bag = self._raw(sid).double().cpu()
            total += bag.sum(0)
            sq += (bag * bag).sum(0)
            count += bag.shape[0]
        mean = total / max(count, 1)
        std = (sq / max(count, 1) - mean * mean).clamp_min(0).sqrt()
        return mean.float(), standardization_scale(std).float()

    def _raw(self, slide_id: str) -> torch.Tensor:
        if slide_id in self._cache:
            return self._cache[slide_id]
        # A bag first read during evaluation (inference mode) is reused for training: keep it a normal tensor.
        with torch.inference_mode(False):
            bag = self._read(slide_id)
            if self.cached:
                bag = bag.to(self.device)
                self._cache[slide_id] = bag
        return bag

    def get(self, slide_id: str) -> torch.Tensor:
        """The bag of ``slide_id`` on the device, standardised when set.

        The cache holds raw bags, so each is read from zarr once per run whatever the folds' standardisation;
        standardising on the fly costs one elementwise pass, small beside the model's first matmul.
        """
        return self._prepare(self._raw(slide_id))

    def iterate(self, slide_ids: Sequence[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(slide_id, bag)`` in order; uncached bags are read one ahead in a background thread."""
        if self.cached:
            for sid in slide_ids:
                yield sid, self.get(sid)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._read, slide_ids[0]) if slide_ids else None
            for i, sid in enumerate(slide_ids):
                bag = pending.result()  # type: ignore[union-attr]
                if i + 1 < len(slide_ids):
                    pending = pool.submit(self._read, slide_ids[i + 1])
                yield sid, self._prepare(bag)

    def instance_labels(self, slide_id: str) -> np.ndarray | None:
        """The bag's ``instance_labels`` (ground truth per instance, see ``store.write_instance_labels``) or None."""
        if slide_id not in self._instance_labels:
            labels = read_instance_labels(self.stores[slide_id])
            if labels is not None and len(labels) != self.n_instances[slide_id]:
                raise StoreMismatchError(
                    f"{self.stores[slide_id]}: {len(labels)} instance labels for {self.n_instances[slide_id]} "
                    "instances; re-run `wsi-pipeline annotate` on it"
                )
            self._instance_labels[slide_id] = labels
        return self._instance_labels[slide_id]

    def lesion_regions(self, slide_id: str) -> np.ndarray | None:
        """The lesion of each tile (``lesion_regions``) for stores of slides with instance labels; None for bags
        without a slide (their coordinates are not a tile grid) or without labels."""
        if slide_id not in self._regions:
            labels = self.instance_labels(slide_id)
            on_slide = labels is not None and bool((self.store_attrs(slide_id).get("slide") or {}).get("path"))
            self._regions[slide_id] = lesion_regions(read_coords(self.stores[slide_id]), labels) if on_slide else None
        return self._regions[slide_id]

    def store_attrs(self, slide_id: str) -> dict:
        return read_attrs(self.stores[slide_id])
