"""annotate: QuPath GeoJSON and ASAP XML polygons -> per-tile labels (readers, area shares, overlap rules, the
batch over stores, the CLI as a user runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsi_pipeline.annotations import (
    UNCLASSIFIED,
    AnnotateConfig,
    PaintedPolygon,
    annotate_store,
    annotate_stores,
    find_annotation_files,
    labels_from_shares,
    paint_order,
    polygon_edges,
    read_annotations,
    tile_shares,
)
from wsi_pipeline.config import load_config
from wsi_pipeline.errors import AnnotationError
from wsi_pipeline.store import (
    read_instance_labels,
    read_instance_labels_attrs,
    write_instance_labels,
    write_tile_store,
)

ROOT = Path(__file__).resolve().parents[1]
WSI_PIPELINE = Path(sys.executable).with_name("wsi-pipeline")  # the installed entry point


# --------------------------------------------------------------------------------------------- writing test files
def _rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _octagon(cx: float, cy: float, r: float) -> list[list[float]]:
    angles = np.arange(8) * np.pi / 4 + np.pi / 8
    ring = [[round(cx + r * np.cos(a), 3), round(cy + r * np.sin(a), 3)] for a in angles]
    return ring + [ring[0]]


def _feature(geometry: dict, classification: object = None, **properties: object) -> dict:
    props = dict(properties)
    if classification is not None:
        props["classification"] = classification
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _write_geojson(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _write_asap(path: Path, annotations: list[tuple[str, str, list[list[float]]]], kind: str = "Polygon") -> Path:
    """``annotations``: (name, group, closed ring); ASAP lists each vertex once, so the closing point is dropped."""
    items = []
    for name, group, ring in annotations:
        coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(ring[:-1]))
        items.append(
            f'<Annotation Name="{name}" Type="{kind}" PartOfGroup="{group}" Color="#F4FA58">'
            f"<Coordinates>{coords}</Coordinates></Annotation>"
        )
    groups = "".join(
        f'<Group Name="{g}" PartOfGroup="None" Color="#64FE2E"/>' for g in sorted({a[1] for a in annotations})
    )
    path.write_text(
        f'<?xml version="1.0"?><ASAP_Annotations><Annotations>{"".join(items)}</Annotations>'
        f"<AnnotationGroups>{groups}</AnnotationGroups></ASAP_Annotations>"
    )
    return path


def _tile_store(directory: Path, slide_id: str, n: int = 6, size0: float = 100.0) -> Path:
    """A finished store with an n x n grid of size0 tiles from (0, 0), as `tile` writes it (no slide needed)."""
    coords = np.array([(x * size0, y * size0) for y in range(n) for x in range(n)], dtype=np.int64)
    attrs = {
        "slide": {"id": slide_id, "width": n * size0, "height": n * size0, "mpp": 0.5},
        "tiling": {"tile_size_level0": size0, "stride_level0": size0, "n_tiles": len(coords)},
    }
    return write_tile_store(directory / f"{slide_id}.zarr", coords, np.ones(len(coords), np.float32), attrs)


# --------------------------------------------------------------------------------------------- config
def test_annotate_yaml_mirrors_defaults() -> None:
    assert load_config(AnnotateConfig, "annotate", ROOT / "configs" / "annotate.yaml") == AnnotateConfig()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": []}, "at least one class"),
        ({"classes": ["tumor", "Tumor"]}, "twice"),
        ({"aliases": {"x": "stroma"}}, "not in classes"),
        ({"exclude": ["_0"]}, "both aliases and exclude"),
        ({"threshold": 0.0}, "threshold"),
        ({"negative_max": 0.6}, "negative_max"),
        ({"samples": 1}, "samples"),
    ],
)
def test_config_rejects_contradictions(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AnnotateConfig(**kwargs)


# --------------------------------------------------------------------------------------------- readers
def test_geojson_reader_takes_qupath_layouts_holes_and_classes(tmp_path: Path) -> None:
    square = {"type": "Polygon", "coordinates": [_rect(0, 0, 100, 100), _rect(25, 25, 75, 75)]}
    multi = {"type": "MultiPolygon", "coordinates": [[_rect(200, 0, 300, 50)], [_rect(200, 60, 300, 100)]]}
    collection = {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [1, 1]}, square]}
    path = _write_geojson(
        tmp_path / "a.geojson",
        [
            _feature(square, {"name": "Tumor", "color": [200, 0, 0]}),
            _feature(multi, "Stroma"),  # older exports: classification as a string
            _feature(collection, None, name="Necrosis"),  # oldest: properties.name
            _feature(square),  # unclassified
            _feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, {"name": "Tumor"}),
            {"type": "Feature", "geometry": None, "properties": {}},
        ],
    )
    polygons = read_annotations(path)
    assert [p.name for p in polygons] == ["Tumor", "Stroma", "Stroma", "Necrosis", UNCLASSIFIED]
    assert [len(p.rings) for p in polygons] == [2, 1, 1, 2, 2]
    assert polygons[0].area == pytest.approx(100 * 100 - 50 * 50)
    assert polygons[0].rings[0].shape == (4, 2)  # the closing point is dropped
    # A bare Feature and a plain array of features (older QuPath) read the same.
    (tmp_path / "b.geojson").write_text(json.dumps(_feature(square, {"name": "Tumor"})))
    (tmp_path / "c.json").write_text(json.dumps([_feature(square, {"name": "Tumor"})]))
    for name in ("b.geojson", "c.json"):
        (only,) = read_annotations(tmp_path / name)
        assert only.name == "Tumor" and only.area == polygons[0].area


def test_asap_reader_orders_vertices_and_reads_groups(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(
        '<?xml version="1.0"?><ASAP_Annotations><Annotations>'
        '<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0"><Coordinates>'
        '<Coordinate Order="2" X="100" Y="1,0e2"/><Coordinate Order="0" X="0" Y="0"/>'
        '<Coordinate Order="3" X="0" Y="100"/><Coordinate Order="1" X="100,5" Y="0"/>'
        "</Coordinates></Annotation>"
        '<Annotation Name="dot" Type="Dot" PartOfGroup="_0"><Coordinates>'
        '<Coordinate Order="0" X="5" Y="5"/></Coordinates></Annotation>'
        '<Annotation Name="Annotation 2" Type="Spline" PartOfGroup="None"><Coordinates>'
        '<Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="10" Y="0"/>'
        '<Coordinate Order="2" X="0" Y="10"/></Coordinates></Annotation>'
        "</Annotations></ASAP_Annotations>"
    )
    first, second = read_annotations(path)
    assert first.name == "_0" and second.name == UNCLASSIFIED
    np.testing.assert_allclose(first.rings[0], [[0, 0], [100.5, 0], [100, 100], [0, 100]])  # decimal commas too
    assert second.area == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.geojson", '{"type": "FeatureCollection", "features": [', "not valid GeoJSON"),
        ("a.geojson", '{"type": "Topology"}', "not a GeoJSON FeatureCollection"),
        (
            "a.geojson",
            json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}}),
            "3 or more distinct points",
        ),
        (
            "a.geojson",
            json.dumps({"type": "Feature", "geometry": {"type": "Circle", "coordinates": [0, 0]}}),
            "unknown geometry type",
        ),
        (
            "a.geojson",
            json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}}),
            "no polygons",
        ),
        ("a.xml", "<ASAP_Annotations><Annotations>", "not valid XML"),
        ("a.xml", "<Annotations/>", "not <ASAP_Annotations>"),
        (
            "a.xml",
            '<ASAP_Annotations><Annotation Type="Polygon"><Coordinate X="a" Y="1"/></Annotation></ASAP_Annotations>',
            "not a number",
        ),
        ("a.txt", "anything", "unknown annotation format"),
    ],
)
def test_bad_annotation_files_are_one_line_errors_naming_the_file(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(AnnotationError, match=message) as info:
        read_annotations(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_annotation_files_match_slide_ids(tmp_path: Path) -> None:
    for name in ("a.geojson", "b.svs.geojson", "c.xml", "c.geojson", "d.ndpi.json", "notes.txt", ".hidden.xml"):
        (tmp_path / name).write_text("{}")
    found = find_annotation_files(tmp_path)
    assert {k: [p.name for p in v] for k, v in found.items()} == {
        "a": ["a.geojson"],
        "b": ["b.svs.geojson"],
        "c": ["c.geojson", "c.xml"],
        "d": ["d.ndpi.json"],
    }


# --------------------------------------------------------------------------------------------- shares and labels
def _overlap(tile: tuple[float, float], size: float, rect: tuple[float, float, float, float]) -> float:
    x0, y0, x1, y1 = rect
    w = max(0.0, min(tile[0] + size, x1) - max(tile[0], x0))
    h = max(0.0, min(tile[1] + size, y1) - max(tile[1], y0))
    return w * h / size**2


def test_shares_match_exact_areas_of_rectangles_with_holes() -> None:
    rng = np.random.default_rng(0)
    size, samples = 97.3, 32
    coords = np.array([(x * size, y * size) for y in range(8) for x in range(8)])
    for _ in range(20):
        x0, y0 = rng.uniform(0, 300, 2)
        outer = (x0, y0, x0 + rng.uniform(200, 450), y0 + rng.uniform(200, 450))
        hole = (outer[0] + 50, outer[1] + 50, outer[0] + 150, outer[1] + 120)
        rings = [np.array(_rect(*outer)[:-1]), np.array(_rect(*hole)[:-1])]
        shares = tile_shares(coords, size, [PaintedPolygon(polygon_edges(rings), 1)], 3, samples=samples)
        exact = np.array([_overlap(t, size, outer) - _overlap(t, size, hole) for t in coords])
        assert np.abs(shares[:, 1] - exact).max() <= 2.0 / samples
        assert np.allclose(shares.sum(axis=1), 1.0)
        assert (shares[exact == 0, 1] == 0).all()  # tiles beside the polygon get nothing


def test_shares_of_a_slanted_polygon_converge_with_samples() -> None:
    size = 100.0
    coords = np.array([(x * size, y * size) for y in range(4) for x in range(4)])
    triangle = [np.array([[0.0, 0.0], [400.0, 0.0], [0.0, 400.0]])]
    exact = np.array([[1, 1, 1, 0.5], [1, 1, 0.5, 0], [1, 0.5, 0, 0], [0.5, 0, 0, 0]]).ravel()
    errors = []
    for samples in (8, 32, 128):
        shares = tile_shares(coords, size, [PaintedPolygon(polygon_edges(triangle), 1)], 3, samples=samples)
        errors.append(np.abs(shares[:, 1] - exact).max())
    assert errors[0] > errors[1] > errors[2] and errors[2] <= 1.0 / 128


def test_overlap_rules_smaller_region_then_exclusions_then_unknown_win(tmp_path: Path) -> None:
    config = AnnotateConfig(classes=["tumor", "necrosis"])
    path = _write_geojson(
        tmp_path / "a.geojson",
        [
            _feature({"type": "Polygon", "coordinates": [_rect(0, 0, 50, 100)]}, {"name": "Necrosis"}),
            _feature({"type": "Polygon", "coordinates": [_rect(0, 0, 400, 100)]}, {"name": "Tumor"}),
            _feature({"type": "Polygon", "coordinates": [_rect(100, 0, 200, 100)]}, {"name": "_2"}),
            _feature({"type": "Polygon", "coordinates": [_rect(200, 0, 300, 100)]}, {"name": "Ignore*"}),
            _feature({"type": "Polygon", "coordinates": [_rect(0, 0, 400, 100)]}, {"name": "Tissue"}),
        ],
    )
    with pytest.raises(AnnotationError, match=r"'Tissue' is not in annotate.classes \(tumor, necrosis\).*skip"):
        paint_order(read_annotations(path), config, path)
    config = AnnotateConfig(classes=["tumor", "necrosis"], skip=["tissue"])
    painted = paint_order(read_annotations(path), config, path)
    assert [p.value for p in painted] == [1, 2, 0, 3]  # tumour (largest), necrosis, exclusion, unknown
    coords = np.array([[0, 0], [100, 0], [200, 0], [300, 0]])
    shares = tile_shares(coords, 100.0, painted, 4, samples=16)
    np.testing.assert_allclose(shares[0], [0, 0.5, 0.5, 0])  # necrosis drawn inside tumour keeps its half
    np.testing.assert_allclose(shares[1], [1, 0, 0, 0])  # exclusion: negative over tumour
    np.testing.assert_allclose(shares[2], [0, 0, 0, 1])  # unknown over tumour
    np.testing.assert_allclose(shares[3], [0, 1, 0, 0])
    labels = labels_from_shares(shares, n_classes=2, threshold=0.5)
    assert labels.tolist() == [-1, 0, -1, 1]  # a 50/50 tie is unknown, not a guess


def test_labels_from_shares_threshold_and_negative_margin() -> None:
    #                    negative tumor stroma unknown
    shares = np.array(
        [
            [1.00, 0.00, 0.00, 0.00],  # nothing annotated
            [0.30, 0.70, 0.00, 0.00],  # tumour reaches 0.5
            [0.55, 0.45, 0.00, 0.00],  # tumour below the threshold: partly annotated
            [0.02, 0.00, 0.98, 0.00],  # stroma
            [0.10, 0.00, 0.00, 0.90],  # under an unknown region
            [0.10, 0.60, 0.00, 0.30],  # a class that reaches the threshold wins over unknown area
            [0.98, 0.02, 0.00, 0.00],  # a sliver of tumour
        ]
    )
    assert labels_from_shares(shares, n_classes=2, threshold=0.5).tolist() == [0, 1, -1, 2, -1, 1, -1]
    # negative_max = threshold: every tile below the threshold is negative (the plain rule); the sliver tolerated.
    assert labels_from_shares(shares, n_classes=2, threshold=0.5, negative_max=0.5).tolist() == [0, 1, 0, 2, -1, 1, 0]
    assert labels_from_shares(shares, n_classes=2, threshold=0.4).tolist()[2] == 1


# --------------------------------------------------------------------------------------------- the real slide
@pytest.fixture(scope="module")
def cmu_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CC0 CMU slide tiled at 112 px (0.5 um/px) with an overlapping stride of 84 px."""
    from tests.conftest import CMU_SMALL
    from wsi_pipeline.slide import Slide
    from wsi_pipeline.tiling import TileConfig, tile_slide

    if not CMU_SMALL.exists():
        pytest.skip(f"real data not available: {CMU_SMALL}")
    config = TileConfig(tile_size=112, stride=84, min_tissue=0.25)
    config.qc.enabled = False
    return tile_slide(Slide(CMU_SMALL), tmp_path_factory.mktemp("cmu"), config=config)


