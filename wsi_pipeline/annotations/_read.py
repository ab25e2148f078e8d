"""Read annotation polygons in level-0 pixels from QuPath GeoJSON and ASAP XML files.

- **GeoJSON** (QuPath: File > Export objects as GeoJSON): a ``FeatureCollection``, one ``Feature``, or a JSON array
  of features (older QuPath exports). ``Polygon`` and ``MultiPolygon`` geometries (also inside a
  ``GeometryCollection``) become polygons; a polygon's first ring is its outline and the others are its holes. The
  class is ``properties.classification.name`` (QuPath >= 0.2; ``classification.names`` joined by ``": "`` for
  derived classes), else ``properties.classification`` when it is a string, else ``properties.name`` (older
  exports); a feature with none of these is ``"unclassified"``. Points and lines have no area and are skipped.
- **ASAP XML** (CAMELYON16/17): ``<ASAP_Annotations><Annotations><Annotation Name PartOfGroup Type>`` with
  ``<Coordinates><Coordinate Order X Y/>``. The class is ``PartOfGroup`` (``"None"`` means ``"unclassified"``).
  ``Polygon``, ``Spline`` and ``Rectangle`` annotations are polygons through their coordinates, in ``Order``;
  ``Dot``, ``PointSet`` and ``Measurement`` have no area and are skipped. ASAP has no holes inside an annotation:
  holes and exclusions are separate annotations in a group that is painted over the others, as CAMELYON16's ``_2``
  group ("exclusion" regions inside tumour) is in the challenge's own mask conversion (ASAP ``AnnotationToMask``
  with ``label_map {_0: 1, _1: 1, _2: 0}`` and ``conversion_order [_0, _1, _2]``). See ``AnnotateConfig.exclude``.

Both give ``AnnotationPolygon`` objects; every problem is an ``AnnotationError`` naming the file and the fix.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AnnotationError

__all__ = [
    "ANNOTATION_SUFFIXES",
    "UNCLASSIFIED",
    "AnnotationPolygon",
    "annotation_format",
    "read_annotations",
    "read_geojson",
    "read_asap_xml",
]

ANNOTATION_SUFFIXES = {".geojson": "geojson", ".json": "geojson", ".xml": "asap"}
UNCLASSIFIED = "unclassified"
_NO_AREA_GEOMETRIES = {"Point", "MultiPoint", "LineString", "MultiLineString"}
_NO_AREA_ASAP_TYPES = {"Dot", "PointSet", "Measurement"}
_AREA_ASAP_TYPES = {"Polygon", "Spline", "Rectangle"}


@dataclass(frozen=True)
class AnnotationPolygon:
    """One annotated area: its outline and holes as level-0 pixel ``(x, y)`` rings, and its class name as written
    in the file. ``index`` is its position in the file (features / annotations), for error messages and ties."""

    name: str
    rings: tuple[np.ndarray, ...]  # (K, 2) float64 each: outline first, then holes
    index: int

    @property
    def area(self) -> float:
        """Outline area minus the holes' (shoelace formula), in level-0 pixels squared."""
        outline, *holes = (abs(_signed_area(ring)) for ring in self.rings)
        return max(0.0, outline - sum(holes))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(x_min, y_min, x_max, y_max)`` of the outline."""
        outline = self.rings[0]
        return (*outline.min(axis=0), *outline.max(axis=0))  # type: ignore[return-value]


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def annotation_format(path: Path) -> str:
    """``"geojson"`` or ``"asap"`` from the file suffix (``.geojson``/``.json``, ``.xml``)."""
    try:
        return ANNOTATION_SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise AnnotationError(
            f"{path}: unknown annotation format; give a QuPath GeoJSON (.geojson, .json) or an ASAP XML (.xml)"
        ) from None


def read_annotations(path: str | Path) -> list[AnnotationPolygon]:
    """The polygons of a QuPath GeoJSON or ASAP XML file (by suffix), in file order.

    Raises
    ------
    AnnotationError
        The file cannot be read or parsed, or a polygon is malformed; the message names the file and the fix.
    """
    path = Path(path)
    reader = read_geojson if annotation_format(path) == "geojson" else read_asap_xml
    return reader(path)


def _ring(raw: Any, path: Path, where: str) -> np.ndarray:
    """A ring as a (K, 2) float array without its closing point; needs 3 or more distinct vertices."""
    try:
        ring = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        ring = np.zeros((0, 0))
    if ring.ndim != 2 or ring.shape[1] < 2 or not np.isfinite(ring[:, :2]).all():
        raise AnnotationError(f"{path}: {where}: a ring must be a list of [x, y] numbers; fix or delete it")
    ring = ring[:, :2]
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    if len(np.unique(ring, axis=0)) < 3:
        raise AnnotationError(f"{path}: {where}: a polygon ring needs 3 or more distinct points; fix or delete it")
    return ring


# --------------------------------------------------------------------------------------------- GeoJSON
def _geojson_class(properties: dict[str, Any]) -> str:
    classification = properties.get("classification")
    if isinstance(classification, dict):
        if classification.get("name"):
            return str(classification["name"])
        if classification.get("names"):
            return ": ".join(str(name) for name in classification["names"])
    elif isinstance(classification, str) and classification:
        return classification
    if isinstance(properties.get("name"), str) and properties["name"]:
        return properties["name"]
    return UNCLASSIFIED


def _geojson_polygons(geometry: Any, path: Path, where: str) -> Iterator[list[Any] | None]:
    """The polygons (lists of rings) of one geometry; a geometry without area gives one None."""
    if not isinstance(geometry, dict) or "type" not in geometry:
        raise AnnotationError(f"{path}: {where}: geometry is not a GeoJSON object with a 'type'; fix or delete it")
    kind = geometry["type"]
    if kind == "Polygon":
        yield geometry.get("coordinates") or []
    elif kind == "MultiPolygon":
        yield from geometry.get("coordinates") or []
    elif kind == "GeometryCollection":
        for i, part in enumerate(geometry.get("geometries") or []):
            yield from _geojson_polygons(part, path, f"{where} geometry {i}")
    elif kind in _NO_AREA_GEOMETRIES:
        yield None
    else:
        raise AnnotationError(f"{path}: {where}: unknown geometry type {kind!r}; give Polygon or MultiPolygon")


def _geojson_features(data: Any, path: Path) -> list[Any]:
    if isinstance(data, list):  # older QuPath exports: a plain array of features
        return data
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return data.get("features") or []
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    raise AnnotationError(
        f"{path}: not a GeoJSON FeatureCollection, Feature or list of features; "
        "export it from QuPath with File > Export objects as GeoJSON"
    )


def read_geojson(path: str | Path) -> list[AnnotationPolygon]:
    """The polygons of a (QuPath) GeoJSON file; see the module docstring for the accepted layouts."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise AnnotationError(f"{path}: cannot read ({err.strerror or err}); check the file") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        detail = (
            f"{err.msg}, line {err.lineno} column {err.colno}"
            if isinstance(err, json.JSONDecodeError)
            else "not UTF-8 text"
        )
        raise AnnotationError(
            f"{path}: not valid GeoJSON ({detail}); export it again (QuPath: File > Export objects as GeoJSON)"
        ) from err
    polygons: list[AnnotationPolygon] = []
    no_area = 0
    for i, feature in enumerate(_geojson_features(data, path)):
        if not isinstance(feature, dict):
            raise AnnotationError(f"{path}: feature {i} is not a GeoJSON object; fix or delete it")
        if feature.get("geometry") is None:  # GeoJSON allows features without geometry
            continue
        name = _geojson_class(feature.get("properties") or {})
        for rings in _geojson_polygons(feature["geometry"], path, f"feature {i}"):
            if rings is None:
                no_area += 1
                continue
            if not isinstance(rings, list) or not rings:
                raise AnnotationError(f"{path}: feature {i}: a polygon without rings; fix or delete it")
            parsed = tuple(_ring(ring, path, f"feature {i}") for ring in rings)
            polygons.append(AnnotationPolygon(name=name, rings=parsed, index=i))
    return _with_area(polygons, no_area, path)


