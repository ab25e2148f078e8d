"""Batch machinery shared by the per-slide stages (tile, embed, predict).

- ``Shard``: a stable subset of slides for one cluster array task (``--shard i/n`` or Slurm's array variables).
- ``SlideBatch``: one run's bookkeeping: skip finished slides (unless overwrite), lock, record ok/failed/skipped
  with a one-line reason, rewrite the manifest CSV after every slide; several slides may be in flight at once.
- ``run_slide_batch``: the loop over slides with a ``SlideBatch``, one slide at a time, going on after failures.

Slides are locked with ``locks.SlideLock`` and outputs written through ``files`` (atomic writes), the ground floor.

Each run writes its own manifest, ``<out>/manifests/<stage>.csv`` or ``<stage>.shard-<i>-of-<n>.csv``, so shards
never write the same file; ``read_manifest`` merges them (latest record per slide wins).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from .errors import ConfigError, LockedError, SlideError, UsageError, WsiPipelineError
from .files import atomic_write_text
from .locks import STALE_AFTER_S, SlideLock, pid_alive

__all__ = [
    "Shard",
    "resolve_shard",
    "SlideRecord",
    "BatchResult",
    "manifest_path",
    "read_manifest",
    "run_slide_batch",
    "available_cpus",
]

log = logging.getLogger(__name__)

Status = Literal["ok", "failed", "skipped"]


# --------------------------------------------------------------------------------------------- sharding
@dataclass(frozen=True)
class Shard:
    """Array task ``index`` (0-based) of ``count``; slides sorted by id are dealt round-robin."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count}: need 0 <= i < n (e.g. --shard 0/4)")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Parse ``"i/n"`` (0-based i)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError as err:
            raise UsageError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. --shard 0/4") from err
        try:
            return cls(index, count)
        except ConfigError as err:
            raise UsageError(f"--{err}") from None

    def select(self, items: Sequence[Any], key: Callable[[Any], str] = lambda item: item.slide_id) -> list[Any]:
        """This shard's items: a stable, balanced subset; the shards of one count cover every item once."""
        return sorted(items, key=key)[self.index :: self.count]

    @property
    def tag(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def resolve_shard(option: str | None, environ: dict[str, str] | None = None) -> Shard | None:
    """The shard from ``--shard`` or, when unset, from ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``.

    Slurm array ids may start anywhere (``--array=1-8``), so the index is taken relative to
    ``SLURM_ARRAY_TASK_MIN``.
    """
    if option:
        return Shard.parse(option)
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task = int(env["SLURM_ARRAY_TASK_ID"])
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return Shard(task - first, int(env["SLURM_ARRAY_TASK_COUNT"]))
    return None


def available_cpus(environ: dict[str, str] | None = None) -> int:
    """CPUs this process may use: ``SLURM_CPUS_PER_TASK``, else the CPU affinity mask, never ``os.cpu_count()``."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(env["SLURM_CPUS_PER_TASK"]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS has no affinity API
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------- manifest
@dataclass
class SlideRecord:
    """One line of a stage's manifest."""

    slide_id: str
    path: str
    status: Status
    n_tiles: int | None = None
    seconds: float | None = None
    error: str = ""
    host: str = field(default_factory=socket.gethostname)
    finished_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


MANIFEST_COLUMNS = [f.name for f in fields(SlideRecord)]


def _remove_dead_writers_temporaries(final: Path) -> None:
    """The temporaries of ``final`` (``files.atomic_path``: ``.<name>.tmp-<host>-<pid>``) that a process of this host
    left when it was killed. A manifest has no slide lock, so a live writer's temporary (another run of the stage on
    the same folder) is left alone, and so are other hosts' (whether their writer lives cannot be told from here)."""
    if not final.parent.is_dir():
        return
    for tmp in final.parent.glob(f".{final.name}.tmp-{socket.gethostname()}-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def manifest_path(out_dir: Path, stage: str, shard: Shard | None = None) -> Path:
    """``<out>/manifests/<stage>.csv``, or ``<stage>.shard-i-of-n.csv`` for one array task."""
    name = f"{stage}.{shard.tag}.csv" if shard else f"{stage}.csv"
    return Path(out_dir) / "manifests" / name


def read_manifest(out_dir: Path, stage: str) -> list[SlideRecord]:
    """All records of ``stage`` under ``out_dir`` (every shard's file), the latest per slide, sorted by id."""
    latest: dict[str, SlideRecord] = {}
    for path in sorted((Path(out_dir) / "manifests").glob(f"{stage}*.csv")):
        if not (path.name == f"{stage}.csv" or path.name.startswith(f"{stage}.shard-")):
            continue
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                record = SlideRecord(
                    slide_id=row["slide_id"],
                    path=row["path"],
                    status=row["status"],  # type: ignore[arg-type]
                    n_tiles=int(row["n_tiles"]) if row.get("n_tiles") else None,
                    seconds=float(row["seconds"]) if row.get("seconds") else None,
                    error=row.get("error", ""),
                    host=row.get("host", ""),
                    finished_at=row.get("finished_at", ""),
                )
                previous = latest.get(record.slide_id)
                if previous is None or record.finished_at >= previous.finished_at:
                    latest[record.slide_id] = record
    return [latest[key] for key in sorted(latest)]


# --------------------------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class Done:
    """What a stage's ``process`` may return instead of a bare tile count: the count and a note for the manifest's
    reason column (e.g. a ``--slide-mpp`` that the slide's own resolution overruled)."""

    n_tiles: int | None
    note: str = ""


class SlideItem(Protocol):
    slide_id: str
    path: Any


@dataclass
class BatchResult:
    """What a batch did; ``failed`` is non-empty when any slide failed (the CLI then exits non-zero)."""

    records: list[SlideRecord]
    manifest: Path

    def by_status(self, status: Status) -> list[SlideRecord]:
        return [r for r in self.records if r.status == status]

    @property
    def failed(self) -> list[SlideRecord]:
        return self.by_status("failed")

    def summary(self) -> str:
        counts = {s: len(self.by_status(s)) for s in ("ok", "skipped", "failed")}  # type: ignore[arg-type]
        return f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed (manifest: {self.manifest})"


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(err: OSError, where: Path | str | None = None) -> str:
    """A full disk (or quota) as one line naming the path and the fix."""
    path = err.filename or where or "the output folder"
    what = "disk quota exceeded" if err.errno == errno.EDQUOT else "no space left on device"
    free = ""
    with contextlib.suppress(OSError):
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        left = shutil.disk_usage(probe).free
        free = f", {left / 2**20:.1f} MiB free" if left >= 2**20 else f", {left // 1024} KiB free"
    return (
        f"{path}: {what}{free}; free some space there (or write to another --out) and re-run: finished work is kept "
        "and skipped"
    )


def one_line(err: BaseException, where: Path | str | None = None) -> str:
    """An exception as a single manifest-friendly line; typed errors keep their own message. ``where``: the
    output folder, named when a full disk did not say which file it was writing."""
    if isinstance(err, OSError) and err.errno in DISK_FULL:
        return disk_full_message(err, where)
    text = str(err).strip().replace("\n", " ") or err.__class__.__name__
    if isinstance(err, WsiPipelineError):
        return text
    return f"{err.__class__.__name__}: {text}"


_sigterm_owner: list[int] = []  # pid of the process whose SIGTERM becomes KeyboardInterrupt


def _interrupt(signum: int, frame: object) -> None:
    if os.getpid() not in _sigterm_owner:  # a forked child got the signal before the reset below ran
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")


def _default_sigterm_in_child() -> None:
    # Forked children (DataLoader workers...) must die on SIGTERM as usual: the parent terminates them that way,
    # and an exception there can leave a worker hanging at exit.
    if signal.getsignal(signal.SIGTERM) is _interrupt:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default_sigterm_in_child)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into ``KeyboardInterrupt`` so locks are released and temporary outputs removed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    _sigterm_owner[:] = [os.getpid()]
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class SlideBatch:
    """The bookkeeping of one run of a per-slide stage: which slides, skips, locks, records and the manifest.

    ``run_slide_batch`` uses it one slide at a time; a stage that keeps several slides in flight (``embed`` streams
    tiles of many slides through one reading pipeline) claims each slide when it starts and finishes or fails it
    when its outputs are committed. Used as a context manager: SIGTERM becomes ``KeyboardInterrupt`` inside, and on
    the way out the locks of slides still in flight are released and the manifest is written.

    Examples
    --------
    >>> with SlideBatch(items, stage="demo", out_dir=out, is_done=done) as batch:  # doctest: +SKIP
    ...     for item in batch.items:
    ...         if batch.claim(item) is not None:  # None: recorded as skipped (done, or locked elsewhere)
    ...             batch.finish(item, n_tiles=work(item))  # or batch.fail(item, err)
    >>> batch.result()  # doctest: +SKIP
    """

    def __init__(
        self,
        items: Sequence[SlideItem],
        *,
        stage: str,
        out_dir: Path,
        is_done: Callable[[SlideItem], bool],
        overwrite: bool = False,
        shard: Shard | None = None,
        stale_after_s: float = STALE_AFTER_S,
        on_record: Callable[[SlideRecord], None] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.items: list[SlideItem] = shard.select(items) if shard else sorted(items, key=lambda item: item.slide_id)
        self.stage = stage
        self.is_done = is_done
        self.overwrite = overwrite
        self.stale_after_s = stale_after_s
        self.on_record = on_record
        self.manifest = manifest_path(self.out_dir, stage, shard)
        self.records: list[SlideRecord] = []
        self._lines: list[str] = []  # each record's CSV line, formatted once: rewriting the manifest stays cheap
        self._held: dict[str, tuple[SlideLock, float]] = {}  # slide id -> (lock, start time) of slides in flight
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> SlideBatch:
        self._exit.enter_context(_sigterm_as_interrupt())
        _remove_dead_writers_temporaries(self.manifest)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for lock, _ in self._held.values():
                lock.release()
            self._held.clear()
            try:
                self._write_manifest()  # again: a write a full disk refused earlier has every record now
            except OSError as err:
                if not self.records:
                    raise
                log.warning("manifest not written: %s", one_line(err, self.manifest))
        finally:
            self._exit.close()

    def record(self, item: SlideItem, status: Status, **kwargs: Any) -> SlideRecord:
        rec = SlideRecord(slide_id=item.slide_id, path=str(item.path), status=status, **kwargs)
        self.records.append(rec)
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS).writerow(asdict(rec))
        self._lines.append(buffer.getvalue())
        try:
            self._write_manifest()
        except OSError as err:
            # A full disk must not stop the batch: the records stay in memory and the next write has them all.
            log.warning("manifest not written: %s", one_line(err, self.manifest))
        if self.on_record:
            self.on_record(rec)
        # A failed slide is a warning even under a progress bar: in a Slurm log it is the line to look for.
        level = logging.WARNING if status == "failed" else logging.INFO
        log.log(level, "%s %s: %s %s", self.stage, item.slide_id, status, rec.error or "")
        return rec

    def _write_manifest(self) -> None:
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS).writeheader()
        atomic_write_text(self.manifest, buffer.getvalue() + "".join(self._lines))

    def skip_if_done(self, item: SlideItem) -> bool:
        """Record ``item`` as skipped when it is done (and ``overwrite`` is off); True when it was."""
        if not self.overwrite and self.is_done(item):
            self.record(item, "skipped", error="already done (use --overwrite to redo)")
            return True
        return False

    def claim(self, item: SlideItem, *, checked: bool = False) -> SlideLock | None:
        """Lock ``item`` for this run, or record it and return None: skipped (done, or locked by a live process), or
        failed (its done-check raised).

        ``checked``: the caller has just called ``skip_if_done``; the check is repeated once the lock is held,
        since another process may have finished the slide meanwhile.
        """
        if not checked and self.skip_if_done(item):
            return None
        path = self.out_dir / ".locks" / self.stage / f"{item.slide_id}.lock"
        lock = SlideLock(path, stale_after_s=self.stale_after_s)
        try:
            lock.acquire()
        except LockedError as err:
            self.record(item, "skipped", error=f"locked: {err}")
            return None
        except OSError as err:  # e.g. a full disk: this slide fails, the batch goes on
            self.record(item, "failed", error=one_line(err, path))
            return None
        self._held[item.slide_id] = (lock, time.perf_counter())
        try:
            done = self.skip_if_done(item)
        except Exception as err:  # noqa: BLE001 - an unreadable output fails this slide, not the batch
            self.fail(item, err)
            return None
        if done:
            self._settle(item)
            return None
        return lock

    def _settle(self, item: SlideItem) -> float:
        lock, start = self._held.pop(item.slide_id)
        lock.release()
        return round(time.perf_counter() - start, 3)

    def finish(self, item: SlideItem, n_tiles: int | None = None, note: str = "") -> None:
        """``item``'s outputs are committed: release its lock and record it ok (with ``note`` in the reason column,
        e.g. a ``--slide-mpp`` the slide's own resolution overruled)."""
        seconds = self._settle(item)
        self.record(item, "ok", n_tiles=n_tiles, seconds=seconds, error=note)

    def fail(self, item: SlideItem, err: BaseException) -> None:
        """``item`` failed (nothing of it was committed): release its lock and record the one-line reason."""
        if not isinstance(err, SlideError):
            log.debug("unexpected error on %s", item.slide_id, exc_info=err)
        seconds = self._settle(item)
        self.record(item, "failed", seconds=seconds, error=one_line(err, self.out_dir))

    def result(self) -> BatchResult:
        """The records in slide order (a streaming stage records slides as they finish)."""
        order = {item.slide_id: i for i, item in enumerate(self.items)}
        records = sorted(self.records, key=lambda rec: order.get(rec.slide_id, len(order)))
        return BatchResult(records=records, manifest=self.manifest)