TUMOR, HOLE, STROMA, IGNORE = (
    (600, 500, 1600, 1800),
    (900, 800, 1200, 1300),
    (1400, 1500, 1900, 2000),
    (300, 2500, 500, 2700),
)
OCTAGON = _octagon(1700, 2450, 250)


def _cmu_geojson(path: Path) -> Path:
    return _write_geojson(
        path,
        [
            _feature(
                {"type": "MultiPolygon", "coordinates": [[_rect(*TUMOR), _rect(*HOLE)], [OCTAGON]]},
                {"name": "Tumor", "color": [200, 0, 0]},
                objectType="annotation",
            ),
            _feature({"type": "Polygon", "coordinates": [_rect(*STROMA)]}, {"name": "Stroma"}, objectType="annotation"),
            _feature(
                {"type": "Polygon", "coordinates": [_rect(*IGNORE)]}, {"name": "Ignore*"}, objectType="annotation"
            ),
        ],
    )


def _cmu_asap(path: Path) -> Path:
    # The same shapes the CAMELYON16 way: tumour in _0/_1, the hole as an exclusion annotation in _2.
    return _write_asap(
        path,
        [
            ("Annotation 0", "_0", _rect(*TUMOR)),
            ("Annotation 1", "_1", OCTAGON),
            ("Annotation 2", "_2", _rect(*HOLE)),
            ("Annotation 3", "Stroma", _rect(*STROMA)),
            ("Annotation 4", "Ignore*", _rect(*IGNORE)),
        ],
    )


