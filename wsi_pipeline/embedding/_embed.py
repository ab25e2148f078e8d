"""The ``embed`` stage: tiles of each slide store -> ``features/<encoder>`` (N x D) in the same store.

``embed_stores`` runs one reading pipeline for the whole run (``TileStream``): the slides of the batch are claimed
one after another as the readers need tiles, and each slide is committed, unlocked and recorded as soon as its last
embedding lands. ``embed_slide`` streams a single store the same way.

A slide is skipped only when its array is complete and was made the same way: the array records a ``signature``
(encoder architecture, weights' sha256, input size, resize rule, normalisation, precision, stored dtype, how tiles
are read) and the tiles fingerprint of its store; a complete array made otherwise fails its slide with what differs
(``features_changes``), unless ``overwrite``. A store whose slide file is no longer the one it was tiled from (a
replaced file) fails its slide before any tile is read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..batch import BatchResult, Shard, SlideBatch, SlideRecord
from ..config import config_to_dict
from ..encoders import Encoder
from ..errors import SlideError, StoreError, StoreMismatchError
from ..store import COORDS, features_attrs, list_stores, open_array, open_store, slide_id_from_store
from ..tiling import TileView, check_store_slide, tile_read_params
from ._config import EmbedConfig, embed_stage_name
from ._reuse import features_changes
from ._runtime import EmbedRuntime, load_encoder
from ._stream import SlideJob, TileStream

__all__ = ["EmbedProgress", "embed_slide", "embed_stores", "features_signature", "features_view"]

log = logging.getLogger(__name__)

TILE_READ = "read_tile: area when shrinking"  # how tiles become encoder inputs; part of the signature
_SIGNATURE_KEYS = (
    "encoder",
    "timm_name",
    "timm_kwargs",
    "dim",
    "pooling",
    "input_size",
    "resize_size",
    "interpolation",
    "mean",
    "std",
)


@dataclass
class EmbedProgress:
    """Where a run stands; ``progress`` callbacks get it after every batch and every recorded slide."""

    tiles_done: int = 0
    tiles_total: int = 0  # tiles this run expects to embed; shrinks when a slide is skipped or fails
    slides_done: int = 0  # slides recorded (ok, skipped or failed)
    slides_total: int = 0
    slide_id: str = ""  # the slide recorded last


Progress = Callable[[EmbedProgress], None]


def features_signature(runtime: EmbedRuntime) -> dict[str, Any]:
    """What makes the content of ``features/<encoder>``: equal signatures give the same embeddings.

    The device, batch size and worker count are left out (they change nothing beyond rounding).
    """
    attrs = runtime.encoder.attrs()
    weights = {"source": attrs["weights"]["source"], "sha256": attrs["weights"]["sha256"]}
    if weights["source"] == "random":
        weights["seed"] = runtime.config.seed
    signature = {key: attrs[key] for key in _SIGNATURE_KEYS}
    signature.update(weights=weights, precision=runtime.precision, dtype=runtime.config.dtype, tile_read=TILE_READ)
    return json.loads(json.dumps(signature))  # as stored: tuples become lists


def features_view(store: str | Path, enc_name: str) -> TileView | None:
    """How the tiles of ``store``'s ``features/<enc_name>`` were read (the encoder's view, for ``read_tile``), or
    None when the store has no such array or it records no input size (bags made outside ``embed``)."""
    attrs = features_attrs(Path(store), enc_name)
    return TileView.from_attrs(attrs) if attrs and "input_size" in attrs else None


def _is_done(store: Path, enc_name: str, signature: dict[str, Any]) -> bool:
    return features_changes(store, enc_name, signature) == []


def _open_job(number: int, store: Path, runtime: EmbedRuntime, *, check: dict[str, Any] | None = None) -> SlideJob:
    """A ``SlideJob`` for ``store``; with ``check`` (a signature), a complete array made otherwise is refused."""
    enc_name = runtime.encoder.enc_name
    if check is not None:
        diffs = features_changes(store, enc_name, check, runtime.encoder.weights.to_dict())
        if diffs:
            raise StoreMismatchError(
                f"{store}: features/{enc_name} were made with other settings ({'; '.join(diffs)}); use --overwrite to "
                "redo them"
            )
    try:
        group = open_store(store)  # a StoreError names the command that makes it
        attrs = group.attrs.asdict()
        slide, tiling = attrs.get("slide") or {}, dict(attrs.get("tiling") or {})
        slide_path = str(slide["path"])
        read_level, read_size, _ = tile_read_params(tiling)
        coords = np.asarray(group[COORDS][...], dtype=np.int64).reshape(-1, 2)
    except (KeyError, TypeError) as err:
        raise StoreError(
            f"{store}: no slide.path / tiling.read_level / tiling.read_size in its attrs; "
            "remake it with `wsi-pipeline tile --overwrite`"
        ) from err
    except OSError as err:  # a vanished or unreadable store behaves like a bad slide
        raise SlideError(f"{store}: {err}") from err
    check_store_slide(store)  # never embed another file's pixels under this store's name
    array_attrs = {
        **runtime.encoder.attrs(),
        "precision": runtime.precision,
        "device": runtime.device.type,
        "dtype": runtime.config.dtype,
        "tile_size": tiling.get("tile_size"),
        "target_mpp": tiling.get("target_mpp"),
        "read_level": read_level,
        "read_size": read_size,
        "config": config_to_dict(runtime.config),
        "signature": features_signature(runtime),
    }
    return SlideJob(number, store, slide_path, tiling, coords, array_attrs)


def _runtime(encoder: Encoder | EmbedRuntime | None, config: EmbedConfig) -> EmbedRuntime:
    if isinstance(encoder, EmbedRuntime):
        return encoder
    return EmbedRuntime.create(encoder if encoder is not None else load_encoder(config), config)


def embed_slide(
    store: str | Path,
    encoder: Encoder | EmbedRuntime | None = None,
    *,
    config: EmbedConfig | None = None,
    progress: Progress | None = None,
) -> int:
    """Embed every tile of one slide store into ``features/<encoder>``; returns the number of tiles.

    Always computes (``embed_stores`` is the loop that skips finished slides); the caller should hold the slide's
    lock when other processes may work on the same stores.

    Parameters
    ----------
    store
        A finished tile store (``<stores_dir>/<slide_id>.zarr``) from ``wsi-pipeline tile``.
    encoder
        An ``Encoder`` (``create_encoder``), an ``EmbedRuntime`` (encoder already on its device), or ``None`` to
        build the one named by ``config.encoder``.
    config
        Stage options (batch size, workers, device, precision, dtype ...); an ``EmbedRuntime`` brings its own.
    progress
        Called with an ``EmbedProgress`` after each batch.

    Raises
    ------
    SlideError
        The slide cannot be opened or a tile cannot be read; nothing is committed.

    Examples
    --------
    >>> from wsi_pipeline.encoders import create_encoder
    >>> n = embed_slide("stores/CMU-1.zarr", create_encoder("tiny_test"))  # doctest: +SKIP
    """
    runtime = _runtime(encoder, config or EmbedConfig())
    job = _open_job(0, Path(store), runtime)
    state = EmbedProgress(tiles_total=job.n_tiles, slides_total=1, slide_id=slide_id_from_store(store))
    outcome: list[BaseException | None] = []

    def on_tiles(landed: int, dropped: int) -> None:
        state.tiles_done += landed
        state.tiles_total -= dropped
        if progress:
            progress(state)

    with runtime.cpu_threads():
        TileStream(runtime, on_done=lambda job, err: outcome.append(err), on_tiles=on_tiles).run(
            [job], planned_tiles=job.n_tiles
        )
    if outcome and outcome[0] is not None:
        raise outcome[0]
    return job.n_tiles


@dataclass(frozen=True)
class _StoreItem:
    slide_id: str
    path: Path


def _count_tiles(store: Path) -> int:
    try:
        return int(open_array(store, COORDS).shape[0])
    except Exception:  # noqa: BLE001 - an unreadable store fails when its slide is opened
        return 0


def embed_stores(
    stores_dir: str | Path,
    *,
    config: EmbedConfig | None = None,
    shard: Shard | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    encoder: Encoder | None = None,
    on_record: Callable[[SlideRecord], None] | None = None,
) -> BatchResult:
    """Embed the tiles of every finished store in ``stores_dir`` with one encoder; resumable and shardable.

    All slides stream through one reading pipeline (readers start once per run, batches span slides); each slide
    keeps its own lock, record and atomic commit. Slides whose ``features/<encoder>`` is complete and made the same
    way are skipped unless ``overwrite``; one made another way (other weights, precision, preprocessing, tiles) fails
    with what differs. A slide that cannot be read is recorded as failed (with its reason) and the others go on.
    The manifest is ``<stores_dir>/manifests/embed-<encoder>.csv`` (one file per shard).

    Parameters
    ----------
    stores_dir
        Folder of ``<slide_id>.zarr`` stores written by ``wsi-pipeline tile``.
    config
        Stage options; ``config.encoder`` names the encoder.
    shard
        Only this shard of the slides (``resolve_shard("0/4")`` or the Slurm array variables).
    overwrite
        Recompute slides that already have these embeddings.
    progress
        Called with an ``EmbedProgress`` (tiles and slides done, of the whole run) after each batch and slide.
    encoder
        A ready ``Encoder`` to use instead of building ``config.encoder``.
    on_record
        Called with each slide's record as soon as it is known.

    Examples
    --------
    >>> from wsi_pipeline.tiling import TileConfig, tile_slides  # doctest: +SKIP
    >>> tile_slides("slides/", out_dir="stores/", config=TileConfig())  # doctest: +SKIP
    >>> result = embed_stores("stores/", config=EmbedConfig(encoder="uni2_h"))  # doctest: +SKIP
    >>> from wsi_pipeline.store import read_features
    >>> bag = read_features("stores/CMU-1.zarr", "uni2_h")  # (N, 1536) float16  # doctest: +SKIP
    """
    config = config or EmbedConfig()
    stores_dir = Path(stores_dir)
    items = [_StoreItem(slide_id_from_store(p), p) for p in list_stores(stores_dir)]
    runtime = _runtime(encoder, config)
    enc_name = runtime.encoder.enc_name
    signature = features_signature(runtime)
    state = EmbedProgress()

    def report() -> None:
        if progress:
            progress(state)

    def recorded(rec: SlideRecord) -> None:
        state.slides_done += 1
        state.slide_id = rec.slide_id
        if on_record:
            on_record(rec)
        report()

    batch = SlideBatch(
        items,
        stage=embed_stage_name(enc_name),
        out_dir=stores_dir,
        is_done=lambda item: _is_done(item.path, enc_name, signature),
        overwrite=overwrite,
        shard=shard,
        on_record=recorded,
    )
    with batch, runtime.cpu_threads() as threads:
        state.slides_total = len(batch.items)
        log.info(
            "embed %s (%d-d) on %s, %s, %d reader workers, %d encoder threads, %d stores",
            enc_name,
            runtime.encoder.dim,
            runtime.device,
            runtime.precision,
            runtime.num_workers,
            threads,
            len(batch.items),
        )
        todo = [(item, _count_tiles(item.path)) for item in batch.items if not batch.skip_if_done(item)]
        state.tiles_total = sum(n for _, n in todo)
        report()

        def jobs() -> Iterator[SlideJob]:
            for number, (item, planned) in enumerate(todo):
                if batch.claim(item, checked=True) is None:  # finished or locked meanwhile: recorded skipped
                    state.tiles_total -= planned
                    continue
                try:
                    job = _open_job(number, item.path, runtime, check=None if overwrite else signature)
                except Exception as err:  # noqa: BLE001 - a bad store fails its slide, not the run
                    state.tiles_total -= planned
                    batch.fail(item, err)
                    continue
                job.item = item
                state.tiles_total += job.n_tiles - planned
                yield job

        def done(job: SlideJob, err: BaseException | None) -> None:
            if err is None:
                batch.finish(job.item, n_tiles=job.n_tiles)
            else:
                batch.fail(job.item, err)

        def on_tiles(landed: int, dropped: int) -> None:
            state.tiles_done += landed
            state.tiles_total -= dropped
            report()

        TileStream(runtime, on_done=done, on_tiles=on_tiles).run(jobs(), planned_tiles=state.tiles_total)
    return batch.result()
