"""The ``annotate`` stage: QuPath GeoJSON and ASAP XML polygons -> per-tile ground truth in each slide store.

Each tile gets ``instance_labels`` (0 negative, k class k, -1 unknown) from the share of its area inside each
class's polygons; see docs/annotate.md for the rules (threshold, overlaps, holes and exclusions).

Examples
--------
>>> from wsi_pipeline.annotations import AnnotateConfig, annotate_stores
>>> result = annotate_stores("stores/", "annotations/", config=AnnotateConfig(classes=["tumor"]))  # doctest: +SKIP
>>> print(result.summary())  # doctest: +SKIP
"""

from ._annotate import (
    AnnotateResult,
    annotate_store,
    annotate_stores,
    find_annotation_files,
    label_names,
    paint_order,
)
from ._config import AnnotateConfig
from ._read import UNCLASSIFIED, AnnotationPolygon, read_annotations, read_asap_xml, read_geojson
from ._shares import PaintedPolygon, inside, labels_from_shares, polygon_edges, tile_shares

__all__ = [
    "AnnotateConfig",
    "AnnotateResult",
    "AnnotationPolygon",
    "PaintedPolygon",
    "UNCLASSIFIED",
    "annotate_store",
    "annotate_stores",
    "find_annotation_files",
    "inside",
    "label_names",
    "labels_from_shares",
    "paint_order",
    "polygon_edges",
    "read_annotations",
    "read_asap_xml",
    "read_geojson",
    "tile_shares",
]