def run_slide_batch(
    items: Sequence[SlideItem],
    process: Callable[[SlideItem, SlideLock], int | Done | None],
    *,
    stage: str,
    out_dir: Path,
    is_done: Callable[[SlideItem], bool],
    overwrite: bool = False,
    shard: Shard | None = None,
    stale_after_s: float = STALE_AFTER_S,
    on_record: Callable[[SlideRecord], None] | None = None,
) -> BatchResult:
    """Run ``process(item, lock)`` for each item of this shard, recording one manifest line per slide.

    ``process`` returns the number of tiles (or None, or a ``Done`` with a note) and raises on failure; it must
    write its outputs atomically. ``SlideError`` and any other ``Exception`` become a failed record and the batch
    goes on; ``KeyboardInterrupt`` stops the batch (the slide's lock is released and its partial output stays
    temporary); so does SIGTERM, which Slurm sends on ``scancel``, at the time limit and on preemption.
    A slide locked by a live process elsewhere is recorded as skipped.
    """
    with SlideBatch(
        items,
        stage=stage,
        out_dir=out_dir,
        is_done=is_done,
        overwrite=overwrite,
        shard=shard,
        stale_after_s=stale_after_s,
        on_record=on_record,
    ) as batch:
        for item in batch.items:
            lock = batch.claim(item)
            if lock is None:
                continue
            try:
                outcome = process(item, lock)
            except Exception as err:  # noqa: BLE001 - a bad slide must never stop the batch
                batch.fail(item, err)
            else:
                done = outcome if isinstance(outcome, Done) else Done(outcome)
                batch.finish(item, n_tiles=done.n_tiles, note=done.note)
    return batch.result()


__all__ += [
    "one_line",
    "disk_full_message",
    "DISK_FULL",
    "MANIFEST_COLUMNS",
    "SlideBatch",
    "Done",
]
