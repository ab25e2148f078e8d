"""Finding slides: folders (optionally recursive), single files and CSV manifests -> ``SlideEntry`` list.

Slide ids
    The file stem (``a/b/S01.svs`` -> ``S01``), with characters other than letters, digits, ``.``, ``_`` and ``-``
    replaced by ``_``. When two slides share a stem, each of them is prefixed with its parent folder names until the
    ids differ (``site1_S01``, ``site2_S01``); this depends only on the set of paths, so ids are stable across runs
    and shards. A manifest's ``slide_id`` column wins over all of that.
DICOM
    All ``.dcm`` files of one folder are ONE slide (the instances of one series, the pyramid levels). It is opened
    through its first file (sorted by name; OpenSlide finds the rest of the series in the folder). Its id is the
    common stem of the files with trailing separators and digits removed (``boxes_0.dcm``, ``boxes_1.dcm`` ->
    ``boxes``), or the folder name when the files share no stem (scanner UIDs). Naming several files of one series
    explicitly still gives one slide.
MIRAX
    ``.mrxs`` files are slides; their companion data folders (same name without the suffix) are never searched.
Resolution
    ``mpp`` of an entry is a per-slide override of the slide's own metadata: a manifest's ``mpp`` column, else the
    ``mpp_csv`` row for the slide (matched by slide id, file name or path). ``default_mpp`` is ``slide_mpp`` (one
    value for the whole run): it is used only for slides whose metadata states no resolution, so a batch-wide value
    never silently rescales a slide that knows its own (``Slide.mpp_note`` says when they disagree).
"""

from __future__ import annotations

import csv
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._text import open_csv
from .errors import ConfigError

if TYPE_CHECKING:
    from .slide import Slide

__all__ = ["SlideEntry", "clean_slide_id", "discover_slides", "read_mpp_csv", "SLIDE_EXTENSIONS"]

log = logging.getLogger(__name__)

SLIDE_EXTENSIONS: tuple[str, ...] = (
    ".svs",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".tif",
    ".tiff",
    ".vms",
    ".vmu",
    ".bif",
    ".svslide",
    ".dcm",
)


@dataclass(frozen=True)
class SlideEntry:
    """One slide to process: its stable id, its file, an optional per-slide mpp override and the run's default
    mpp for slides without one of their own (``--slide-mpp``)."""

    slide_id: str
    path: Path
    mpp: float | None = None
    default_mpp: float | None = None

    def open(self) -> Slide:
        """The ``Slide`` of this entry (lazily opened), with its id and resolution settings."""
        from .slide import Slide

        return Slide(self.path, mpp=self.mpp, slide_id=self.slide_id, default_mpp=self.default_mpp)


def _resolved(path: Path) -> Path:
    """``path.resolve()``, or its absolute form when a symlink loop (or another OS error) stops resolving it: such
    a slide is then a failed record of the batch (``Slide.open`` says what is wrong), not the end of the batch."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def clean_slide_id(text: str) -> str:
    # Letters and digits of every script are kept (NFC, so a name typed on macOS and on Linux is one id): ids that
    # differ only in them stay different.
    cleaned = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", text)).strip("._")
    return cleaned or "slide"


def _norm_exts(extensions: Iterable[str]) -> tuple[str, ...]:
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def _dicom_id(files: Sequence[Path]) -> str:
    stems = [f.stem for f in files]
    prefix = os.path.commonprefix(stems) if len(stems) > 1 else stems[0]
    prefix = re.sub(r"[_.\-\s]*\d*$", "", prefix)
    # Instance files named by UIDs share only digits and dots: the folder names the slide then.
    return prefix if re.search(r"[A-Za-z]", prefix) else files[0].parent.name


def _scan_folder(folder: Path, recursive: bool, exts: tuple[str, ...]) -> list[tuple[Path, str | None]]:
    """``(path, id_hint)`` of the slides in a folder; DICOM folders collapse to one entry."""
    found: list[tuple[Path, str | None]] = []
    dicoms: dict[Path, list[Path]] = {}
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        names = set(files)
        # Hidden folders (temporary outputs) and MIRAX data folders are not slides.
        if not recursive:
            for name in sorted(dirs):
                if Path(name).suffix.lower() in exts and Path(name).suffix.lower() != ".dcm":
                    log.warning(
                        "%s is a folder, not a slide file: skipped (a slide is one file; --recursive searches "
                        "inside folders)",
                        root_path / name,
                    )
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and f"{d}.mrxs" not in names) if recursive else []
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = root_path / name
            suffix = path.suffix.lower()
            if suffix not in exts:
                continue
            if suffix == ".dcm":
                dicoms.setdefault(root_path, []).append(path)
            else:
                found.append((path, None))
    for files in dicoms.values():
        files = sorted(files)
        found.append((files[0], _dicom_id(files)))
    return found


def read_mpp_csv(path: str | Path) -> dict[str, float]:
    """A ``slide,mpp`` CSV as ``{key: mpp}``; ``slide`` may be an id, a file name or a path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: mpp CSV not found; pass a CSV with columns slide,mpp")
    with open_csv(path, "mpp CSV") as handle:
        reader = csv.DictReader(handle)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "slide" not in cols or "mpp" not in cols:
            raise ConfigError(f"{path}: expected columns slide,mpp; found {', '.join(reader.fieldnames or [])}")
        out: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            key, raw = (row[cols["slide"]] or "").strip(), (row[cols["mpp"]] or "").strip()
            if not key:
                continue
            try:
                out[key] = float(raw)
            except ValueError as err:
                raise ConfigError(f"{path}:{line}: mpp {raw!r} is not a number") from err
    return out


