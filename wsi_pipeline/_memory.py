"""glibc's malloc, set for the work at hand: keep freed memory while tiles are embedded, give it back after.

Process-wide and glibc only (a no-op elsewhere). Torch-free, so that the CLI can use it after any command.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

__all__ = ["keep_freed_memory", "return_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # malloc.h
_AFTER_MMAP_THRESHOLD = 8 << 20  # with 128 KiB (glibc's default) predict made twice the page faults of before


def _libc() -> Any:
    """glibc, or None elsewhere (its malloc settings are glibc's own)."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[None]:
    """For the duration: a fixed mmap threshold (32 MiB, its maximum: no longer raised and lowered as blocks come
    and go) and a high trim threshold, so the memory of one batch's activations is reused by the next instead of
    being returned to the system and faulted in again. On exit the memory freed meanwhile goes back to the system
    (``malloc_trim``), and blocks of 8 MiB and more (a heatmap's picture, a slide's features) are mapped and unmapped
    again, so what comes next is not allocated on top of memory the encoder no longer uses; smaller ones (decoded
    regions, report tiles) keep reusing the heap."""
    libc = _libc()
    if libc is None:
        log.debug("mallopt unavailable; CPU embedding may page-fault more")
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _AFTER_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _AFTER_MMAP_THRESHOLD)
        libc.malloc_trim(0)


def return_freed_memory() -> None:
    """Give the heap's free pages back to the system (``malloc_trim``): the CLI does it when a command that loaded
    torch ends. At exit the libraries of torch's CUDA build page in ~120 MiB of their own (their destructors run),
    on top of whatever freed heap the process still holds: that moment was predict's peak RSS (1015 MiB, against
    960 MiB during the work; benchmarks/bench_predict.py)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
