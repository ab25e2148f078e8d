"""``make_cohort``: a folder of pyramidal slides with known lesions, their labels, annotations and record."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import CohortError
from ..files import atomic_path, atomic_write_text, remove_path
from ..provenance import changes, file_sha256
from ..stain import create_stain_normaliser
from ._compose import TissueSource, compose_slide, lesion_masks, paint_lesions
from ._config import KNOWN_SOURCE_MPP, CohortConfig

__all__ = ["CohortResult", "make_cohort", "write_pyramid", "lesion_geojson", "RECORD", "LESION_CLASS"]

RECORD = "cohort.json"
LESION_CLASS = "tumor"
NORMAL_CLASS = "normal"
_TILE = 256


@dataclass
class CohortResult:
    out_dir: Path
    slides_dir: Path
    labels_csv: Path
    annotations_dir: Path
    record: dict[str, Any]
    made: int  # slides written by this call (the others were already there, from the same settings)


def write_pyramid(path: Path, rgb: np.ndarray, mpp: float, *, quality: int = 90) -> None:
    """A tiled JPEG pyramidal TIFF with an Aperio-style description, so OpenSlide reads it as ``aperio`` with its
    ``MPP``; levels shrink by 4 down to 512 px. Written under a temporary name and renamed."""
    import tifffile

    height, width = rgb.shape[:2]
    levels = [rgb]
    while max(levels[-1].shape[:2]) > 512 * 4 or (len(levels) == 1 and max(height, width) > 1024):
        prev = levels[-1]
        levels.append(cv2.resize(prev, (prev.shape[1] // 4, prev.shape[0] // 4), interpolation=cv2.INTER_AREA))
    mag = max(1, round(10 / mpp))
    tmp = atomic_path(path)
    try:
        with tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 2**31) as tif:
            for k, level in enumerate(levels):
                lh, lw = level.shape[:2]
                head = "Aperio Image Library v12.0.15 (wsi-pipeline lesion-cohort)\n"
                if k == 0:
                    desc = f"{head}{width}x{height} ({_TILE}x{_TILE}) JPEG/RGB Q={quality}|AppMag = {mag}|MPP = {mpp}"
                else:
                    desc = f"{head}{width}x{height} -> {lw}x{lh} JPEG/RGB Q={quality}"
                tif.write(
                    np.ascontiguousarray(level),
                    tile=(_TILE, _TILE),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": quality},
                    description=desc,
                    subfiletype=0 if k == 0 else 1,
                    metadata=None,
                )
        tmp.replace(path)
    finally:
        remove_path(tmp)


def lesion_geojson(masks: list[np.ndarray], slide_id: str) -> dict[str, Any]:
    """QuPath GeoJSON: one annotation per lesion outline (level-0 pixels), class ``tumor``."""
    features = []
    for index, mask in enumerate(masks):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            ring = contour.reshape(-1, 2).astype(float) + 0.5  # pixel centres
            if len(ring) < 3:
                continue
            ring = np.vstack([ring, ring[:1]])
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [ring.round(1).tolist()]},
                    "properties": {
                        "objectType": "annotation",
                        "classification": {"name": LESION_CLASS, "color": [200, 0, 0]},
                        "lesion": index,
                        "slide_id": slide_id,
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}


def _source_record(source: TissueSource) -> dict[str, Any]:
    return {
        "name": source.path.name,
        "sha256": file_sha256(source.path),
        "mpp": source.mpp,
        "size": list(source.slide.dimensions),
    }


def _source_mpp(path: str, given: float | None) -> float | None:
    if given is not None or not Path(path).is_file():
        return given
    return KNOWN_SOURCE_MPP.get(file_sha256(path))


def _settings(config: CohortConfig) -> dict[str, Any]:
    """What makes the cohort's bytes, beside the sources' content: every setting but the sources' paths."""
    settings = asdict(config)
    for key in ("background", "lesion"):
        settings.pop(key)
    return json.loads(json.dumps(settings))  # tuples as lists, as read back from JSON