def test_geojson_and_asap_xml_of_the_same_shapes_give_identical_labels_on_the_real_slide(
    cmu_store: Path, tmp_path: Path
) -> None:
    from wsi_pipeline.store import read_attrs, read_coords

    config = AnnotateConfig(classes=["tumor", "stroma"])
    from_geojson = annotate_store(cmu_store, _cmu_geojson(tmp_path / "CMU-1-Small-Region.geojson"), config=config)
    attrs = read_instance_labels_attrs(cmu_store)
    from_asap = annotate_store(cmu_store, _cmu_asap(tmp_path / "CMU-1-Small-Region.xml"), config=config)
    np.testing.assert_array_equal(from_geojson, from_asap)
    np.testing.assert_array_equal(read_instance_labels(cmu_store), from_asap)
    assert attrs["classes"] == ["negative", "tumor", "stroma"] and attrs["annotations"]["format"] == "geojson"
    assert read_instance_labels_attrs(cmu_store)["annotations"]["format"] == "asap"
    assert {-1, 0, 1, 2} <= set(from_asap.tolist())

    # Against exact areas (rectangles; tiles near the octagon left out): the stroma rectangle is drawn over the
    # tumour (it is the smaller region) and the hole is negative.
    coords = read_coords(cmu_store)
    size = read_attrs(cmu_store)["tiling"]["tile_size_level0"]
    overlap = (STROMA[0], STROMA[1], TUMOR[2], TUMOR[3])
    exact = np.array(
        [
            [
                _overlap(t, size, TUMOR) - _overlap(t, size, HOLE) - _overlap(t, size, overlap),
                _overlap(t, size, STROMA),
                _overlap(t, size, IGNORE),
            ]
            for t in coords
        ]
    )
    shares = np.column_stack([1 - exact.sum(1), exact])
    expected = labels_from_shares(shares, n_classes=2, threshold=config.threshold)
    octagon_box = (1450, 2200, 1950, 2700)
    margin = 2.0 / config.samples  # how far sampling may move a share
    clear = np.array(
        [
            _overlap(t, size, octagon_box) == 0 and all(s == 0 or (s > margin and abs(s - 0.5) > margin) for s in row)
            for t, row in zip(coords, exact, strict=True)
        ]
    )
    assert clear.sum() > 100 and (expected[clear] != 0).sum() > 20
    np.testing.assert_array_equal(from_asap[clear], expected[clear])
    in_hole = np.array([_overlap(t, size, HOLE) > 1 - 1e-9 for t in coords])
    assert in_hole.any() and (from_asap[in_hole] == 0).all()
    in_octagon = np.array([_overlap(t, size, (1560, 2310, 1840, 2590)) > 1 - 1e-9 for t in coords])  # inner square
    assert in_octagon.any() and (from_asap[in_octagon] == 1).all()


