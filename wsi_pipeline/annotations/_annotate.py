"""The ``annotate`` stage: annotation files -> per-tile ground truth (``instance_labels``) in each slide store."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..batch import BatchResult, Shard, SlideRecord, run_slide_batch
from ..config import config_to_dict
from ..discovery import SLIDE_EXTENSIONS
from ..errors import AnnotationError, MissingPrerequisiteError, SlideError, StoreError
from ..files import remove_stale_temporaries
from ..locks import SlideLock
from ..provenance import file_sha256
from ..store import (
    INSTANCE_LABELS,
    list_stores,
    open_store,
    read_coords,
    read_instance_labels_attrs,
    slide_id_from_store,
    write_instance_labels,
)
from ._config import AnnotateConfig
from ._read import ANNOTATION_SUFFIXES, AnnotationPolygon, annotation_format, read_annotations
from ._shares import PaintedPolygon, labels_from_shares, polygon_edges, tile_shares

__all__ = [
    "AnnotateResult",
    "annotate_store",
    "annotate_stores",
    "find_annotation_files",
    "paint_order",
    "label_names",
]

log = logging.getLogger(__name__)

STAGE = "annotate"


def label_names(config: AnnotateConfig) -> list[str]:
    """Name of each label value >= 0: ``["negative", *classes]`` (the ``classes`` attr of ``instance_labels``)."""
    return ["negative", *config.classes]


def find_annotation_files(annotations_dir: str | Path) -> dict[str, list[Path]]:
    """Annotation files (``.geojson``, ``.json``, ``.xml``) in a folder, by slide id.

    The slide id is the file name without its suffix, and without a slide extension before it too, because QuPath
    names exports after the image (``CMU-1.svs.geojson`` is slide ``CMU-1``).
    """
    folder = Path(annotations_dir)
    if not folder.is_dir():
        raise MissingPrerequisiteError(
            f"{folder}: no such folder of annotation files; give --annotations DIR holding <slide_id>.geojson or .xml"
        )
    by_id: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in ANNOTATION_SUFFIXES:
            continue
        slide_id = path.name[: -len(path.suffix)]
        inner = Path(slide_id).suffix
        if inner.lower() in SLIDE_EXTENSIONS:
            slide_id = slide_id[: -len(inner)]
        by_id.setdefault(slide_id, []).append(path)
    return by_id


def paint_order(
    polygons: Sequence[AnnotationPolygon], config: AnnotateConfig, source: str | Path
) -> list[PaintedPolygon]:
    """The polygons to paint, in order, with their values: class k (1-based), 0 for exclusions, ``len(classes) + 1``
    for unknown regions; skipped names are dropped.

    Classes first, largest area first, so that a region drawn inside another (necrosis inside tumour) keeps its own
    class; then exclusions, then unknown regions, over everything (the ASAP/CAMELYON16 convention for ``_2``).

    Raises
    ------
    AnnotationError
        A polygon's name is in none of the config's lists; the message lists the names and the three fixes.
    """
    unknown_value = len(config.classes) + 1
    lookup = {name.casefold(): k + 1 for k, name in enumerate(config.classes)}
    lookup.update({alias.casefold(): lookup[target.casefold()] for alias, target in config.aliases.items()})
    lookup.update({name.casefold(): 0 for name in config.exclude})
    lookup.update({name.casefold(): unknown_value for name in config.unknown})
    skipped = {name.casefold() for name in config.skip}
    strangers = sorted(
        {p.name for p in polygons if p.name.casefold() not in lookup and p.name.casefold() not in skipped}
    )
    if strangers:
        names = ", ".join(repr(name) for name in strangers)
        raise AnnotationError(
            f"{source}: annotation class {names} is not in annotate.classes ({', '.join(config.classes)}); "
            f"add it (--classes), map it (--set aliases.NAME=CLASS) or leave it out (--set 'skip=[NAME]')"
        )
    kept = [p for p in polygons if p.name.casefold() not in skipped]

    def rank(polygon: AnnotationPolygon) -> tuple[int, float, int]:
        value = lookup[polygon.name.casefold()]
        kind = 2 if value == unknown_value else 1 if value == 0 else 0
        return kind, -polygon.area, polygon.index

    return [PaintedPolygon(polygon_edges(p.rings), lookup[p.name.casefold()]) for p in sorted(kept, key=rank)]


def _check_extent(polygons: Sequence[AnnotationPolygon], slide: dict[str, Any], source: Path) -> None:
    width, height = slide.get("width"), slide.get("height")
    if not polygons or not width or not height:
        return
    bounds = np.array([p.bounds for p in polygons])  # (P, 4)
    outside = (bounds[:, 2] < 0) | (bounds[:, 0] > width) | (bounds[:, 3] < 0) | (bounds[:, 1] > height)
    if outside.all():
        raise AnnotationError(
            f"{source}: every polygon lies outside the slide ({width} x {height} level-0 px); annotations must be in "
            "level-0 pixel coordinates of this slide"
        )


def annotate_store(
    store: str | Path, annotation_file: str | Path, *, config: AnnotateConfig | None = None
) -> np.ndarray:
    """Label every tile of one slide store from one annotation file and write ``instance_labels``.

    Parameters
    ----------
    store
        A finished tile store (``wsi-pipeline tile``).
    annotation_file
        QuPath GeoJSON or ASAP XML with polygons in the slide's level-0 pixels.
    config
        Classes, aliases, exclusions, threshold (``AnnotateConfig``).

    Returns
    -------
    np.ndarray
        The labels written (int16, one per tile: 0 negative, k class k, -1 unknown).

    Examples
    --------
    >>> from wsi_pipeline.store import read_instance_labels
    >>> labels = annotate_store("stores/tumor_001.zarr", "annotations/tumor_001.xml")  # doctest: +SKIP
    >>> (read_instance_labels("stores/tumor_001.zarr") == labels).all()  # doctest: +SKIP
    """
    config = config or AnnotateConfig()
    store, annotation_file = Path(store), Path(annotation_file)
    attrs = open_store(store).attrs.asdict()
    try:
        tile_size = float(attrs["tiling"]["tile_size_level0"])
    except (KeyError, TypeError, ValueError) as err:
        raise StoreError(
            f"{store}: no tiling.tile_size_level0 in its attrs; remake it with `wsi-pipeline tile --overwrite`"
        ) from err
    digest = _sha256(annotation_file)  # before parsing: a file edited meanwhile is redone on the next run
    polygons = read_annotations(annotation_file)
    _check_extent(polygons, attrs.get("slide") or {}, annotation_file)
    painted = paint_order(polygons, config, annotation_file)
    n_classes = len(config.classes)
    shares = tile_shares(read_coords(store), tile_size, painted, n_classes + 2, samples=config.samples)
    labels = labels_from_shares(
        shares, n_classes=n_classes, threshold=config.threshold, negative_max=config.negative_max
    )
    names = label_names(config)
    counts = Counter("unknown" if v < 0 else names[v] for v in labels.tolist())
    write_instance_labels(
        store,
        labels,
        attrs={
            "classes": names,
            "source": f"annotations {annotation_file.name}",
            "annotations": {
                "path": str(annotation_file.resolve()),
                "sha256": digest,
                "format": annotation_format(annotation_file),
                "polygons": len(polygons),
                "names": dict(Counter(p.name for p in polygons)),
            },
            "annotate": config_to_dict(config),
            "tile_size_level0": tile_size,
            "counts": dict(counts),
        },
    )
    return labels


def _sha256(path: Path) -> str:
    """The annotation file's sha256; a file that cannot be read fails its slide in one line."""
    try:
        return file_sha256(path)
    except OSError as err:
        raise AnnotationError(f"{path}: cannot read ({err.strerror or err}); check the file") from err


