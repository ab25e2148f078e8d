"""The ``embed`` stage: tiles of each slide store -> ``features/<encoder>`` (N x D) in the same store.

Reading and decoding run in DataLoader workers (one OpenSlide handle each) while the main process runs the encoder;
``uint8`` tiles travel through pinned memory and are normalised on the device, and each batch's embeddings are
copied back asynchronously while the next batch runs. Embeddings are gathered into store-sized chunks and each
chunk is written once, under a temporary array name that is renamed when the slide is complete.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..batch import (
    BatchResult,
    Shard,
    SlideLock,
    available_cpus,
    remove_stale_temporaries,
    run_slide_batch,
)
from ..config import config_to_dict
from ..encoders import Encoder, create_encoder
from ..errors import ConfigError, EncoderError, SlideError, SlideOpenError, StoreError, StoreMismatchError
from ..slide import Slide
from ..store import FeatureWriter, list_stores, open_store, slide_id_from_store
from ..tiling import check_store_slide
from ._config import EmbedConfig
from ._dataset import TileDataset, to_model_input
from ._reuse import features_changes, features_signature

__all__ = [
    "embed_slide",
    "embed_stores",
    "embed_stage_name",
    "load_encoder",
    "EmbedRuntime",
    "resolve_device",
    "resolve_precision",
    "resolve_num_workers",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(slide_id, tiles_done_now, tiles_in_slide)``; called with 0 when a slide starts."""

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
_HEARTBEAT_S = 60.0


def embed_stage_name(enc_name: str) -> str:
    """Stage name of one encoder's run: manifests ``manifests/embed-<enc>.csv``, locks ``.locks/embed-<enc>/``."""
    return f"embed-{enc_name}"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available here; use --device cpu or auto")
    return dev


