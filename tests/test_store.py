"""The zarr store layout: atomic creation, features committed by rename, scores, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_pipeline import __version__, store
from wsi_pipeline.errors import MissingPrerequisiteError, StoreError


def _store(tmp_path: Path, n: int = 6) -> Path:
    coords = np.stack([np.arange(n) * 224, np.zeros(n)], axis=1)
    return store.write_tile_store(
        store.store_path(tmp_path, "slide-a"), coords, np.linspace(0.5, 1, n), {"slide": {"id": "slide-a"}}
    )


def test_tile_store_is_complete_and_records_provenance(tmp_path: Path) -> None:
    path = _store(tmp_path)
    assert path.name == "slide-a.zarr" and store.slide_id_from_store(path) == "slide-a"
    assert store.is_complete(path)
    assert store.list_stores(tmp_path) == [path]
    attrs = store.read_attrs(path)
    assert attrs["wsi_pipeline"]["package_version"] == __version__
    assert attrs["wsi_pipeline"]["layout_version"] == store.LAYOUT_VERSION
    assert store.read_coords(path).shape == (6, 2)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind


@pytest.mark.parametrize("n", [0, 1, 2_517])
def test_tile_store_is_the_zarr_store_zarr_writes(tmp_path: Path, n: int) -> None:
    # The tile stage writes its two arrays without zarr: zarr must read them back bit for bit, with the metadata zarr
    # itself writes for the same arrays, and add arrays to the store afterwards as to any other.
    rng = np.random.default_rng(n)
    coords = rng.integers(0, 2**40, size=(n, 2))
    fraction = rng.random(n).astype(np.float32)
    path = store.write_tile_store(
        tmp_path / "ours.zarr", coords, fraction, {"slide": {"id": "a", "mpp": np.float64(0.5)}}
    )
    reference = zarr.open_group(str(tmp_path / "zarr.zarr"), mode="w")
    gzip = zarr.codecs.GzipCodec(level=1)
    for name, array in ((store.COORDS, coords), (store.TISSUE_FRACTION, fraction)):
        reference.create_array(
            name, shape=array.shape, dtype=array.dtype, chunks=[max(k, 1) for k in array.shape], compressors=gzip
        )[...] = array
        ours = zarr.open_array(str(path / name), mode="r")
        assert ours.dtype == array.dtype and ours.shape == array.shape
        assert np.array_equal(ours[...], array)
        assert json.loads((path / name / "zarr.json").read_text()) == json.loads(
            (tmp_path / "zarr.zarr" / name / "zarr.json").read_text()
        )
    if n:  # the gzip header records no time: the same tiles give the same bytes
        assert (path / store.COORDS / "c" / "0" / "0").read_bytes()[4:8] == bytes(4)
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs["slide"] == {"id": "a", "mpp": 0.5} and store.is_complete(path)
    assert sorted(group.array_keys()) == [store.COORDS, store.TISSUE_FRACTION]
    store.write_scores(path, "run", np.arange(n, dtype=np.float32))  # later stages add arrays as before
    assert np.array_equal(store.read_scores(path, "run"), np.arange(n, dtype=np.float32))


def test_incomplete_store_is_not_listed(tmp_path: Path) -> None:
    path = _store(tmp_path)
    group = zarr.open_group(str(path), mode="a")
    group.attrs["wsi_pipeline"] = {**group.attrs["wsi_pipeline"], "complete": False}
    assert not store.is_complete(path)
    assert store.list_stores(tmp_path) == []
    with pytest.raises(StoreError, match="not a finished slide store"):
        store.open_store(path)


def test_features_commit_by_rename_and_abort_leaves_nothing(tmp_path: Path) -> None:
    path = _store(tmp_path)
    block = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    with store.FeatureWriter(path, "enc-a", 6, 8, attrs={"encoder": "enc-a"}) as writer:
        writer.write(0, block[:4])
        assert not store.has_features(path, "enc-a")  # not visible until committed
        writer.write(4, block[4:])
    np.testing.assert_allclose(store.read_features(path, "enc-a"), block, rtol=1e-3, atol=1e-3)
    assert store.read_features(path, "enc-a").dtype == np.float16

    with pytest.raises(RuntimeError), store.FeatureWriter(path, "enc-b", 6, 8) as writer:
        writer.write(0, block[:3])
        raise RuntimeError("killed mid-slide")
    assert store.list_encoders(path) == ["enc-a"]
    assert sorted(p.name for p in (path / "features").iterdir() if p.is_dir()) == ["enc-a"]


def test_short_write_is_not_committed(tmp_path: Path) -> None:
    path = _store(tmp_path)
    writer = store.FeatureWriter(path, "enc", 6, 4)
    writer.write(0, np.zeros((5, 4)))
    with pytest.raises(StoreError, match="wrote 5 of 6"):
        writer.commit()


def test_missing_features_error_names_the_command(tmp_path: Path) -> None:
    path = _store(tmp_path)
    with pytest.raises(MissingPrerequisiteError, match="wsi-pipeline embed"):
        store.read_features(path, "uni")
    with pytest.raises(MissingPrerequisiteError, match="wsi-pipeline tile"):
        store.list_stores(tmp_path / "nowhere")


def test_scores_round_trip(tmp_path: Path) -> None:
    path = _store(tmp_path)
    store.write_scores(path, "run1", np.arange(6), {"model": "asmil"})
    np.testing.assert_array_equal(store.read_scores(path, "run1"), np.arange(6, dtype=np.float32))
    with pytest.raises(StoreError, match="no scores"):
        store.read_scores(path, "other")


def test_instance_labels_round_trip_and_checks(tmp_path: Path) -> None:
    path = _store(tmp_path)
    assert store.read_instance_labels(path) is None
    labels = np.array([0, 1, 0, 2, -1, 0])
    store.write_instance_labels(path, labels, {"classes": ["negative", "tumour", "necrosis"], "source": "test"})
    got = store.read_instance_labels(path)
    assert got is not None and got.dtype == np.int16
    np.testing.assert_array_equal(got, labels)
    with pytest.raises(StoreError, match="5 instance labels for 6 tiles"):
        store.write_instance_labels(path, labels[:5])
    with pytest.raises(StoreError, match="must be -1"):
        store.write_instance_labels(path, np.full(6, -2))
    np.testing.assert_array_equal(store.read_instance_labels(path), labels)  # a refused write changes nothing
    assert not any(p.name.startswith(".") for p in path.iterdir())
