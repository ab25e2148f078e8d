"""One reading pipeline for a whole run: the tiles of many slides stream through the same DataLoader workers.

The batch sampler is a generator in the main process that takes the next slide (``SlideJob``) only when the readers
need more tiles, so slides are claimed (locked) just before their tiles are read and memory stays bounded: at most
``workers * prefetch_factor`` batches are in flight, whatever the number or size of the slides. Batches span
slides, so a cohort of small slides keeps the encoder as busy as one large slide. As each batch's embeddings land
(one batch late on CUDA, so the copy back overlaps the next forward pass), every slide's rows go to its own writer
in order; a slide's array is committed (renamed into place) when its last row lands. A slide whose tile cannot be
read, or whose embeddings are not finite, fails alone: its temporary array is removed, its remaining tiles are
dropped, the stream goes on. If a reader process dies (a file that crashes the decoder), the slides in flight are
retried one at a time, so only the one that crashes again fails.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..batch import one_line
from ..errors import EncoderError, SlideError, SlideReadError
from ..files import remove_stale_temporaries
from ..store import FEATURES, FeatureWriter, store_group
from ._reader import TileBatch, TileReader, TileRef, encoder_view
from ._runtime import EmbedRuntime

__all__ = ["SlideJob", "TileStream", "clean_worker_error"]

log = logging.getLogger(__name__)


class _ChunkSink:
    """Collects rows in order and writes each storage chunk of the ``FeatureWriter`` exactly once."""

    def __init__(self, writer: FeatureWriter, dtype: str) -> None:
        self.writer = writer
        self.rows = int(writer.array.chunks[0])
        self.buffer = np.zeros((min(self.rows, max(writer.n_tiles, 1)), writer.dim), dtype=dtype)
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


@dataclass(eq=False)
class SlideJob:
    """A slide in the stream: where its tiles are, and the writer of its embeddings once the first rows land."""

    number: int  # unique in the run; tiles carry it through the readers
    store: Path
    slide_path: str
    tiling: dict[str, Any]
    coords: np.ndarray  # (N, 2) level-0 (x, y)
    attrs: dict[str, Any]  # recorded with the embeddings
    item: Any = None  # what the caller tracks the slide by (its batch item)
    landed: int = 0
    failed: bool = False
    sink: _ChunkSink | None = field(default=None, repr=False)
    n_tiles: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_tiles = len(self.coords)

    def refs(self) -> Iterator[TileRef]:
        for row, (x, y) in enumerate(self.coords.tolist()):
            yield TileRef(self.number, row, self.slide_path, self.tiling, x, y)

    def discard(self) -> None:
        """Remove the temporary array and forget what landed (the slide can be streamed again)."""
        if self.sink is not None:
            with contextlib.suppress(Exception):
                self.sink.writer.abort()
        self.sink = None
        self.landed = 0


class _SynchronousReaderDeaths:
    """Keeps torch's SIGCHLD handler off while the stream runs, so a dead reader is reported at the next batch.

    torch reports a dead DataLoader worker from a SIGCHLD handler, i.e. as an exception raised wherever the main
    thread happens to be (committing another slide, taking a lock, writing the manifest), which would fail slides
    that have nothing to do with the crash. Without the handler, the iterator finds the dead worker itself when it
    has waited ``MP_STATUS_CHECK_INTERVAL`` (5 s) for data, and raises there, where the stream expects it.
    """

    def __init__(self) -> None:
        self.saved: Any = None
        self.usable = hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread()

    def after_start(self) -> None:
        """Call after each ``iter(loader)`` (torch installs its handler with the first one)."""
        if not self.usable:
            return
        handler = signal.getsignal(signal.SIGCHLD)
        if callable(handler):
            self.saved = self.saved or handler
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def restore(self) -> None:
        if self.saved is not None:
            signal.signal(signal.SIGCHLD, self.saved)
            self.saved = None


def _shut_down(batches: Iterator[Any]) -> None:
    """Stop a loader's workers now, not when the iterator is collected: torch keeps a dead worker's pid registered
    until then, and its SIGCHLD handler would report that death again from anywhere later."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # absent without workers
    if shutdown is not None:
        with contextlib.suppress(Exception):
            shutdown()


class _FeedError(Exception):
    """An error of the caller's slide iterator: fatal for the run, never a slide's failure."""