def _up_to_date(store: Path, annotation_file: Path, config: AnnotateConfig) -> bool:
    """Labels exist and were made from this very file content with these very settings."""
    try:
        attrs = read_instance_labels_attrs(store)
        if not attrs or "annotations" not in attrs:
            return False
        same_file = attrs["annotations"].get("sha256") == _sha256(annotation_file)
    except Exception:  # noqa: BLE001 - unreadable labels or file: not done; processing the slide reports why
        return False
    return same_file and attrs.get("annotate") == config_to_dict(config)


@dataclass(frozen=True)
class _AnnotatedStore:
    slide_id: str
    path: Path
    files: tuple[Path, ...]


@dataclass
class AnnotateResult:
    """What ``annotate_stores`` did: the batch records (slides with an annotation file), the stores without one
    (they get no labels), and the annotation files whose slide id matches no store."""

    batch: BatchResult
    without_annotations: list[str] = field(default_factory=list)
    unmatched_files: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[SlideRecord]:
        return self.batch.failed

    def summary(self) -> str:
        return (
            f"{self.batch.summary()}; {len(self.without_annotations)} store(s) without annotation file, "
            f"{len(self.unmatched_files)} annotation file(s) without store"
        )


def annotate_stores(
    stores_dir: str | Path,
    annotations_dir: str | Path,
    *,
    config: AnnotateConfig | None = None,
    shard: Shard | None = None,
    overwrite: bool = False,
    on_record: Callable[[SlideRecord], None] | None = None,
) -> AnnotateResult:
    """Label the tiles of every store that has an annotation file (``<slide_id>.geojson``/``.json``/``.xml``).

    Resumable and shardable like the other per-slide stages: a store whose labels were made from the same file
    content with the same settings is skipped (``--overwrite`` redoes it); a changed file or setting is redone; a
    bad file is recorded as failed with a one-line reason and the batch goes on (manifest
    ``<stores_dir>/manifests/annotate*.csv``). Labels from another source (e.g. a benchmark) are replaced only with
    ``overwrite``.

    Examples
    --------
    >>> from wsi_pipeline.tiling import tile_slides  # doctest: +SKIP
    >>> tile_slides("slides/", "stores/")  # doctest: +SKIP
    >>> result = annotate_stores("stores/", "annotations/", config=AnnotateConfig(classes=["tumor"]))  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
    """
    config = config or AnnotateConfig()
    stores_dir = Path(stores_dir)
    files = find_annotation_files(annotations_dir)
    stores = {slide_id_from_store(p): p for p in list_stores(stores_dir)}
    items = [_AnnotatedStore(sid, path, tuple(files[sid])) for sid, path in stores.items() if sid in files]
    unmatched = sorted(p for sid, paths in files.items() if sid not in stores for p in paths)
    without = sorted(sid for sid in stores if sid not in files)
    for sid in without:
        old = read_instance_labels_attrs(stores[sid]) or {}
        if "annotations" in old:
            log.warning(
                "%s keeps instance_labels from %s, which is no longer in %s",
                sid,
                old["annotations"].get("path"),
                annotations_dir,
            )

    def process(item: _AnnotatedStore, lock: SlideLock) -> int:
        if len(item.files) > 1:
            names = ", ".join(p.name for p in item.files)
            raise AnnotationError(
                f"{item.files[0].parent}: {len(item.files)} annotation files for {item.slide_id} ({names}); keep one"
            )
        old = read_instance_labels_attrs(item.path)
        if old is not None and "annotations" not in old and not overwrite:
            raise StoreError(
                f"{item.path}: has instance_labels from {old.get('source', 'another source')!r}; "
                f"use --overwrite to replace them with {item.files[0].name}"
            )
        remove_stale_temporaries(item.path / INSTANCE_LABELS)
        try:
            return len(annotate_store(item.path, item.files[0], config=config))
        except (SlideError, StoreError):
            raise
        except OSError as err:  # e.g. the store vanished or is read-only
            raise StoreError(f"{item.path}: {err}") from err

    batch = run_slide_batch(
        items,
        process,
        stage=STAGE,
        out_dir=stores_dir,
        is_done=lambda item: len(item.files) == 1 and _up_to_date(item.path, item.files[0], config),
        overwrite=overwrite,
        shard=shard,
        on_record=on_record,
    )
    return AnnotateResult(batch=batch, without_annotations=without, unmatched_files=unmatched)