def test_annotations_outside_the_slide_are_an_error(cmu_store: Path, tmp_path: Path) -> None:
    # e.g. exported at a downsample or in microns: every polygon misses the slide
    path = _write_geojson(
        tmp_path / "far.geojson",
        [_feature({"type": "Polygon", "coordinates": [_rect(5000, 5000, 6000, 6000)]}, {"name": "Tumor"})],
    )
    with pytest.raises(AnnotationError, match="outside the slide .* level-0 pixel"):
        annotate_store(cmu_store, path)


# --------------------------------------------------------------------------------------------- the batch
def test_annotate_stores_matches_files_resumes_and_records_failures(tmp_path: Path) -> None:
    stores, notes = tmp_path / "stores", tmp_path / "annotations"
    notes.mkdir()
    for sid in ("a", "b", "c", "d", "e", "f"):
        _tile_store(stores, sid)
    tumour = [_feature({"type": "Polygon", "coordinates": [_rect(0, 0, 230, 230)]}, {"name": "Tumor"})]
    _write_geojson(notes / "a.geojson", tumour)
    _write_asap(notes / "b.svs.xml", [("Annotation 0", "_0", _rect(0, 0, 230, 230))])
    (notes / "d.geojson").write_text("{ not json")
    _write_geojson(notes / "e.geojson", tumour)
    _write_geojson(notes / "e.xml", tumour)
    _write_geojson(
        notes / "f.geojson", [_feature({"type": "Polygon", "coordinates": [_rect(0, 0, 99, 99)]}, {"name": "Tumour"})]
    )
    _write_geojson(notes / "orphan.geojson", tumour)

    result = annotate_stores(stores, notes)
    status = {r.slide_id: r.status for r in result.batch.records}
    assert status == {"a": "ok", "b": "ok", "d": "failed", "e": "failed", "f": "failed"}
    errors = {r.slide_id: r.error for r in result.failed}
    assert "d.geojson: not valid GeoJSON" in errors["d"]
    assert "2 annotation files for e (e.geojson, e.xml); keep one" in errors["e"]
    assert "'Tumour' is not in annotate.classes (tumor)" in errors["f"]
    assert result.without_annotations == ["c"] and [p.name for p in result.unmatched_files] == ["orphan.geojson"]
    assert read_instance_labels(stores / "c.zarr") is None and read_instance_labels(stores / "d.zarr") is None
    labels_a = read_instance_labels(stores / "a.zarr")
    np.testing.assert_array_equal(labels_a, read_instance_labels(stores / "b.zarr"))  # 2.3 x 2.3 tiles of tumour
    grid = labels_a.reshape(6, 6)
    assert (grid[:2, :2] == 1).all() and (grid[:3, 2] == -1).all() and (grid[2, :3] == -1).all()
    assert (grid[3:] == 0).all() and (grid[:, 3:] == 0).all()
    assert (stores / "manifests" / "annotate.csv").is_file()

    # A second run skips what is up to date; a changed file or setting is redone; --overwrite redoes all.
    again = annotate_stores(stores, notes)
    assert {r.slide_id: r.status for r in again.batch.records if r.slide_id in "ab"} == {"a": "skipped", "b": "skipped"}
    _write_geojson(
        notes / "a.geojson", [_feature({"type": "Polygon", "coordinates": [_rect(0, 0, 600, 600)]}, {"name": "Tumor"})]
    )
    again = annotate_stores(stores, notes, config=AnnotateConfig(negative_max=0.5))
    assert {r.slide_id: r.status for r in again.batch.records if r.slide_id in "ab"} == {"a": "ok", "b": "ok"}
    assert (read_instance_labels(stores / "a.zarr") == 1).all()
    assert (read_instance_labels(stores / "b.zarr").reshape(6, 6)[:3, 2] == 0).all()  # 30% tumour: negative now