def _with_area(polygons: list[AnnotationPolygon], no_area: int, path: Path) -> list[AnnotationPolygon]:
    """An empty file means "nothing annotated"; a file of points or lines only cannot label tiles."""
    if no_area and not polygons:
        raise AnnotationError(
            f"{path}: no polygons, only {no_area} point or line object(s) without area; export the annotated "
            "regions as polygons"
        )
    return polygons


# --------------------------------------------------------------------------------------------- ASAP XML
def _number(text: str | None, path: Path, where: str) -> float:
    if text is None:
        raise AnnotationError(f"{path}: {where}: missing coordinate; every <Coordinate> needs X and Y")
    text = text.strip()
    if "," in text and "." not in text:  # written with a decimal comma by some locales
        text = text.replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(f"{path}: {where}: coordinate {text!r} is not a number; fix the file") from None
    if not math.isfinite(value):
        raise AnnotationError(f"{path}: {where}: coordinate {text!r} is not finite; fix the file")
    return value


def read_asap_xml(path: str | Path) -> list[AnnotationPolygon]:
    """The polygons of an ASAP annotation XML file; see the module docstring for the types and groups."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except OSError as err:
        raise AnnotationError(f"{path}: cannot read ({err.strerror or err}); check the file") from err
    except ET.ParseError as err:
        raise AnnotationError(f"{path}: not valid XML ({err}); fix it or export it again from ASAP") from err
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(f"{path}: root element <{root.tag}>, not <ASAP_Annotations>; give an ASAP annotation XML")
    polygons: list[AnnotationPolygon] = []
    no_area = 0
    for i, annotation in enumerate(root.iter("Annotation")):
        kind = annotation.get("Type", "Polygon")
        where = f"annotation {annotation.get('Name', i)!r}"
        if kind in _NO_AREA_ASAP_TYPES:
            no_area += 1
            continue
        if kind not in _AREA_ASAP_TYPES:
            raise AnnotationError(
                f"{path}: {where}: unknown Type {kind!r}; expected one of Polygon, Spline, Rectangle, Dot, PointSet"
            )
        points = []
        for coordinate in annotation.iter("Coordinate"):
            order = coordinate.get("Order")
            x, y = _number(coordinate.get("X"), path, where), _number(coordinate.get("Y"), path, where)
            points.append((int(order) if order is not None and order.strip().isdigit() else len(points), x, y))
        points.sort(key=lambda point: point[0])
        ring = _ring([(x, y) for _, x, y in points], path, where)
        group = annotation.get("PartOfGroup") or "None"
        name = UNCLASSIFIED if group == "None" else group
        polygons.append(AnnotationPolygon(name=name, rings=(ring,), index=i))
    return _with_area(polygons, no_area, path)
