"""What ``predict`` is given: slide stores (folders, single stores, CSVs) and raw slide files, as per-slide items.

Raw slides are tiled and embedded into ``<out>/stores`` one slide at a time, inside predict's own per-slide step
(under its lock), with the tiling and embedding settings the checkpoint recorded: a shard prepares exactly the slides
it predicts, whatever other shards are doing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..batch import SlideLock, remove_stale_temporaries
from ..discovery import SLIDE_EXTENSIONS, SlideEntry, discover_slides
from ..errors import CheckpointError, ConfigError
from ..store import STORE_SUFFIX, has_features, is_complete, store_path
from ..training._splits import resolve_stores

__all__ = ["PredictItem", "collect_items", "SlidePreparer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictItem:
    """One slide to predict: its ``store``; ``path`` is what the manifest names (the store, or the slide file)."""

    slide_id: str
    path: Path
    store: Path
    entry: SlideEntry | None = None  # a raw slide, tiled and embedded into ``store`` first


def _has_slides(folder: Path) -> bool:
    return any(p.suffix.lower() in SLIDE_EXTENSIONS for p in folder.iterdir())


def collect_items(inputs: Sequence[str | Path], stores_dir: Path) -> list[PredictItem]:
    """Items of every input, sorted by slide id: stores (``<id>.zarr``, folders of them, CSVs ``slide_id,store``)
    and raw slides (files, folders of slides; ids as ``discover_slides`` gives them), whose stores go to
    ``stores_dir``. Two inputs with the same slide id are a ``ConfigError``."""
    stores: dict[str, Path] = {}
    raw: list[Path] = []
    for item in map(Path, inputs):
        if item.name.endswith(STORE_SUFFIX) and item.is_dir():
            stores[item.name[: -len(STORE_SUFFIX)]] = item
        elif item.is_dir() and any(item.glob(f"*{STORE_SUFFIX}")):
            stores.update(resolve_stores(item))
        elif item.is_dir():
            if _has_slides(item):
                raw.append(item)
        elif item.suffix.lower() == ".csv":
            stores.update(resolve_stores(item))
        elif item.suffix.lower() in SLIDE_EXTENSIONS:
            raw.append(item)
        else:
            raise ConfigError(f"{item}: not a store, a folder of stores or slides, a stores CSV or a slide file")
    items = [PredictItem(sid, path, path) for sid, path in stores.items()]
    for entry in discover_slides(raw) if raw else []:
        if entry.slide_id in stores:
            raise ConfigError(
                f"{entry.path}: slide id {entry.slide_id!r} is also the store {stores[entry.slide_id]}; "
                "predict one or the other"
            )
        items.append(PredictItem(entry.slide_id, entry.path, store_path(stores_dir, entry.slide_id), entry))
    return sorted(items, key=lambda item: item.slide_id)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class SlidePreparer:
    """Tiles and embeds one raw slide into its store with the checkpoint's recorded settings.

    The encoder is built on first use, so a resumed run whose slides are all done never loads it.
    """

    def __init__(self, ckpt: dict[str, Any], checkpoint: Path, device: str, *, overwrite: bool = False) -> None:
        from ..config import load_config
        from ..embedding import EmbedConfig
        from ..tiling import TileConfig

        source = ckpt.get("source") or {}
        tile_settings = source.get("tile_config")
        embed_settings = (source.get("embedding") or {}).get("config")
        if not tile_settings or not embed_settings:
            raise CheckpointError(
                f"{checkpoint}: records no tile/embed settings (its training stores were not made by `tile` and "
                "`embed`, e.g. converted MIL benchmark bags); tile and embed the slides yourself and pass the stores"
            )
        self.tile_config = load_config(TileConfig, "tile", None, _flatten(tile_settings))
        embed_overrides = {**_flatten(embed_settings), "encoder": ckpt["encoder"]}
        if device != "auto":
            embed_overrides["device"] = device
        self.embed_config = load_config(EmbedConfig, "embed", None, embed_overrides)
        self.encoder = ckpt["encoder"]
        self.overwrite = overwrite
        self._runtime: Any = None

    def _embed_runtime(self) -> Any:
        if self._runtime is None:
            from ..embedding import EmbedRuntime, load_encoder

            self._runtime = EmbedRuntime.create(load_encoder(self.embed_config), self.embed_config)
        return self._runtime

    def prepare(self, item: PredictItem, lock: SlideLock) -> None:
        """Make ``item.store`` (tile) and its embeddings unless they exist with the checkpoint's settings; a store
        made with other tiling settings fails the slide (``StoreMismatchError``) unless ``overwrite``."""
        from ..embedding import embed_slide
        from ..slide import Slide
        from ..tiling import check_store_settings, tile_slide

        assert item.entry is not None, "prepare() is for raw slides"
        retile = self.overwrite or not is_complete(item.store)
        if not retile:
            check_store_settings(item.store, self.tile_config, item.entry.mpp)
        if retile:
            # Leftovers of a killed run; safe to remove, we hold the slide's lock.
            remove_stale_temporaries(item.store)
            log.info("%s: tiling %s into %s", item.slide_id, item.path, item.store.parent)
            slide = Slide(item.entry.path, mpp=item.entry.mpp, slide_id=item.slide_id)
            tile_slide(slide, item.store.parent, config=self.tile_config)
        if retile or not has_features(item.store, self.encoder):
            log.info("%s: embedding with %s", item.slide_id, self.encoder)
            embed_slide(item.store, self._embed_runtime(), config=self.embed_config)