def _read_manifest(path: Path) -> list[tuple[Path, str | None, float | None]]:
    with open_csv(path, "slide manifest") as handle:
        reader = csv.DictReader(handle)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        path_col = cols.get("path") or cols.get("slide")
        if path_col is None:
            raise ConfigError(
                f"{path}: a slide manifest needs a 'path' (or 'slide') column, optional slide_id and mpp; "
                f"found {', '.join(reader.fieldnames or []) or 'no header'}"
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            raw_path = (row.get(path_col) or "").strip()
            if not raw_path:
                continue
            slide_path = Path(raw_path).expanduser()
            if not slide_path.is_absolute():
                slide_path = path.parent / slide_path
            slide_id = (row.get(cols["slide_id"]) or "").strip() if "slide_id" in cols else ""
            raw_mpp = (row.get(cols["mpp"]) or "").strip() if "mpp" in cols else ""
            try:
                mpp = float(raw_mpp) if raw_mpp else None
            except ValueError as err:
                raise ConfigError(f"{path}:{line}: mpp {raw_mpp!r} is not a number") from err
            rows.append((slide_path, slide_id or None, mpp))
    return rows


def _unique_ids(paths: Sequence[Path], hints: Sequence[str | None]) -> list[str]:
    """Stem-based ids; clashes get the file type, then parent folder names (depends only on the paths)."""
    base = [clean_slide_id(h or p.stem) for p, h in zip(paths, hints, strict=True)]

    def candidate(i: int, depth: int) -> str:
        if depth == 1:  # same stem, different formats in one folder: boxes.tiff vs boxes_0.dcm
            return clean_slide_id(f"{base[i]}_{paths[i].suffix.lstrip('.').lower()}")
        parents = _resolved(paths[i]).parent.parts[1:][::-1]
        return clean_slide_id("_".join([*reversed(parents[: depth - 1]), base[i]]))

    ids = list(base)
    for depth in range(1, 64):
        groups: dict[str, list[int]] = {}
        for i, sid in enumerate(ids):
            groups.setdefault(sid, []).append(i)
        clashes = [idx for idx in groups.values() if len(idx) > 1]
        if not clashes:
            return ids
        for idx in clashes:
            for i in idx:
                ids[i] = candidate(i, depth)
    raise ConfigError(f"cannot make unique slide ids for {paths[0]} and others; give a manifest with slide_id")


def discover_slides(
    inputs: Sequence[str | Path] | str | Path,
    *,
    recursive: bool = False,
    extensions: Iterable[str] = SLIDE_EXTENSIONS,
    mpp_csv: str | Path | None = None,
    slide_mpp: float | None = None,
) -> list[SlideEntry]:
    """The slides named by ``inputs`` (files, folders and ``.csv`` manifests), with unique stable ids.

    Parameters
    ----------
    inputs
        Slide files, folders of slides, or CSV manifests (columns ``path`` or ``slide``, optional ``slide_id``,
        ``mpp``; relative paths are relative to the CSV).
    recursive
        Search folders recursively.
    extensions
        File suffixes counted as slides in folders (case-insensitive); explicit files are taken whatever their suffix.
    mpp_csv
        CSV ``slide,mpp`` of per-slide resolutions (key: slide id, file name or path).
    slide_mpp
        The resolution of slides that state none in their metadata and have no per-slide value.

    Returns
    -------
    list[SlideEntry]
        Sorted by slide id. The same path given twice appears once.

    Examples
    --------
    >>> entries = discover_slides(["slides/"], recursive=True)  # doctest: +SKIP
    >>> tile_slides(entries, "out/")  # doctest: +SKIP
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise ConfigError("no slides given; pass slide files, folders or a CSV manifest")
    exts = _norm_exts(extensions)
    collected: list[tuple[Path, str | None, float | None, str | None]] = []  # path, id, mpp, id hint
    for raw in inputs:
        item = Path(raw).expanduser()
        if not item.exists():
            if item.is_symlink() or (item.suffix and item.suffix.lower() != ".csv"):
                # A named slide file that is missing (or a broken link): that slide fails, the others go on.
                collected.append((item, None, None, None))
                continue
            raise ConfigError(f"{item}: no such file or folder; check the slide path")
        if item.is_dir():
            found = _scan_folder(item, recursive, exts)
            if not found:
                where = "under" if recursive else "in"
                hint = "" if recursive else " (add --recursive to search subfolders)"
                log.warning("%s: no slides %s it with extensions %s%s", item, where, " ".join(exts), hint)
            collected.extend((p, None, None, hint_id) for p, hint_id in found)
        elif item.suffix.lower() == ".csv":
            collected.extend((p, sid, mpp, None) for p, sid, mpp in _read_manifest(item))
        else:
            hint_id = _dicom_id([item]) if item.suffix.lower() == ".dcm" else None
            collected.append((item, None, None, hint_id))
    if not collected:
        raise ConfigError(
            f"no slides found in {', '.join(map(str, inputs))} (extensions: {' '.join(exts)}); "
            "check the folder, --ext or --recursive"
        )
    # One entry per file, and one per DICOM folder (its files are one slide), in a deterministic order.
    unique: dict[Path, tuple[Path, str | None, float | None, str | None]] = {}
    for entry in sorted(collected, key=lambda e: str(_resolved(e[0]))):
        resolved = _resolved(entry[0])
        key = resolved.parent / "*.dcm" if resolved.suffix.lower() == ".dcm" else resolved
        kept = unique.setdefault(key, entry)
        if kept is not entry and kept[1] and entry[1] and clean_slide_id(kept[1]) != clean_slide_id(entry[1]):
            raise ConfigError(
                f"{entry[0]}: listed twice, as slide ids {kept[1]!r} and {entry[1]!r}; one file is one slide: list it "
                "once (or copy the file to keep both ids)"
            )
        if kept is not entry and kept[2] is not None and entry[2] is not None and kept[2] != entry[2]:
            raise ConfigError(f"{entry[0]}: listed twice, with mpp {kept[2]:g} and {entry[2]:g}; keep one")
        if kept is not entry and (entry[1] and not kept[1] or entry[2] is not None and kept[2] is None):
            # One row names the file with its id (or mpp), another plainly: the id is not dropped.
            unique[key] = (kept[0], kept[1] or entry[1], kept[2] if kept[2] is not None else entry[2], kept[3])
        if kept is not entry and key == resolved and kept[0].absolute() != entry[0].absolute():
            # Two names for one file (a symlink, a relative and an absolute path): one slide, said out loud.
            log.warning(
                "%s is the same file as %s (%s): it is processed once, as %s; copy it to keep both names",
                entry[0],
                kept[0],
                resolved,
                kept[0].name,
            )
    rows = sorted(unique.values(), key=lambda e: str(_resolved(e[0])))
    auto_ids = _unique_ids([r[0] for r in rows], [r[3] for r in rows])
    per_slide = read_mpp_csv(mpp_csv) if mpp_csv is not None else {}
    used: set[str] = set()
    entries = []
    for (path, given_id, mpp, _), auto in zip(rows, auto_ids, strict=True):
        slide_id = clean_slide_id(given_id) if given_id else auto
        if slide_id in used:
            raise ConfigError(f"{path}: slide id {slide_id!r} is used twice; make the manifest's slide_id unique")
        used.add(slide_id)
        if mpp is None:
            keys = (slide_id, path.name, str(path), str(_resolved(path)))
            mpp = next((per_slide[k] for k in keys if k in per_slide), None)
        entries.append(SlideEntry(slide_id, path, mpp, slide_mpp))
    matched = {e.slide_id for e in entries} | {e.path.name for e in entries} | {str(e.path) for e in entries}
    matched |= {str(_resolved(e.path)) for e in entries}
    unknown = sorted(set(per_slide) - matched)
    if unknown:
        log.warning("%s: %d row(s) match no slide (e.g. %s)", mpp_csv, len(unknown), unknown[0])
    return sorted(entries, key=lambda e: e.slide_id)
