"""The per-slide zarr v3 store: one ``<stores_dir>/<slide_id>.zarr`` group per slide.

Layout (``LAYOUT_VERSION = 1``)::

    <slide_id>.zarr/
      zarr.json                    group attrs:
                                     wsi_pipeline: {layout_version, package_version, created, host, complete}
                                     slide:  Slide.info(): {id, path, vendor, width, height, mpp, mpp_x, mpp_y,
                                              mpp_source, level_count, level_dimensions, level_downsamples,
                                              objective_power}
                                     tiling: {target_mpp, tile_size, stride, tile_size_level0, stride_level0,
                                              read_level, read_mpp, read_size, min_tissue, edge, max_tiles, seed,
                                              grid_shape, n_candidates, n_tiles, order: "row-major"}
                                     mask:   {method, level, mpp, scale, shape, threshold (used), the TissueMaskConfig
                                              fields, kernel sizes in mask px, tissue_fraction}
                                     config: the full tile config that made the store
                                     signature: the config minus qc; a re-run with another one is refused
                                     fingerprint: {tiles, coords_sha256}: ``provenance.tiles_fingerprint`` of the
                                              slide's identity (slide.identity), its mpp, the coordinates and
                                              how tiles are read; what every array below was made from
      Tile i is read as slide.read_region(coords[i], tiling.read_level, (read_size, read_size)) and resized to
      tile_size: read_size = round(tile_size_level0 / level_downsamples[read_level]), tile_size_level0 =
      tile_size * target_mpp / slide.mpp (a float; the read square is exact to half a read-level pixel).
      coords            int64   (N, 2)  level-0 pixel (x, y) of each tile's top-left corner
      tissue_fraction   float32 (N,)    fraction of each tile covered by the tissue mask
      features/<encoder> float16 (N, D) patch embeddings, one array per encoder; attrs: encoder preset, timm name,
                                        weights source and sha256, precision, input size, mean/std, package version,
                                        signature (the settings that change embeddings), content_sha256,
                                        fingerprint {sha256, tiles}, complete: true
      scores/<run_name>  float32 (N,)   per-tile attention written by ``predict``; attrs: checkpoint, model, ...
      instance_labels    int16 (N,)     optional ground truth per tile: 0 = negative (no key instance / outside every
                                        annotation), k >= 1 = class k, -1 = unknown; attrs: classes (name of each
                                        value >= 0), source (e.g. digits benchmark, annotation files)

Row ``i`` of every array is tile ``i``. Stores are written under a temporary name and renamed when complete, and
arrays added later (features, scores) are written under a temporary name inside the store and renamed, so a
crash never leaves anything that looks finished. ``is_complete`` and ``has_features`` are the checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from ._text import read_csv_rows
from .errors import ConfigError, MissingPrerequisiteError, StoreError
from .files import atomic_path, atomic_write_text, remove_path
from .provenance import features_fingerprint, tiles_fingerprint

if TYPE_CHECKING:
    import zarr

__all__ = [
    "LAYOUT_VERSION",
    "STORE_SUFFIX",
    "COORDS",
    "TISSUE_FRACTION",
    "FEATURES",
    "SCORES",
    "store_path",
    "slide_id_from_store",
    "list_stores",
    "require_stores",
    "resolve_stores",
    "is_complete",
    "provenance",
    "write_tile_store",
    "store_group",
    "update_store_attrs",
    "store_fingerprint",
    "features_attrs",
    "features_fingerprint_of",
    "open_store",
    "has_array",
    "open_array",
    "read_attrs",
    "read_coords",
    "list_encoders",
    "has_features",
    "read_features",
    "FeatureWriter",
    "write_scores",
    "read_scores",
    "INSTANCE_LABELS",
    "write_instance_labels",
    "read_instance_labels",
    "read_instance_labels_attrs",
]

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1
STORE_SUFFIX = ".zarr"
FEATURES = "features"
SCORES = "scores"
INSTANCE_LABELS = "instance_labels"
COORDS = "coords"
TISSUE_FRACTION = "tissue_fraction"


def features_name(encoder: str) -> str:
    """The name of an encoder's array under ``features/``: presets and timm names as they are (``timm:resnet18`` ->
    ``resnet18``), ``hf-hub:ORG/NAME`` -> ``hf-ORG--NAME`` (``encoders.enc_name``; here so that naming one needs no
    torch, e.g. in ``wsi-pipeline status``)."""
    safe = encoder.removeprefix("timm:").replace("hf-hub:", "hf-").replace("/", "--").replace(":", "-")
    return safe.lstrip(".") or "encoder"


def store_path(stores_dir: str | Path, slide_id: str) -> Path:
    """Where the store of ``slide_id`` lives; ``slide_id_from_store`` is its inverse."""
    return Path(stores_dir) / f"{slide_id}{STORE_SUFFIX}"


def slide_id_from_store(path: str | Path) -> str:
    name = Path(path).name
    if not name.endswith(STORE_SUFFIX):
        raise StoreError(f"{path}: not a slide store (expected a <slide_id>{STORE_SUFFIX} folder)")
    return name[: -len(STORE_SUFFIX)]


def provenance() -> dict[str, Any]:
    """What made an output: package version, time and host. Stored in every store, array and checkpoint."""
    return {
        "layout_version": LAYOUT_VERSION,
        "package_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
    }


def is_complete(path: str | Path) -> bool:
    """True when ``path`` is a finished tile store (a temporary or crashed one never is)."""
    attrs = _read_json_attrs(Path(path) / "zarr.json")  # unreadable or missing metadata means not finished
    return bool((attrs.get("wsi_pipeline") or {}).get("complete"))


def list_stores(stores_dir: str | Path) -> list[Path]:
    """The complete slide stores directly inside ``stores_dir``, sorted by slide id."""
    stores_dir = Path(stores_dir)
    if not stores_dir.is_dir():
        raise MissingPrerequisiteError(
            f"{stores_dir}: no such folder of slide stores; run `wsi-pipeline tile SLIDES --out {stores_dir}` first"
        )
    return sorted(p for p in stores_dir.glob(f"*{STORE_SUFFIX}") if not p.name.startswith(".") and is_complete(p))


def resolve_stores(stores: str | Path) -> dict[str, Path]:
    """Slide id -> store path, from a folder of stores or a CSV with columns ``slide_id,store``."""
    stores = Path(stores)
    if stores.is_dir() or (not stores.exists() and stores.suffix.lower() != ".csv"):
        # list_stores names a missing folder and the command that makes it (not "CSV not found").
        return {slide_id_from_store(p): p for p in list_stores(stores)}
    rows = read_csv_rows(stores)
    if not rows or "slide_id" not in rows[0] or "store" not in rows[0]:
        raise ConfigError(f"{stores}: expected a folder of stores or a CSV with columns slide_id,store")
    return {row["slide_id"]: (stores.parent / row["store"]).resolve() for row in rows}


def require_stores(stores_dir: str | Path) -> list[Path]:
    """``list_stores``, but no finished store is an error that says where the stores are (a run folder given
    instead of its ``stores/``) or which command makes them."""
    stores_dir = Path(stores_dir)
    stores = list_stores(stores_dir)
    if stores:
        return stores
    # One or two levels down (run1/ instead of run1/stores/); never a deep walk into a big data folder.
    candidates = [*stores_dir.glob(f"*/*{STORE_SUFFIX}"), *stores_dir.glob(f"*/*/*{STORE_SUFFIX}")]
    below = sorted({p.parent for p in candidates if not p.name.startswith(".") and is_complete(p)})
    if below:
        shown = ", ".join(str(p) for p in below[:3]) + (" ..." if len(below) > 3 else "")
        raise MissingPrerequisiteError(
            f"{stores_dir}: no slide stores directly in this folder, but there are some in {shown}; pass that folder"
        )
    raise MissingPrerequisiteError(
        f"{stores_dir}: no finished slide stores (<slide_id>{STORE_SUFFIX}) in this folder; "
        f"run `wsi-pipeline tile SLIDES --out {stores_dir}` first"
    )


_TILE_READ_KEYS = ("tile_size", "target_mpp", "read_level", "read_size", "tile_size_level0")
_KEPT_ARRAYS = (FEATURES, SCORES, INSTANCE_LABELS)  # what a re-tiled store keeps when its tiles did not change


def _tiles_fingerprint(coords: np.ndarray, attrs: Mapping[str, Any]) -> dict[str, str]:
    slide, tiling = dict(attrs.get("slide") or {}), dict(attrs.get("tiling") or {})
    # Slides made by `tile` have an identity; bags converted from tables have only an id (their content is hashed
    # with their features).
    identity = slide.get("identity") or {"id": slide.get("id")}
    coords_sha = hashlib.sha256(np.ascontiguousarray(coords, dtype="<i8").tobytes()).hexdigest()
    read = {key: tiling.get(key) for key in _TILE_READ_KEYS}
    return {"tiles": tiles_fingerprint(identity, slide.get("mpp"), coords_sha, read), "coords_sha256": coords_sha}


def store_fingerprint(path: str | Path) -> str | None:
    """The tiles fingerprint of a finished store (None for stores made before fingerprints were recorded)."""
    return (_read_json_attrs(Path(path) / "zarr.json").get("fingerprint") or {}).get("tiles")


def _read_json_attrs(meta: Path) -> dict[str, Any]:
    """The attributes of a zarr v3 node from its ``zarr.json`` (one small read, no zarr machinery)."""
    try:
        return json.loads(meta.read_text()).get("attributes") or {}
    except (OSError, ValueError):
        return {}


def update_store_attrs(path: str | Path, updates: Mapping[str, Any]) -> None:
    """Replace top-level attribute sections of a finished store in one atomic rewrite of its ``zarr.json`` (e.g.
    ``slide`` when the slide file moved): readers see the old or the new metadata, never half of it."""
    meta = Path(path) / "zarr.json"
    data = json.loads(meta.read_text())
    data["attributes"] = {**(data.get("attributes") or {}), **dict(updates)}
    atomic_write_text(meta, json.dumps(data, indent=2))


def _keep_arrays(old: Path, new: Path) -> list[str]:
    """Copy the finished arrays added after tiling (features, scores, instance labels) of store ``old`` into
    ``new``: its tiles are the same, so they still describe them. Returns what was kept."""
    kept = []
    for name in _KEPT_ARRAYS:
        source = old / name
        if not source.is_dir():
            continue
        if name == INSTANCE_LABELS:
            if _read_json_attrs(source / "zarr.json").get("complete"):
                shutil.copytree(source, new / name)
                kept.append(name)
            continue
        (new / name).mkdir(exist_ok=True)
        if (source / "zarr.json").is_file():
            shutil.copy2(source / "zarr.json", new / name / "zarr.json")
        for child in sorted(source.iterdir()):
            if (
                child.is_dir()
                and not child.name.startswith(".")
                and _read_json_attrs(child / "zarr.json").get("complete")
            ):
                shutil.copytree(child, new / name / child.name)
                kept.append(f"{name}/{child.name}")
    return kept


def write_tile_store(
    final: str | Path,
    coords: np.ndarray,
    tissue_fraction: np.ndarray,
    attrs: Mapping[str, Any],
    *,
    keep_arrays: bool = False,
) -> Path:
    """Write a new tile store atomically (temporary folder, then rename over ``final``).

    ``attrs`` holds the ``slide``, ``tiling``, ``mask`` and ``config`` sections; the tiles' ``fingerprint`` and
    ``wsi_pipeline`` provenance are added here, with ``complete: true`` written last. With ``keep_arrays``, a
    finished store already at ``final`` whose tiles fingerprint is the new one gives its features, scores and
    instance labels to the new store (they describe the same tiles); any other store's arrays are dropped with it.
    """
    final = Path(final)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    tissue_fraction = np.asarray(tissue_fraction, dtype=np.float32).reshape(-1)
    if len(coords) != len(tissue_fraction):
        raise ValueError("coords and tissue_fraction must have the same length")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(final)
    remove_path(tmp)
    try:
        tmp.mkdir()
        _write_v3_array(tmp / COORDS, coords)
        _write_v3_array(tmp / TISSUE_FRACTION, tissue_fraction)
        fingerprint = _tiles_fingerprint(coords, attrs)
        if keep_arrays and is_complete(final) and store_fingerprint(final) == fingerprint["tiles"]:
            kept = _keep_arrays(final, tmp)
            if kept:
                log.info("%s: tiles unchanged, kept %s", final, ", ".join(kept))
        # The group's metadata, with complete: true, is written last; the rename makes it all visible at once.
        done = {**dict(attrs), "fingerprint": fingerprint, "wsi_pipeline": {**provenance(), "complete": True}}
        _write_v3_metadata(tmp, {"attributes": done, "zarr_format": 3, "node_type": "group"})
        remove_path(final)
        os.replace(tmp, final)
    except BaseException:
        remove_path(tmp)
        raise
    return final


# The tile stage writes its store without importing zarr: zarr's import costs ~0.2 s of CPU, a quarter of tiling a
# slide in its own process (benchmarks/bench_tile.py), and a one-chunk array is a small file of the zarr v3 format:
# its metadata (as zarr writes it) and one gzip-compressed chunk. tests/test_store.py checks zarr reads it back
# bit-identically and that the metadata is the one zarr writes for the same array.
_V3_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "gzip", "configuration": {"level": 1}}]


def _json_value(value: Any) -> Any:
    """numpy scalars and arrays in attributes as JSON (zarr's own encoder does the same)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_v3_metadata(node: Path, metadata: Mapping[str, Any]) -> None:
    (node / "zarr.json").write_text(json.dumps(metadata, indent=2, default=_json_value))


def _write_v3_array(path: Path, array: np.ndarray) -> None:
    """``array`` (int64 or float32, any shape) as a zarr v3 array of one chunk at ``path``."""
    import gzip

    path.mkdir()
    chunk = [max(n, 1) for n in array.shape]
    fill = 0.0 if array.dtype.kind == "f" else 0
    _write_v3_metadata(
        path,
        {
            "shape": list(array.shape),
            "data_type": array.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill,
            "codecs": _V3_CODECS,
            "attributes": {},
            "zarr_format": 3,
            "node_type": "array",
            "storage_transformers": [],
        },
    )
    if array.size == 0:
        return  # no chunk: zarr reads an empty array from its metadata alone
    key = path.joinpath("c", *["0"] * array.ndim)
    key.parent.mkdir(parents=True)
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    key.write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))  # mtime 0: the same tiles give the same bytes


