"""Per-slide lock files shared across processes and hosts on one disk (a shared file system of a cluster).

``SlideLock`` holds host, pid and start time; a lock whose process is gone (same host) or whose heartbeat is older
than ``stale_after_s`` is taken over, so a killed job's slide is redone next run. Ground floor: imports only the
package's errors and atomic files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import LockedError
from .files import atomic_path

__all__ = [
    "SlideLock",
    "pid_alive",
    "STALE_AFTER_S",
    "HEARTBEAT_S",
    "OWNERLESS_AFTER_S",
]

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a lock holder, a local run)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


OWNERLESS_AFTER_S = 5.0  # a lock file with no owner in it, older than this, is abandoned
STALE_AFTER_S = 15 * 60  # a lock whose heartbeat is older than this is abandoned (its holder was killed)
HEARTBEAT_S = 60.0


class SlideLock:
    """An exclusive lock file for one slide of one stage, safe across processes and hosts on a shared disk.

    The file holds ``{"host", "pid", "started", "token"}``. A lock is stale, and taken over, when its holder ran on
    this host and is no longer alive, or when its heartbeat (the file's mtime) is older than ``stale_after_s``.
    While held, a daemon thread refreshes the heartbeat every ``min(60 s, stale_after_s / 4)``, so a live holder
    never looks stale and a killed one (SIGKILL, lost node) is taken over after ``stale_after_s`` on any host.
    Taking over happens under a short-lived ``<lock>.takeover`` file, so two processes that both find the same
    stale lock never both end up holding it; ``release`` only removes the lock if it still holds our token.
    """

    def __init__(self, path: Path, *, stale_after_s: float = STALE_AFTER_S) -> None:
        self.path = path
        self.stale_after_s = stale_after_s
        self._held = False
        self._token = ""
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _is_stale(self) -> bool:
        holder = self._holder()
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if not holder.get("host") and age > OWNERLESS_AFTER_S:
            # Locks become visible with their owner already written (``acquire``), so one without an owner is
            # what an older version left when it could not write it (a full disk): abandoned.
            return True
        same_host = holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
        if same_host and not pid_alive(holder["pid"]):
            return True
        return age > self.stale_after_s

    def _take_over(self) -> None:
        """Remove a stale lock, re-checking under a takeover mutex so only one of several racers removes it."""
        mutex = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            # Someone else is taking over; a mutex left by a process killed inside this tiny section expires.
            with contextlib.suppress(FileNotFoundError):
                if time.time() - mutex.stat().st_mtime > 60:
                    mutex.unlink()
            time.sleep(0.05)
            return
        try:
            os.close(fd)
            if self._is_stale():
                log.warning("taking over stale lock %s (%s)", self.path, self._holder())
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
        finally:
            with contextlib.suppress(FileNotFoundError):
                mutex.unlink()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._token = f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}-{time.time_ns()}"
        payload = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": datetime.now(timezone.utc).isoformat(),
                "token": self._token,
            }
        )
        # The owner is written to a private file first, which is then hard-linked to the lock's name (atomic, and
        # it fails when the lock exists): a lock is never visible without its owner, even when the disk is full
        # (the write fails, and no lock appears).
        tmp = atomic_path(self.path)
        tmp = tmp.with_name(f"{tmp.name}-{threading.get_ident()}")  # one per thread of a process too
        try:
            tmp.write_text(payload)
            for _ in range(20):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    if self._is_stale():
                        self._take_over()
                        continue
                    holder = self._holder()
                    raise LockedError(
                        f"{self.path}: held by {holder.get('host')}:{holder.get('pid')} since {holder.get('started')}"
                    ) from None
                except OSError as err:
                    if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                        raise
                    if not self._create_exclusive(payload):  # a file system without hard links
                        continue
                self._held = True
                self._start_heartbeat()
                return
        finally:
            tmp.unlink(missing_ok=True)
        raise LockedError(f"{self.path}: could not take the lock")

    def _create_exclusive(self, payload: str) -> bool:
        """Create the lock with O_EXCL and write its owner (file systems without hard links); a lock whose owner
        cannot be written is removed again. False when the lock exists (the caller retries after a stale check)."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if self._is_stale():
                self._take_over()
                return False
            holder = self._holder()
            raise LockedError(
                f"{self.path}: held by {holder.get('host')}:{holder.get('pid')} since {holder.get('started')}"
            ) from None
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(payload)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        return True

    def _owned(self) -> bool:
        return self._holder().get("token") == self._token

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        interval = max(0.05, min(HEARTBEAT_S, self.stale_after_s / 4))

        def beat() -> None:
            while not self._stop.wait(interval):
                self.heartbeat()

        self._beat = threading.Thread(target=beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._beat.start()

    def heartbeat(self) -> None:
        if self._held:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def release(self) -> None:
        if self._held:
            self._stop.set()
            if self._beat is not None and self._beat is not threading.current_thread():
                self._beat.join()
            # Never remove a lock that was taken over from us (it is someone else's now).
            if self._owned():
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            self._held = False

    def __enter__(self) -> SlideLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