def make_cohort(out_dir: str | Path, config: CohortConfig | None = None, *, overwrite: bool = False) -> CohortResult:
    """Generate a cohort of slides of real H&E with known lesions.

    Every slide is a new arrangement of tissue pieces cut from the background source (crops, rotations, flips,
    irregular outlines) on glass; a positive slide also has 1-3 irregular lesions inside its tissue, filled with
    real tumour tissue from the lesion source, resampled to the slide's resolution and blended at the border.

    Writes ``<out>/slides/<id>.tiff`` (tiled JPEG pyramids OpenSlide reads with their mpp), ``<out>/labels.csv``
    (``slide_id,label``: ``tumor`` / ``normal``), ``<out>/annotations/<id>.geojson`` (QuPath GeoJSON of each
    positive slide's lesions, level-0 pixels; what ``wsi-pipeline annotate`` reads) and ``<out>/cohort.json``
    (sources with their sha256, settings, seed, package version, and per slide its lesions and their share of the
    tissue). The same seed and sources give the same bytes. A folder holding a cohort of other settings or sources
    is refused unless ``overwrite``; an interrupted run resumes (finished slides are kept).

    Examples
    --------
    >>> made = make_cohort("cohort", CohortConfig(slides=8, lesion_share=(0.01, 0.03)))  # doctest: +SKIP
    >>> made.labels_csv  # doctest: +SKIP
    PosixPath('cohort/labels.csv')
    """
    from .. import __version__

    config = config or CohortConfig()
    out_dir = Path(out_dir)
    slides_dir, annotations_dir = out_dir / "slides", out_dir / "annotations"
    background = TissueSource(
        config.background,
        config.mpp,
        mpp=_source_mpp(config.background, config.background_mpp),
        role="background",
        min_side=512,
    )
    lesion = TissueSource(
        config.lesion, config.mpp, mpp=_source_mpp(config.lesion, config.lesion_mpp), role="lesion", min_side=64
    )
    identity = {
        "settings": _settings(config),
        "sources": {"background": _source_record(background), "lesion": _source_record(lesion)},
    }
    record_path = out_dir / RECORD
    if record_path.is_file() and not overwrite:
        try:
            old = json.loads(record_path.read_text())
        except ValueError:
            old = {}
        old_identity = {"settings": old.get("settings"), "sources": old.get("sources")}  # a moved source is the same
        if old_identity != identity:
            what = "; ".join(changes(old_identity, identity)) or "unreadable record"
            raise CohortError(f"{out_dir}: holds a cohort made otherwise ({what}); pass --overwrite to remake it")
        if old.get("complete") and all((out_dir / row["file"]).is_file() for row in old.get("slides", [])):
            labels_csv = out_dir / "labels.csv"
            return CohortResult(out_dir, slides_dir, labels_csv, annotations_dir, old, made=0)  # up to date
    elif overwrite:
        for stale in (slides_dir, annotations_dir, out_dir / "labels.csv"):
            remove_path(stale)
    out_dir.mkdir(parents=True, exist_ok=True)
    slides_dir.mkdir(exist_ok=True)
    annotations_dir.mkdir(exist_ok=True)
    atomic_write_text(record_path, json.dumps({**identity, "complete": False}, indent=1) + "\n")

    stain = None
    if config.stain_match != "none":
        target, _ = background.slide.read_at_mpp(max(2.0, config.mpp))
        stain = create_stain_normaliser(config.stain_match).fit(target)

    rng = np.random.default_rng(config.seed)
    n_pos = round(config.slides * config.positive_fraction)
    labels = rng.permutation(np.r_[np.ones(n_pos, int), np.zeros(config.slides - n_pos, int)])
    width = max(3, len(str(config.slides - 1)))
    rows, made = [], 0
    for index, positive in enumerate(labels):
        slide_id = f"slide_{index:0{width}d}"
        path = slides_dir / f"{slide_id}.tiff"
        slide_rng = np.random.default_rng([config.seed, index])
        n_pieces = int(slide_rng.integers(config.pieces[0], config.pieces[1] + 1))
        composed = compose_slide(
            config.width, config.height, config.mpp, background, slide_rng, n_pieces=n_pieces, cover=config.tissue_cover
        )
        row: dict[str, Any] = {
            "slide_id": slide_id,
            "label": LESION_CLASS if positive else NORMAL_CLASS,
            "file": f"slides/{slide_id}.tiff",
            "pieces": composed.pieces,
            "tissue_px": composed.tissue_px,
        }
        if positive:
            lo, hi = config.lesion_share
            share = math.exp(slide_rng.uniform(math.log(lo), math.log(hi)))
            n_lesions = int(slide_rng.integers(config.lesions[0], config.lesions[1] + 1))
            parts = slide_rng.dirichlet(np.full(n_lesions, 3.0))
            areas = [float(p * share * composed.tissue_px) for p in parts]
            masks = lesion_masks(composed.tissue, areas, slide_rng)
            paint_lesions(composed, masks, lesion, slide_rng, stain)
            lesion_px = [int(m.sum()) for m in masks]
            row["lesions"] = [{"area_px": px, "share_of_tissue": round(px / composed.tissue_px, 6)} for px in lesion_px]
            row["lesion_share"] = round(sum(lesion_px) / composed.tissue_px, 6)
            geojson = annotations_dir / f"{slide_id}.geojson"
            atomic_write_text(geojson, json.dumps(lesion_geojson(masks, slide_id)) + "\n")
        rows.append(row)
        if path.is_file():
            continue  # written by an interrupted run of the same cohort (every draw above is repeated)
        write_pyramid(path, composed.rgb, config.mpp, quality=config.jpeg_quality)
        made += 1

    labels_csv = out_dir / "labels.csv"
    atomic_write_text(labels_csv, "slide_id,label\n" + "".join(f"{r['slide_id']},{r['label']}\n" for r in rows))
    positives = [r for r in rows if r["label"] == LESION_CLASS]
    record = {
        **identity,
        "source_paths": {"background": str(background.path.resolve()), "lesion": str(lesion.path.resolve())},
        "package_version": __version__,
        "summary": {
            "slides": len(rows),
            "positive": len(positives),
            "lesions": sum(len(r["lesions"]) for r in positives),
            "lesion_share_range": [
                min((r["lesion_share"] for r in positives), default=None),
                max((r["lesion_share"] for r in positives), default=None),
            ],
        },  # fmt: skip
        "slides": rows,
        "complete": True,
    }
    atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
    return CohortResult(out_dir, slides_dir, labels_csv, annotations_dir, record, made)
