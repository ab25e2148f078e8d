"""What ``predict`` is given: slide stores (folders, single stores, CSVs) and raw slide files, as per-slide items.

Raw slides come in the forms ``tile`` takes (files, folders, CSV manifests with ``path``/``slide`` and optional
``slide_id``, ``mpp`` columns; ``--slide-mpp``, ``--mpp-csv``). They are tiled and embedded into ``<out>/stores``
one slide at a time, inside predict's own per-slide step (under its lock), with the tiling and embedding settings
the checkpoint recorded and the very weights its training features were made with (checked by sha256 before any
slide is touched): a shard prepares exactly the slides it predicts, whatever other shards are doing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..discovery import SLIDE_EXTENSIONS, SlideEntry, discover_slides
from ..errors import CheckpointError, ConfigError, with_note
from ..files import remove_stale_temporaries
from ..locks import SlideLock
from ..provenance import flatten
from ..store import STORE_SUFFIX, resolve_stores, store_path

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


def _csv_columns(path: Path) -> set[str]:
    import csv

    from .._text import open_csv

    with open_csv(path) as handle:
        return {c.strip().lower() for c in next(csv.reader(handle), [])}


def collect_items(
    inputs: Sequence[str | Path],
    stores_dir: Path,
    *,
    slide_mpp: float | None = None,
    mpp_csv: str | Path | None = None,
) -> list[PredictItem]:
    """Items of every input, sorted by slide id: stores (``<id>.zarr``, folders of them, CSVs ``slide_id,store``)
    and raw slides (files, folders of slides, slide manifests ``path[,slide_id,mpp]``; ids and resolutions as
    ``discover_slides`` gives them with ``slide_mpp`` and ``mpp_csv``), whose stores go to ``stores_dir``. Two
    inputs with the same slide id are a ``ConfigError``."""
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
            columns = _csv_columns(item)
            if "store" not in columns and ("path" in columns or "slide" in columns):
                raw.append(item)  # a slide manifest, as `tile` takes it
            else:
                stores.update(resolve_stores(item))
        elif item.suffix.lower() in SLIDE_EXTENSIONS:
            raw.append(item)
        else:
            raise ConfigError(f"{item}: not a store, a folder of stores or slides, a stores CSV or a slide file")
    items = [PredictItem(sid, path, path) for sid, path in stores.items()]
    for entry in discover_slides(raw, slide_mpp=slide_mpp, mpp_csv=mpp_csv) if raw else []:
        if entry.slide_id in stores:
            raise ConfigError(
                f"{entry.path}: slide id {entry.slide_id!r} is also the store {stores[entry.slide_id]}; "
                "predict one or the other"
            )
        items.append(PredictItem(entry.slide_id, entry.path, store_path(stores_dir, entry.slide_id), entry))
    return sorted(items, key=lambda item: item.slide_id)


class SlidePreparer:
    """Tiles and embeds one raw slide into its store with the checkpoint's recorded settings and weights.

    The weights are those the checkpoint's training features were made with: ``weights`` (a file or folder,
    ``--weights``) when given, else where the features record them (a local file's absolute path, the Hugging Face
    repository or cache, or a seeded random init). ``check_weights`` verifies their sha256 against the record before
    any slide is touched; the encoder itself is built on first use, so a resumed run whose slides are all done never
    loads it.
    """

    def __init__(
        self,
        ckpt: dict[str, Any],
        checkpoint: Path,
        device: str,
        *,
        overwrite: bool = False,
        weights: str | None = None,
    ) -> None:
        from ..config import load_config
        from ..embedding import EmbedConfig
        from ..tiling import TileConfig

        source = ckpt.get("source") or {}
        tile_settings = source.get("tile_config")
        self.recorded = source.get("embedding") or {}
        embed_settings = self.recorded.get("config")
        if not tile_settings or not embed_settings:
            raise CheckpointError(
                f"{checkpoint}: records no tile/embed settings (its training stores were not made by `tile` and "
                "`embed`, e.g. converted MIL benchmark bags); tile and embed the slides yourself and pass the stores"
            )
        self.checkpoint = checkpoint
        self.tile_config = load_config(TileConfig, "tile", None, flatten(tile_settings))
        embed_overrides = {**flatten(embed_settings), "encoder": ckpt["encoder"]}
        embed_overrides["weights"] = self._weights_to_load(weights)
        if device != "auto":
            embed_overrides["device"] = device
        self.embed_config = load_config(EmbedConfig, "embed", None, embed_overrides)
        self.encoder = ckpt["encoder"]
        self.overwrite = overwrite
        self._runtime: Any = None
        self._checked = False

    def _weights_to_load(self, given: str | None) -> str | None:
        """What ``embed`` should load: the given file, else the recorded file (by its absolute path, whatever path
        was typed at embed time), hub repository or ``random``."""
        recorded = self.recorded.get("weights") or {}
        if given is not None:
            return given
        source = str(recorded.get("source") or "")
        if source == "random":
            return "random"
        if source.startswith("hf-hub:"):
            return source
        return str(recorded.get("location") or "") or None

    def check_weights(self) -> None:
        """Raise ``WeightsError`` (naming the expected file and sha256 and ``--weights``) unless the weights to load
        are the ones the checkpoint's features were made with. Hashes a local file; a hub file is found in the
        Hugging Face cache (or downloaded) first."""
        from ..encoders import find_checkpoint_file, get_encoder_config, hub_file
        from ..errors import WeightsError
        from ..provenance import file_sha256, weights_label

        if self._checked:
            return
        recorded = self.recorded.get("weights") or {}
        expected = recorded.get("sha256")
        name = weights_label(recorded)
        fix = f"pass the file with --weights PATH (or --set weights=PATH); its sha256 is {expected}"
        weights = self.embed_config.weights
        if expected is None:  # a random init: rebuilt from its recorded seed
            if weights not in (None, "random"):
                raise WeightsError(
                    f"--weights {weights}: {self.checkpoint} was trained on features of randomly initialised "
                    "weights (seeded); leave --weights out"
                )
            self._checked = True
            return
        if not weights or weights == "random":
            raise WeightsError(f"{self.checkpoint}: its features were made with weights {name}; {fix}")
        if weights.startswith("hf-hub:"):
            spec = get_encoder_config(self.encoder)
            file = hub_file(weights.removeprefix("hf-hub:"), spec.hub_files, offline=self.embed_config.offline)
        else:
            try:
                file = find_checkpoint_file(weights)
            except WeightsError as err:
                raise WeightsError(
                    f"{self.checkpoint}: its features were made with weights {name}, not found at {weights}; {fix}"
                ) from err
        found = file_sha256(file)
        if found != expected:
            raise WeightsError(
                f"{file}: sha256 {found} is not the {expected} of {name}, the weights {self.checkpoint}'s "
                f"features were made with; {fix}"
            )
        self._checked = True

    def _embed_runtime(self) -> Any:
        if self._runtime is None:
            from ..embedding import EmbedRuntime, load_encoder

            self.check_weights()
            self._runtime = EmbedRuntime.create(load_encoder(self.embed_config), self.embed_config)
        return self._runtime

    def store_is_current(self, item: PredictItem) -> bool:
        """True when ``item.store`` is a finished store made from the slide file now at ``item.path`` (same
        identity) with the checkpoint's tiling settings and the slide's resolution as given now (``--slide-mpp``,
        ``--mpp-csv``, manifest ``mpp``). A replaced slide or another resolution makes a finished prediction stale:
        ``prepare`` then fails the slide with what changed (or redoes it with ``--overwrite``)."""
        from ..tiling import store_changes

        assert item.entry is not None, "store_is_current() is for raw slides"
        try:
            with item.entry.open() as slide:
                diffs = store_changes(item.store, self.tile_config, slide)
        except Exception:  # noqa: BLE001 - an unreadable slide is prepare()'s to report
            return False
        return diffs is not None and not any(diffs.values())

    def prepare(self, item: PredictItem, lock: SlideLock) -> str:
        """Make ``item.store`` (tile) and its embeddings unless they exist with the checkpoint's settings; a store
        made from another file or with other tiling settings fails the slide (``StoreMismatchError``) unless
        ``overwrite``, and so do embeddings made another way. Returns a note for the manifest (a ``--slide-mpp``
        the slide's own resolution overruled), or ''."""
        from ..embedding import embed_slide, features_changes, features_signature
        from ..errors import StoreMismatchError
        from ..tiling import check_store_settings, discard_stale_store, tile_slide

        assert item.entry is not None, "prepare() is for raw slides"
        slide = item.entry.open()
        try:
            with slide:
                note = slide.mpp_note()
                if note:
                    log.warning("%s", note)
                retile = self.overwrite or not check_store_settings(item.store, self.tile_config, slide)
                if retile:
                    # Leftovers of a killed run; safe to remove, we hold the slide's lock.
                    remove_stale_temporaries(item.store)
                    log.info("%s: tiling %s into %s", item.slide_id, item.path, item.store.parent)
                    tile_slide(slide, item.store.parent, config=self.tile_config)
        except Exception as err:
            # A failed --overwrite: an old store of another file or resolution must not stay looking finished.
            removed = (
                discard_stale_store(item.store.parent, item.slide_id, self.tile_config, slide) if self.overwrite else ""
            )
            noted = with_note(err, removed) if removed else err
            if noted is err:
                raise
            raise noted from err
        runtime = self._embed_runtime()
        if not retile:
            changed = features_changes(item.store, self.encoder, features_signature(runtime))
            if changed == []:
                return note  # embedded before with these very settings and weights
            if changed and not self.overwrite:
                raise StoreMismatchError(
                    f"{item.store}: features/{self.encoder} were made with other settings ({'; '.join(changed)}); use "
                    "--overwrite to redo them"
                )
        log.info("%s: embedding with %s", item.slide_id, self.encoder)
        embed_slide(item.store, runtime, config=self.embed_config)
        return note
