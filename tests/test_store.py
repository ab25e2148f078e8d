"""The zarr store layout: atomic creation, features committed by rename, scores, clear errors."""

from __future__ import annotations

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