OnDone = Callable[[SlideJob, "BaseException | None"], None]
OnTiles = Callable[[int, int], None]


class TileStream:
    """Embeds the tiles of a sequence of slides with one reading pipeline; reports each slide when it is done.

    Parameters
    ----------
    runtime
        The encoder on its device; its config gives batch size, workers, prefetch and the stored dtype.
    on_done
        ``on_done(job, None)`` once a slide's embeddings are committed, ``on_done(job, error)`` when it failed
        (nothing of it was committed). Called exactly once per slide the stream took.
    on_tiles
        ``on_tiles(landed, dropped)`` after each batch: tiles embedded, and tiles of failed slides that never will be.
    """

    def __init__(self, runtime: EmbedRuntime, *, on_done: OnDone, on_tiles: OnTiles | None = None) -> None:
        self.runtime = runtime
        self.enc_name = runtime.encoder.enc_name
        self.dtype = runtime.config.dtype
        self.reader = TileReader(encoder_view(runtime.encoder.config))
        self.on_done = on_done
        self.on_tiles = on_tiles or (lambda landed, dropped: None)
        self.open: dict[int, SlideJob] = {}  # slides taken from the iterator and not yet committed or failed
        self._sigchld = _SynchronousReaderDeaths()

    # ------------------------------------------------------------------ the run
    def run(self, jobs: Iterable[SlideJob], *, planned_tiles: int | None = None) -> None:
        """Stream every job of ``jobs`` (taken lazily, as the readers need tiles) until all are done or failed."""
        remaining = iter(jobs)
        try:
            while True:
                try:
                    self._run_loader(remaining, planned_tiles)
                    return
                except _FeedError as err:
                    raise err.__cause__ from None  # type: ignore[misc]
                except Exception as err:  # noqa: BLE001 - a reader died or a batch failed: isolate the culprit
                    self._retry_alone(err)
        finally:
            for job in list(self.open.values()):  # interrupted: nothing half-written stays
                job.discard()
            self.open.clear()
            self.reader.close()
            self._sigchld.restore()

    def _retry_alone(self, err: Exception) -> None:
        in_flight = list(self.open.values())
        if not in_flight:
            raise err
        reason = one_line(clean_worker_error(err))
        log.warning("tile stream stopped (%s); retrying its %d slide(s) in flight one by one", reason, len(in_flight))
        self.open.clear()
        redo = sum(job.landed for job in in_flight)
        for job in in_flight:  # all first: an interruption during the retries leaves no partial array behind
            job.discard()
        self.on_tiles(-redo, 0)
        for job in in_flight:
            try:
                self._run_loader(iter([job]), job.n_tiles)
            except Exception as again:  # noqa: BLE001 - fails this slide only
                self.open.pop(job.number, None)
                message = one_line(clean_worker_error(again))
                error = SlideError(f"{job.slide_path}: embedding failed, also when retried alone ({message})")
                self.on_tiles(0, self._fail(job, error))

    def _run_loader(self, jobs: Iterator[SlideJob], planned_tiles: int | None) -> None:
        config = self.runtime.config
        workers = self.runtime.num_workers
        if planned_tiles is not None:
            workers = min(workers, math.ceil(planned_tiles / config.batch_size))
        cuda = self.runtime.device.type == "cuda"
        loader = DataLoader(
            self.reader,  # type: ignore[arg-type] - indexed by TileRef
            batch_sampler=self._feed(jobs),  # type: ignore[arg-type] - a generator of lists of TileRef
            collate_fn=self.reader.collate,
            num_workers=workers,
            pin_memory=cuda,
            prefetch_factor=config.prefetch_factor if workers else None,
            # No cv2.setNumThreads() in the workers: after a fork it can deadlock on the parent's OpenCV thread
            # pool (DataLoader already gives each worker one torch thread).
        )
        out_dtype = torch.float16 if self.dtype == "float16" else torch.float32
        pending: tuple[TileBatch, torch.Tensor | None, Any] | None = None
        batches = iter(loader)
        self._sigchld.after_start()
        try:
            for batch in batches:
                if len(batch.errors) == len(batch.jobs):
                    host, event = None, None  # nothing readable: no forward pass
                else:
                    feats = self.runtime.forward(batch.tiles).to(out_dtype)  # (B, D)
                    if cuda:
                        # Copy back without waiting; the event says when it has landed, one batch later.
                        host, event = feats.to("cpu", non_blocking=True), torch.cuda.Event()
                        event.record()
                    else:
                        host, event = feats, None
                if pending is not None:
                    self._land(*pending)
                pending = (batch, host, event)
            if pending is not None:
                self._land(*pending)
        finally:
            _shut_down(batches)

    def _feed(self, jobs: Iterator[SlideJob]) -> Iterator[list[TileRef]]:
        """The batch sampler: tiles of one slide after another, taking the next slide only when needed."""
        size = self.runtime.config.batch_size
        batch: list[TileRef] = []
        while True:
            try:
                job = next(jobs)
            except StopIteration:
                break
            except Exception as err:
                raise _FeedError() from err
            self.open[job.number] = job
            if job.n_tiles == 0:
                self._commit(job)
                continue
            for ref in job.refs():
                if job.failed:  # known in this process: stop queueing its tiles
                    break
                batch.append(ref)
                if len(batch) == size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    # ------------------------------------------------------------------ landing
    def _land(self, batch: TileBatch, host: torch.Tensor | None, event: Any) -> None:
        if event is not None:
            event.synchronize()
        feats = host.numpy() if host is not None else None
        jobs, rows = batch.jobs, batch.rows
        errors = dict(batch.errors)
        cuts = (np.flatnonzero(jobs[1:] != jobs[:-1]) + 1).tolist()
        landed = dropped = 0
        for start, stop in zip([0, *cuts], [*cuts, len(jobs)], strict=True):
            job = self.open.get(int(jobs[start]))
            if job is None:
                continue  # failed already: its remaining tiles are dropped
            reason = next((errors[i] for i in range(start, stop) if i in errors), None)
            if reason is not None:
                dropped += self._fail(job, SlideReadError(reason))
                continue
            assert feats is not None and rows[start] == job.landed, "a slide's rows arrive in order"
            block = feats[start:stop]
            if not np.isfinite(block).all():
                error = EncoderError(
                    f"{job.store}: {self.enc_name} gave non-finite embeddings ({self.runtime.precision}, stored as "
                    f"{self.dtype}); use --precision fp32 or --set dtype=float32"
                )
                dropped += self._fail(job, error)
                continue
            try:
                self._write(job, block)
            except Exception as err:  # noqa: BLE001 - e.g. a full disk or a vanished store: this slide fails
                dropped += self._fail(job, err)
                continue
            landed += len(block)
            if job.landed == job.n_tiles:
                self._commit(job)
        self.on_tiles(landed, dropped)

    def _write(self, job: SlideJob, block: np.ndarray) -> None:
        if job.sink is None:
            store_group(job.store, FEATURES)  # first, so that the group's own leftover temporaries are found too
            remove_stale_temporaries(job.store / FEATURES / self.enc_name)  # left by killed runs; we hold the lock
            writer = FeatureWriter(
                job.store, self.enc_name, job.n_tiles, self.runtime.encoder.dim, dtype=self.dtype, attrs=job.attrs
            )
            job.sink = _ChunkSink(writer, self.dtype)
        job.sink.add(block)
        job.landed += len(block)

    def _commit(self, job: SlideJob) -> None:
        try:
            if job.sink is None:  # a slide without tiles still gets its (empty) array
                self._write(job, np.zeros((0, self.runtime.encoder.dim), dtype=self.dtype))
            assert job.sink is not None
            job.sink.flush()
            job.sink.writer.commit()
        except Exception as err:  # noqa: BLE001 - this slide fails, the stream goes on
            self._fail(job, err)
            return
        job.sink = None
        job.coords = job.coords[:0]  # committed: its coordinates are no longer needed
        del self.open[job.number]
        self.on_done(job, None)

    def _fail(self, job: SlideJob, err: BaseException) -> int:
        """Fail ``job`` (nothing of it is committed); returns its tiles that will never land."""
        job.failed = True
        self.open.pop(job.number, None)
        never = job.n_tiles - job.landed
        job.discard()
        if not isinstance(err, SlideError):
            log.debug("%s failed", job.store, exc_info=err)
        self.on_done(job, err)
        return never


def clean_worker_error(err: Exception) -> Exception:
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