def open_store(path: str | Path, mode: str = "r") -> zarr.Group:
    """Open a finished store, or raise a ``StoreError`` that says which command makes it."""
    path = Path(path)
    import zarr

    if not is_complete(path):
        raise StoreError(f"{path}: not a finished slide store; run `wsi-pipeline tile` (with --overwrite) to make it")
    return zarr.open_group(str(path), mode=mode)


def has_array(store: str | Path, *names: str) -> bool:
    """Whether the array ``<store>/<names...>`` (e.g. ``SCORES, run``) exists: its metadata file is there."""
    return (Path(store).joinpath(*names) / "zarr.json").is_file()


def open_array(store: str | Path, *names: str) -> zarr.Array:
    """The array ``<store>/<names...>`` opened read-only by itself (no look at the store's own metadata)."""
    import zarr

    return zarr.open_array(str(Path(store).joinpath(*names)), mode="r")


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of a finished store (its ``zarr.json``, read without zarr); a ``StoreError`` otherwise."""
    attrs = _read_json_attrs(Path(path) / "zarr.json")
    if not (attrs.get("wsi_pipeline") or {}).get("complete"):
        raise StoreError(f"{path}: not a finished slide store; run `wsi-pipeline tile` (with --overwrite) to make it")
    return attrs


def read_coords(path: str | Path) -> np.ndarray:
    return np.asarray(open_store(path)[COORDS][...])


def list_encoders(path: str | Path) -> list[str]:
    """Encoders with finished embeddings in this store."""
    group = open_store(path)
    if FEATURES not in group:
        return []
    feats = group[FEATURES]
    return sorted(name for name in feats.array_keys() if not name.startswith(".") and feats[name].attrs.get("complete"))


def has_features(path: str | Path, encoder: str) -> bool:
    try:
        return encoder in list_encoders(path)
    except StoreError:
        return False


def read_features(path: str | Path, encoder: str) -> np.ndarray:
    """The (N, D) embeddings of ``encoder``; one read of the whole bag."""
    if not has_features(path, encoder):
        found = list_encoders(path) if is_complete(path) else []
        raise MissingPrerequisiteError(
            f"{path}: no finished '{encoder}' embeddings (found: {', '.join(found) or 'none'}); "
            f"run `wsi-pipeline embed {Path(path).parent} --encoder {encoder}`"
        )
    return np.asarray(open_array(path, FEATURES, encoder)[...])


def _rows_per_chunk(n: int, row_bytes: int, target_bytes: int = 64 << 20) -> int:
    # Large chunks so a whole bag loads in one or a few reads.
    return int(max(1, min(max(n, 1), target_bytes // max(row_bytes, 1))))


def store_group(store: str | Path, name: str) -> zarr.Group:
    """The group ``name`` (``features``, ``scores``) of a finished store, made if missing, opened as a zarr root.

    Rooted there, zarr's checks that a new array's parents exist (an exclusive write through a ``.partial``
    temporary) touch ``<name>/zarr.json`` only, never the store's own ``zarr.json``: a run killed meanwhile leaves
    its temporary where ``remove_stale_temporaries`` of the array being written finds it.
    """
    open_store(store)  # a finished store, else a StoreError that names the command making it
    import zarr

    return zarr.open_group(str(Path(store) / name), mode="a")


class FeatureWriter:
    """Write ``features/<encoder>`` block by block, then commit it with a rename.

    Examples
    --------
    >>> with FeatureWriter(store, "uni", n_tiles, 1024, attrs={...}) as writer:  # doctest: +SKIP
    ...     writer.write(0, block)
    """

    def __init__(
        self,
        store: str | Path,
        encoder: str,
        n_tiles: int,
        dim: int,
        *,
        dtype: str = "float16",
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        if "/" in encoder or encoder.startswith("."):
            raise StoreError(f"invalid encoder name for a store array: {encoder!r}")
        self.store = Path(store)
        self.encoder = encoder
        self.n_tiles, self.dim = n_tiles, dim
        self.attrs = dict(attrs or {})
        self.final = self.store / FEATURES / encoder
        self.tmp_name = atomic_path(self.final).name
        group = store_group(self.store, FEATURES)
        remove_path(self.store / FEATURES / self.tmp_name)
        rows = _rows_per_chunk(n_tiles, dim * np.dtype(dtype).itemsize)
        self.array = group.create_array(self.tmp_name, shape=(n_tiles, dim), dtype=dtype, chunks=(rows, dim))
        self.written = 0
        # The embeddings' sha256, taken as they are written in order (else read back at commit).
        self._digest: Any = hashlib.sha256()
        self._hashed = 0

    def write(self, start: int, block: np.ndarray) -> None:
        self.array[start : start + len(block)] = block
        self.written += len(block)
        if self._digest is not None and start == self._hashed:
            self._digest.update(np.ascontiguousarray(block, dtype=self.array.dtype).tobytes())
            self._hashed += len(block)
        else:
            self._digest = None

    def _content_sha256(self) -> str:
        if self._digest is not None and self._hashed == self.n_tiles:
            return self._digest.hexdigest()
        return hashlib.sha256(np.ascontiguousarray(self.array[...]).tobytes()).hexdigest()

    def commit(self) -> Path:
        if self.written != self.n_tiles:
            raise StoreError(f"{self.store}: wrote {self.written} of {self.n_tiles} embeddings; not committing")
        content = self._content_sha256()
        tiles = store_fingerprint(self.store)
        settings = self.attrs.get("signature")
        if settings is None:  # arrays written outside `embed` (converted bags): every attribute counts
            settings = {k: v for k, v in self.attrs.items() if k not in ("config", "device", "package_version")}
        fingerprint = {"sha256": features_fingerprint(tiles, settings, content), "tiles": tiles}
        # One metadata write (``attrs.update`` rewrites zarr.json once per key: ~25 writes per slide).
        self.array.update_attributes(
            {
                **self.attrs,
                "content_sha256": content,
                "fingerprint": fingerprint,
                "wsi_pipeline": provenance(),
                "complete": True,
            }
        )
        remove_path(self.final)
        os.replace(self.store / FEATURES / self.tmp_name, self.final)
        return self.final

    def abort(self) -> None:
        remove_path(self.store / FEATURES / self.tmp_name)

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def features_attrs(store: str | Path, encoder: str) -> dict[str, Any] | None:
    """The attributes of ``features/<encoder>`` (one small file read), or None when there is no such array."""
    meta = Path(store) / FEATURES / encoder / "zarr.json"
    return _read_json_attrs(meta) if meta.is_file() else None


def features_fingerprint_of(store: str | Path, encoder: str) -> str | None:
    """The fingerprint of a finished ``features/<encoder>`` (None when missing or made before fingerprints)."""
    attrs = features_attrs(store, encoder) or {}
    return (attrs.get("fingerprint") or {}).get("sha256") if attrs.get("complete") else None


def write_scores(store: str | Path, name: str, scores: np.ndarray, attrs: Mapping[str, Any] | None = None) -> Path:
    """Store per-tile scores (e.g. attention) as ``scores/<name>``, atomically."""
    store = Path(store)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    group = store_group(store, SCORES)
    final = store / SCORES / name
    tmp_name = atomic_path(final).name
    remove_path(store / SCORES / tmp_name)
    try:
        array = group.create_array(tmp_name, shape=scores.shape, dtype="float32", chunks=(max(len(scores), 1),))
        array[...] = scores
        array.attrs.update({**dict(attrs or {}), "wsi_pipeline": provenance(), "complete": True})
        remove_path(final)
        os.replace(store / SCORES / tmp_name, final)
    except BaseException:
        remove_path(store / SCORES / tmp_name)
        raise
    return final


def read_scores(store: str | Path, name: str) -> np.ndarray:
    path = Path(store) / SCORES / name
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{store}: no scores named {name!r}; run `wsi-pipeline predict` first")
    return np.asarray(open_array(path)[...])


def write_instance_labels(store: str | Path, labels: np.ndarray, attrs: Mapping[str, Any] | None = None) -> Path:
    """Store per-tile ground truth as ``instance_labels`` (int16, 0 = negative, k >= 1 = class k, -1 = unknown),
    atomically; ``attrs`` should name the classes (``classes``: one name per value >= 0) and the ``source``."""
    store = Path(store)
    labels = np.asarray(labels).reshape(-1)
    group = open_store(store, mode="a")
    n_tiles = group[COORDS].shape[0]
    if len(labels) != n_tiles:
        raise StoreError(f"{store}: {len(labels)} instance labels for {n_tiles} tiles")
    if len(labels) and (labels.min() < -1 or labels.max() > np.iinfo(np.int16).max):
        raise StoreError(f"{store}: instance labels must be -1 (unknown), 0 (negative) or a class k >= 1")
    final = store / INSTANCE_LABELS
    tmp_name = atomic_path(final).name
    remove_path(store / tmp_name)
    try:
        array = group.create_array(tmp_name, shape=labels.shape, dtype="int16", chunks=(max(len(labels), 1),))
        array[...] = labels.astype(np.int16)
        array.attrs.update({**dict(attrs or {}), "wsi_pipeline": provenance(), "complete": True})
        remove_path(final)
        os.replace(store / tmp_name, final)
    except BaseException:
        remove_path(store / tmp_name)
        raise
    return final


def read_instance_labels(store: str | Path) -> np.ndarray | None:
    """The store's ``instance_labels`` (int16, one per tile), or None when it has none."""
    path = Path(store) / INSTANCE_LABELS
    if not (path / "zarr.json").is_file():
        return None
    array = open_array(path)
    if not array.attrs.get("complete"):
        return None
    return np.asarray(array[...])


def read_instance_labels_attrs(store: str | Path) -> dict[str, Any] | None:
    """The attrs of the store's ``instance_labels`` (``classes``, ``source``...), or None when it has none."""
    path = Path(store) / INSTANCE_LABELS
    if not (path / "zarr.json").is_file():
        return None
    attrs = open_array(path).attrs.asdict()
    return attrs if attrs.get("complete") else None