def resolve_precision(precision: str, device: torch.device, recommended: str) -> str:
    """``bf16``/``fp16``/``fp32`` actually used: ``auto`` is the preset's choice on CUDA and fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        precision = recommended
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16; using fp16 autocast instead")
        return "fp16"
    if precision not in _AUTOCAST:
        raise ConfigError(f"precision {precision!r}: expected auto, bf16, fp16 or fp32")
    return precision


def resolve_num_workers(config: EmbedConfig, device: torch.device, environ: dict[str, str] | None = None) -> int:
    """Reader processes: explicit, else the usable CPUs minus the main process (on CPU, half go to the encoder)."""
    if config.num_workers is not None:
        return config.num_workers
    cpus = available_cpus(environ)
    if device.type == "cuda":
        return max(0, min(cpus - 1, 16))
    return max(0, min(cpus // 2, 8))


def load_encoder(config: EmbedConfig) -> Encoder:
    """The encoder named by ``config`` with its weights (``create_encoder`` with the config's options)."""
    return create_encoder(
        config.encoder,
        weights=config.weights,
        offline=config.offline,
        seed=config.seed,
        weights_remap=config.weights_remap,
        input_size=config.input_size,
    )


@dataclass
class EmbedRuntime:
    """An encoder placed on its device with the resolved precision, ready to embed batches of ``uint8`` tiles."""

    encoder: Encoder
    device: torch.device
    precision: str
    num_workers: int
    config: EmbedConfig
    model: Any
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def create(cls, encoder: Encoder, config: EmbedConfig) -> EmbedRuntime:
        device = resolve_device(config.device)
        precision = resolve_precision(config.precision, device, encoder.precision)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every batch has the same shape: pick the fastest kernels once
        model = encoder.model.to(device).eval()
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if config.compile:
            model = torch.compile(model, dynamic=False)
        spec = encoder.config
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        workers = resolve_num_workers(config, device)
        return cls(encoder, device, precision, workers, config, model, mean, std)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = _AUTOCAST[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """``uint8`` tiles (B, S, S, 3) on any device -> float32 embeddings (B, D) on the runtime's device."""
        n = len(tiles)
        tiles = tiles.to(self.device, non_blocking=True)
        if self.config.compile and n < self.config.batch_size:
            # A fixed batch shape avoids recompiling for the last, shorter batch.
            pad = tiles.new_zeros((self.config.batch_size - n, *tiles.shape[1:]))
            tiles = torch.cat([tiles, pad])
        with torch.inference_mode():
            x = to_model_input(tiles, self.mean, self.std, channels_last=self.config.channels_last)  # (B, 3, S, S)
            with self.autocast():
                out = self.model(x)  # (B, D)
            return out[:n].float()


class _ChunkSink:
    """Collects rows in order and writes each storage chunk of the ``FeatureWriter`` exactly once."""

    def __init__(self, writer: FeatureWriter, dtype: str) -> None:
        self.writer = writer
        self.rows = int(writer.array.chunks[0])
        self.buffer = np.zeros((self.rows, writer.dim), dtype=dtype)
        self.start = 0  # first row of the buffered chunk
        self.filled = 0

    def add(self, block: np.ndarray) -> None:
        while len(block):
            take = min(self.rows - self.filled, len(block))
            self.buffer[self.filled : self.filled + take] = block[:take]
            self.filled += take
            block = block[take:]
            if self.filled == self.rows:
                self.flush()

    def flush(self) -> None:
        if self.filled:
            self.writer.write(self.start, self.buffer[: self.filled])
            self.start += self.filled
            self.filled = 0


def _tile_params(store: Path) -> tuple[Path, int, int, dict[str, Any]]:
    attrs = open_store(store).attrs.asdict()
    slide, tiling = attrs.get("slide") or {}, attrs.get("tiling") or {}
    try:
        return Path(slide["path"]), int(tiling["read_level"]), int(tiling["read_size"]), dict(tiling)
    except (KeyError, TypeError, ValueError) as err:
        raise StoreError(
            f"{store}: no slide.path / tiling.read_level / tiling.read_size in its attrs; "
            "remake it with `wsi-pipeline tile --overwrite`"
        ) from err


def _clean_worker_error(err: Exception) -> Exception:
    """A DataLoader worker's exception carries the worker traceback in its message; keep the original line."""
    text = str(err)
    if "Original Traceback" not in text:
        return err
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    _, sep, message = last.partition(": ")
    try:
        return type(err)(message if sep else last)
    except Exception:  # noqa: BLE001 - exception types with other signatures keep their long message
        return err


def _batches(dataset: TileDataset, runtime: EmbedRuntime) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    workers = min(runtime.num_workers, max(len(dataset), 1))
    loader = DataLoader(
        dataset,
        batch_size=runtime.config.batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=runtime.device.type == "cuda",
        prefetch_factor=runtime.config.prefetch_factor if workers else None,
        # No cv2.setNumThreads() in the workers: after a fork it can deadlock on the parent's OpenCV thread pool
        # (DataLoader already gives each worker one torch thread).
    )
    try:
        yield from loader
    except Exception as err:
        raise _clean_worker_error(err) from err


def embed_slide(
    store: str | Path,
    encoder: Encoder | EmbedRuntime | None = None,
    *,
    config: EmbedConfig | None = None,
    progress: Progress | None = None,
    lock: SlideLock | None = None,
) -> int:
    """Embed every tile of one slide store into ``features/<encoder>``; returns the number of tiles.

    Parameters
    ----------
    store
        A finished tile store (``<stores_dir>/<slide_id>.zarr``) from ``wsi-pipeline tile``.
    encoder
        An ``Encoder`` (``create_encoder``), an ``EmbedRuntime`` (encoder already on its device), or ``None`` to
        build the one named by ``config.encoder``.
    config
        Stage options (batch size, workers, device, precision, dtype ...).
    progress
        Called as ``progress(slide_id, n_new_tiles, n_tiles)`` after each batch (and with 0 at the start).
    lock
        The slide's lock, kept fresh during long slides.

    Raises
    ------
    SlideError
        The slide cannot be opened or a tile cannot be read; nothing is committed.

    Examples
    --------
    >>> from wsi_pipeline.encoders import create_encoder
    >>> n = embed_slide("stores/CMU-1.zarr", create_encoder("tiny_test"))  # doctest: +SKIP
    """
    config = config or EmbedConfig()
    store = Path(store)
    if isinstance(encoder, EmbedRuntime):
        runtime = encoder
    else:
        runtime = EmbedRuntime.create(encoder if encoder is not None else load_encoder(config), config)
    enc = runtime.encoder
    slide_path, read_level, read_size, tiling = _tile_params(store)
    coords = np.asarray(open_store(store)["coords"][...])
    slide_id = slide_id_from_store(store)
    # Fail early, in this process, when the file cannot be opened or is not the slide the store was tiled from.
    check_store_slide(store)
    with Slide(slide_path) as probe:
        if read_level >= probe.level_count:
            raise SlideOpenError(f"{slide_path}: has no level {read_level} (store {store}); re-run `tile`")
    dataset = TileDataset(slide_path, coords, read_level=read_level, read_size=read_size, spec=enc.config)
    attrs = {
        **enc.attrs(),
        "precision": runtime.precision,
        "device": runtime.device.type,
        "dtype": runtime.config.dtype,
        "tile_size": tiling.get("tile_size"),
        "target_mpp": tiling.get("target_mpp"),
        "read_level": read_level,
        "read_size": read_size,
        "config": config_to_dict(runtime.config),
        "signature": runtime_signature(runtime),
    }
    # Half-written arrays of this encoder left by killed runs (we hold the slide's lock for this encoder).
    remove_stale_temporaries(store / "features" / enc.enc_name)
    writer = FeatureWriter(store, enc.enc_name, len(coords), enc.dim, dtype=runtime.config.dtype, attrs=attrs)
    sink = _ChunkSink(writer, runtime.config.dtype)
    cuda = runtime.device.type == "cuda"
    if progress:
        progress(slide_id, 0, len(coords))
    beat = time.monotonic()
    pending: tuple[torch.Tensor, Any] | None = None
    # Overflow (fp16 autocast, float16 storage) is tracked on the device, so no batch waits for a check.
    nonfinite = torch.zeros((), dtype=torch.bool, device=runtime.device)
    try:
        for _, tiles in _batches(dataset, runtime):
            feats = runtime.forward(tiles).to(torch.float16 if runtime.config.dtype == "float16" else torch.float32)
            nonfinite |= ~torch.isfinite(feats).all()
            if cuda:
                # Copy back without waiting; the event says when it has landed, one batch later.
                host, event = feats.to("cpu", non_blocking=True), torch.cuda.Event()
                event.record()
            else:
                host, event = feats, None
            if pending is not None:
                _land(pending, sink, progress, slide_id, len(coords))
            pending = (host, event)
            if lock is not None and time.monotonic() - beat > _HEARTBEAT_S:
                lock.heartbeat()
                beat = time.monotonic()
        if pending is not None:
            _land(pending, sink, progress, slide_id, len(coords))
        if bool(nonfinite):
            raise EncoderError(
                f"{store}: {enc.enc_name} gave non-finite embeddings ({runtime.precision}, stored as "
                f"{runtime.config.dtype}); use --precision fp32 or --set dtype=float32"
            )
        sink.flush()
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        dataset.close()
    return len(coords)


def runtime_signature(runtime: EmbedRuntime) -> dict[str, Any]:
    """``features_signature`` of what this runtime computes (encoder, weights, precision, stored dtype)."""
    return features_signature(
        runtime.encoder.attrs(), precision=runtime.precision, dtype=runtime.config.dtype, seed=runtime.config.seed
    )


def _land(
    pending: tuple[torch.Tensor, Any], sink: _ChunkSink, progress: Progress | None, slide_id: str, total: int
) -> None:
    host, event = pending
    if event is not None:
        event.synchronize()
    sink.add(host.numpy())
    if progress:
        progress(slide_id, len(host), total)


@dataclass(frozen=True)
class _StoreItem:
    slide_id: str
    path: Path


@contextlib.contextmanager
def _cpu_threads(runtime: EmbedRuntime) -> Iterator[None]:
    """On CPU, give the encoder the CPUs the readers leave free (never more than this process may use)."""
    if runtime.device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    threads = runtime.config.torch_threads or max(1, available_cpus() - runtime.num_workers)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def embed_stores(
    stores_dir: str | Path,
    *,
    config: EmbedConfig | None = None,
    shard: Shard | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    encoder: Encoder | None = None,
) -> BatchResult:
    """Embed the tiles of every finished store in ``stores_dir`` with one encoder; resumable and shardable.

    Slides whose ``features/<encoder>`` is complete and was made from the same tiles with the same settings
    (``features_changes``) are skipped unless ``overwrite``; one made another way fails its slide with what changed
    (``weights: random -> efficientnet-lite0-57934424.pth``) unless ``overwrite``. A slide that cannot be read, or
    whose file is no longer the one its store was tiled from, is recorded as failed (with its reason) and the batch
    goes on. The manifest is
    ``<stores_dir>/manifests/embed-<encoder>.csv`` (one file per shard).

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
        Called as ``progress(slide_id, n_new_tiles, n_tiles)`` after each batch.
    encoder
        A ready ``Encoder`` to use instead of building ``config.encoder``.

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
    enc = encoder if encoder is not None else load_encoder(config)
    runtime = EmbedRuntime.create(enc, config)
    log.info(
        "embed %s (%d-d) on %s, %s, %d reader workers, %d stores",
        enc.enc_name,
        enc.dim,
        runtime.device,
        runtime.precision,
        runtime.num_workers,
        len(items),
    )

    signature = runtime_signature(runtime)
    weights = enc.weights.to_dict()

    def is_done(item: _StoreItem) -> bool:
        return features_changes(item.path, enc.enc_name, signature) == []

    def process(item: _StoreItem, lock: SlideLock) -> int:
        changed = None if overwrite else features_changes(item.path, enc.enc_name, signature, weights)
        if changed:
            raise StoreMismatchError(
                f"{item.path}: features/{enc.enc_name} were made another way ({'; '.join(changed)}); "
                "use --overwrite to redo them"
            )
        try:
            return embed_slide(item.path, runtime, config=config, progress=progress, lock=lock)
        except SlideError:
            raise
        except OSError as err:  # a vanished or unreadable file behaves like a bad slide
            raise SlideError(f"{item.path}: {err}") from err

    with _cpu_threads(runtime):
        return run_slide_batch(
            items,
            process,
            stage=embed_stage_name(enc.enc_name),
            out_dir=stores_dir,
            is_done=is_done,
            overwrite=overwrite,
            shard=shard,
        )
