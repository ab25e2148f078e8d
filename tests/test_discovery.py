"""Slide discovery: folders, recursion, DICOM folders, MIRAX data folders, manifests, mpp overrides, unique ids."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from wsi_pipeline.discovery import SlideEntry, discover_slides
from wsi_pipeline.errors import ConfigError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_real_slide_folder(slides_dir: Path) -> None:
    entries = discover_slides([slides_dir])
    ids = [e.slide_id for e in entries]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert "CMU-1-Small-Region" in ids
    dicom = [e for e in entries if e.path.suffix == ".dcm"]
    assert len(dicom) == 1 and dicom[0].path.name == "boxes_0.dcm"  # the DICOM pair is one slide
    # boxes.tiff and the boxes_*.dcm series share a stem: their file types tell them apart.
    assert {"boxes_tiff", "boxes_dcm"} <= set(ids)


def test_folder_recursion_extensions_and_hidden(tmp_path: Path) -> None:
    _touch(tmp_path / "a.svs")
    _touch(tmp_path / "B.NDPI")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".tmp.svs")
    _touch(tmp_path / "sub" / "c.tif")
    assert [e.slide_id for e in discover_slides(tmp_path)] == ["B", "a"]
    assert [e.slide_id for e in discover_slides([tmp_path], recursive=True)] == ["B", "a", "c"]
    assert [e.slide_id for e in discover_slides([tmp_path], recursive=True, extensions=["tif"])] == ["c"]


def test_dicom_folder_and_mrxs_companion(tmp_path: Path) -> None:
    for i in range(3):
        _touch(tmp_path / "case7" / f"1.2.840.{i}.dcm")  # UID-named instances: the folder names the slide
    _touch(tmp_path / "m" / "scan.mrxs")
    _touch(tmp_path / "m" / "scan" / "Data0001.dat")
    _touch(tmp_path / "m" / "scan" / "inner.svs")  # inside MIRAX data: never a slide
    entries = discover_slides([tmp_path], recursive=True)
    assert [(e.slide_id, e.path.name) for e in entries] == [("case7", "1.2.840.0.dcm"), ("scan", "scan.mrxs")]


def test_duplicate_stems_get_stable_unique_ids(tmp_path: Path) -> None:
    for site in ("site2", "site1"):
        _touch(tmp_path / site / "S01.svs")
    _touch(tmp_path / "site1" / "S02.svs")
    ids = [e.slide_id for e in discover_slides([tmp_path], recursive=True)]
    assert ids == ["S02", "site1_S01", "site2_S01"]
    # Same ids whatever the order of inputs (shards must agree).
    again = discover_slides([tmp_path / "site2", tmp_path / "site1"])
    assert sorted(e.slide_id for e in again) == ids


def test_csv_manifest_and_mpp_overrides(tmp_path: Path) -> None:
    _touch(tmp_path / "slides" / "a.svs")
    _touch(tmp_path / "slides" / "b.svs")
    _touch(tmp_path / "slides" / "c weird name.svs")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,slide_id,mpp\nslides/a.svs,patient-1,0.25\nslides/b.svs,,\nslides/c weird name.svs,,\n")
    mpp_csv = tmp_path / "mpp.csv"
    mpp_csv.write_text("slide,mpp\nb,0.5\npatient-1,9.9\n")
    entries = {e.slide_id: e for e in discover_slides([manifest], mpp_csv=mpp_csv, slide_mpp=1.0)}
    assert set(entries) == {"patient-1", "b", "c_weird_name"}
    assert entries["patient-1"].mpp == 0.25  # the manifest's own value wins
    assert entries["b"].mpp == 0.5  # then the per-slide CSV
    # --slide-mpp is the run's default, used only where the slide itself states no resolution
    assert entries["c_weird_name"].mpp is None and entries["c_weird_name"].default_mpp == 1.0
    assert entries["b"].path == tmp_path / "slides" / "b.svs"  # relative to the manifest
    assert isinstance(entries["b"], SlideEntry)


def test_manifest_slide_column_and_duplicates(tmp_path: Path) -> None:
    _touch(tmp_path / "a.svs")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide\n{tmp_path / 'a.svs'}\n{tmp_path / 'a.svs'}\n")
    assert [e.slide_id for e in discover_slides([manifest, tmp_path / "a.svs"])] == ["a"]


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file or folder"):
        discover_slides([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no slides found"):
        discover_slides([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="no slides given"):
        discover_slides([])
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.svs,1\n")
    with pytest.raises(ConfigError, match="'path'"):
        discover_slides([bad])
    _touch(tmp_path / "x.svs")
    mpp_csv = tmp_path / "mpp.csv"
    mpp_csv.write_text("slide,mpp\nx,abc\n")
    with pytest.raises(ConfigError, match="not a number"):
        discover_slides([tmp_path / "x.svs"], mpp_csv=mpp_csv)
    clash = tmp_path / "clash.csv"
    _touch(tmp_path / "y.svs")
    clash.write_text("path,slide_id\nx.svs,same\ny.svs,same\n")
    with pytest.raises(ConfigError, match="used twice"):
        discover_slides([clash])


def test_real_dicom_copied_into_own_folder(slides_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dicom_case"
    folder.mkdir()
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(slides_dir / name, folder / name)
    (entry,) = discover_slides([tmp_path], recursive=True)
    assert entry.slide_id == "boxes" and entry.path == folder / "boxes_0.dcm"
    # Naming the series' files one by one still gives one slide.
    assert discover_slides([folder / "boxes_1.dcm", folder / "boxes_0.dcm"]) == [entry]


def test_two_names_for_one_file_are_one_slide_and_said(
    cmu_slide: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a.svs").symlink_to(cmu_slide)
    (tmp_path / "b.svs").symlink_to(cmu_slide)
    with caplog.at_level("WARNING", logger="wsi_pipeline.discovery"):
        entries = discover_slides([tmp_path])
    assert [e.slide_id for e in entries] == ["a"]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "b.svs is the same file as" in message and "a.svs" in message and "processed once" in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="wsi_pipeline.discovery"):
        assert len(discover_slides([tmp_path / "a.svs", tmp_path / "a.svs"])) == 1  # the same path twice: no news
    assert not caplog.records
