"""Atomic files: the ground floor every stage writes through (it imports nothing from the package).

- ``atomic_path``: a temporary sibling of a final path, unique to this host and process (hidden, so globs skip it).
- ``atomic_write_text``/``temporary_then_rename``: write to the temporary and rename when complete, so readers (and
  a resumed run) never see half a file.
- ``remove_stale_temporaries``: what a killed run left beside (or inside) an output, removed under the slide's lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "remove_path",
    "remove_stale_temporaries",
    "temporary_then_rename",
]

log = logging.getLogger(__name__)


def atomic_path(final: Path) -> Path:
    """A temporary sibling of ``final`` unique to this host and process (hidden, so globs skip it)."""
    return final.with_name(f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove the temporaries of ``final`` that any host or process left (see ``atomic_path``); returns them.

    Only safe while holding the lock of the slide that ``final`` belongs to.
    """
    if not final.parent.is_dir():
        return []
    stale = sorted(final.parent.glob(f".{final.name}.tmp-*"))
    if final.is_dir():
        # zarr writes each metadata file as ``<name>.<uuid>.partial`` and renames it: a killed run can leave one
        # inside a finished store (its root or a group of it).
        stale += sorted([*final.glob("*.partial"), *final.glob("*/*.partial")])
    if (final.parent / "zarr.json").is_file():  # an array of a store's group (features/, scores/)
        stale += sorted(final.parent.glob("zarr.*.partial"))
    for path in stale:
        log.info("removing %s left by an interrupted run", path)
        remove_path(path)
    return stale


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    _atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``atomic_write_text`` for bytes (a picture)."""
    _atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        err.filename = err.filename or str(path)  # a full disk names the file it was writing
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def temporary_then_rename(final: Path) -> Iterator[Path]:
    """Yield a temporary path for ``final``; on success replace ``final`` with it, on error remove it."""
    tmp = atomic_path(final)
    remove_path(tmp)
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    if final.exists():
        remove_path(final)
    os.replace(tmp, final)