def test_labels_from_another_source_are_replaced_only_with_overwrite(tmp_path: Path) -> None:
    stores, notes = tmp_path / "stores", tmp_path / "annotations"
    notes.mkdir()
    store = _tile_store(stores, "a")
    write_instance_labels(store, np.ones(36, np.int16), attrs={"classes": ["negative", "digit 9"], "source": "digits"})
    _write_geojson(
        notes / "a.geojson", [_feature({"type": "Polygon", "coordinates": [_rect(0, 0, 100, 100)]}, {"name": "Tumor"})]
    )
    result = annotate_stores(stores, notes)
    assert "has instance_labels from 'digits'; use --overwrite" in result.failed[0].error
    assert (read_instance_labels(store) == 1).all()
    assert not annotate_stores(stores, notes, overwrite=True).failed
    assert read_instance_labels(store).sum() == 1 and read_instance_labels_attrs(store)["classes"] == [
        "negative",
        "tumor",
    ]


# --------------------------------------------------------------------------------------------- CLI
def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("WSI_PIPELINE_DEBUG", None)
    return subprocess.run([str(WSI_PIPELINE), *map(str, args)], capture_output=True, text=True, timeout=120, env=env)


def test_cli_annotates_and_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    stores, notes = tmp_path / "stores", tmp_path / "annotations"
    notes.mkdir()
    _tile_store(stores, "good")
    _tile_store(stores, "bad")
    _write_geojson(
        notes / "good.geojson",
        [_feature({"type": "Polygon", "coordinates": [_rect(0, 0, 300, 300)]}, {"name": "Necrosis"})],
    )
    _write_asap(notes / "bad.xml", [("Annotation 0", "_0", _rect(0, 0, 250, 250))])
    (notes / "bad.xml").write_text((notes / "bad.xml").read_text()[:-20])  # truncated file

    run = _cli("annotate", stores, "--annotations", notes, "--classes", "tumor,necrosis")
    assert run.returncode == 1, run.stderr
    assert "bad.xml: not valid XML" in run.stderr and "Traceback" not in run.stderr + run.stdout
    assert "1 ok" in run.stderr and "necrosis 9" in run.stderr
    assert (read_instance_labels(stores / "good.zarr") == 2).sum() == 9

    for args, message in [
        (("annotate", stores, "--annotations", tmp_path / "missing"), "no such folder of annotation files"),
        (("annotate", stores, "--annotations", notes, "--classes", ","), "give class names separated by commas"),
    ]:
        run = _cli(*args)
        assert run.returncode == 1 and message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
