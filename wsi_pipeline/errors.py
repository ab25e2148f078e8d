"""Typed errors. The CLI turns every ``WsiPipelineError`` into a one-line message and exit code 1.

Messages name the file at fault and the fix, e.g.
``slides/a.tiff: no microns-per-pixel in the slide metadata; pass --slide-mpp or an mpp CSV``.
"""

from __future__ import annotations

__all__ = [
    "WsiPipelineError",
    "ConfigError",
    "UsageError",
    "SlideError",
    "SlideOpenError",
    "SlideReadError",
    "MissingMppError",
    "NoTissueError",
    "AnnotationError",
    "StoreError",
    "StoreMismatchError",
    "MissingPrerequisiteError",
    "EncoderError",
    "WeightsError",
    "CheckpointError",
    "RunMismatchError",
    "LockedError",
    "CohortError",
    "with_note",
]


class WsiPipelineError(Exception):
    """Base class of every error this package raises on purpose (bad input, missing files...)."""


class ConfigError(WsiPipelineError, ValueError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


class UsageError(ConfigError):
    """A command-line mistake (a malformed ``--set`` or ``--shard``, an unknown ``--set`` key): the CLI exits 2, as
    for the other usage mistakes click reports."""


class SlideError(WsiPipelineError):
    """A slide cannot be used. Batch stages record it as failed and go on with the next slide."""


class SlideOpenError(SlideError):
    """OpenSlide cannot open the file (unsupported, truncated, not a slide)."""


class SlideReadError(SlideError):
    """The slide opens but a region cannot be decoded."""


class MissingMppError(SlideError):
    """The slide has no physical resolution and none was given."""


class NoTissueError(SlideError):
    """The tissue mask (or the tile filter) found nothing to keep."""


class AnnotationError(SlideError):
    """An annotation file cannot be read or does not fit its slide (``annotate`` records the slide as failed)."""


class StoreError(WsiPipelineError):
    """A zarr store is missing, incomplete or malformed."""


class StoreMismatchError(StoreError):
    """A store was made with other settings than the ones asked for (tiling, encoder, input dimension)."""


class MissingPrerequisiteError(WsiPipelineError):
    """An earlier stage has not been run; the message names the command to run."""


class EncoderError(WsiPipelineError, ValueError):
    """Unknown encoder name or bad encoder options."""


class WeightsError(WsiPipelineError):
    """Weights cannot be found or loaded; the message says how to provide them."""


class CheckpointError(WsiPipelineError):
    """A checkpoint is unreadable or does not fit the data it is applied to."""


class RunMismatchError(WsiPipelineError):
    """A training run folder holds a run of other settings, labels, slides or features than the ones asked for."""


class LockedError(WsiPipelineError):
    """Another live process holds the lock of this slide."""


class CohortError(WsiPipelineError):
    """A generated cohort cannot be made: a source is missing, too small or has no tissue, or the output folder
    holds a cohort made with other settings."""


def with_note(err: Exception, note: str) -> Exception:
    """``err`` with ``note`` appended to its one-line message, of the same type when it can be rebuilt so (an
    ``OSError`` stays as it is: its errno says a full disk; the note is in the log)."""
    if isinstance(err, OSError):
        return err
    try:
        return type(err)(f"{err}; {note}")
    except Exception:  # noqa: BLE001 - an exception type with another constructor
        return WsiPipelineError(f"{err}; {note}")
