"""embed at cohort scale: one reading pipeline streams the tiles of many slides (batches span slides), and every
slide keeps its own lock, record and atomic commit: a kill -9 mid-stream resumes to the clean result, bad slides in
the middle of the stream fail alone, a reader process that dies takes only its own slide down, features made
another way are never reused silently, progress covers the whole run, and tiles are read as the encoder sees them."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr

from wsi_pipeline import store
from wsi_pipeline.batch import read_manifest
from wsi_pipeline.embedding import (
    EmbedConfig,
    EmbedProgress,
    EmbedRuntime,
    TileReader,
    TileRef,
    embed_slide,
    embed_stores,
    encoder_view,
    features_view,
)
from wsi_pipeline.encoders import create_encoder
from wsi_pipeline.slide import Slide
from wsi_pipeline.tiling import TileView, read_tile, resize_tile

from .conftest import CMU_SMALL, ROOT, SLIDES

ENC = "tiny_test"
STREAM = EmbedConfig(encoder=ENC, batch_size=8, num_workers=1)  # 8-tile batches: every slide spans batches
# Tiles per slide (a seeded subset of its tissue tiles); none is a multiple of the batch size.
SIZES = {"c1": 13, "c2": 21, "c3": 9, "c4": 30, "c5": 17, "c6": 11, "p1": 10}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stores made by the real tile stage: six copies of CMU-1-Small-Region.svs (9-30 tiles each) and a generated
    0.25 mpp pyramid tiled at 0.5 mpp (its tiles are read at 448 px and shrunk 2x)."""
    if not CMU_SMALL.exists():
        pytest.skip("real data not available: ../shared/data is absent")
    from tests.slide_factory import make_pyramid_slide
    from wsi_pipeline.tiling import QcConfig, TileConfig, tile_slide

    root = tmp_path_factory.mktemp("cohort")
    out = root / "stores"
    make_pyramid_slide(root / "p1.svs", width=3000, height=2400, mpp=0.25)
    for sid, n in SIZES.items():
        if sid.startswith("c"):
            shutil.copyfile(CMU_SMALL, root / f"{sid}.svs")
        tile_slide(Slide(root / f"{sid}.svs"), out, config=TileConfig(max_tiles=n, seed=n, qc=QcConfig(enabled=False)))
    return out


@pytest.fixture
def stores(cohort: Path, tmp_path: Path) -> Path:
    out = tmp_path / "stores"
    shutil.copytree(cohort, out)
    return out


@pytest.fixture(scope="module")
def reference(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Each slide embedded alone (``embed_slide``: a pipeline of its own, as before streaming), in process."""
    out = tmp_path_factory.mktemp("reference") / "stores"
    shutil.copytree(cohort, out)
    runtime = EmbedRuntime.create(create_encoder(ENC), dataclasses.replace(STREAM, num_workers=0))
    feats = {}
    for path in store.list_stores(out):
        embed_slide(path, runtime)
        feats[store.slide_id_from_store(path)] = store.read_features(path, ENC)
    return feats


def _features(stores_dir: Path) -> dict[str, np.ndarray]:
    return {
        store.slide_id_from_store(p): store.read_features(p, ENC)
        for p in store.list_stores(stores_dir)
        if store.has_features(p, ENC)
    }


def _assert_same_embeddings(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for sid in want:
        assert got[sid].shape == want[sid].shape and len(want[sid]) == SIZES[sid]
        # The same tiles through the same float32 model; batches group other tiles than when each slide ran alone,
        # so float16 results may differ in the last bit (CPU kernels depend on the batch size).
        np.testing.assert_allclose(got[sid].astype(np.float32), want[sid].astype(np.float32), rtol=0, atol=2e-3)


def _bad_store(stores_dir: Path, slide_id: str, slide_file: Path) -> None:
    """A store over ``slide_file`` with the attrs of a good store (what `tile` wrote before the file went bad)."""
    good = store.read_attrs(store.list_stores(stores_dir)[0])
    attrs = {k: good[k] for k in ("tiling", "config")}
    attrs["slide"] = {**good["slide"], "path": str(slide_file), "id": slide_id}
    try:  # a file that opens is the one the store was tiled from (its identity); the others broke since
        with Slide(slide_file) as slide:
            attrs["slide"]["identity"] = slide.identity()
    except Exception:  # noqa: BLE001 - unopenable or gone: only the embed stage's error matters here
        pass
    coords = [[0, 0], [224, 0], [0, 224], [224, 224], [448, 0]]  # unreadable.svs fails only near its origin
    store.write_tile_store(store.store_path(stores_dir, slide_id), coords, np.ones(len(coords)), attrs)


# --------------------------------------------------------------------------------------------- the stream
@pytest.mark.parametrize("workers", [0, 2])
def test_one_stream_gives_each_slide_its_own_embeddings(
    stores: Path, reference: dict[str, np.ndarray], workers: int
) -> None:
    seen: list[EmbedProgress] = []
    config = dataclasses.replace(STREAM, num_workers=workers)
    result = embed_stores(stores, config=config, progress=lambda s: seen.append(dataclasses.replace(s)))
    assert [r.status for r in result.records] == ["ok"] * 7
    assert [r.n_tiles for r in result.records] == list(SIZES.values())
    _assert_same_embeddings(_features(stores), reference)
    # Progress covers the whole run from the start: every tile of every slide, then slides as they finish.
    total = sum(SIZES.values())
    assert seen[0].tiles_total == total and seen[0].tiles_done == 0 and seen[0].slides_total == 7
    done = [s.tiles_done for s in seen]
    assert done == sorted(done) and seen[-1].tiles_done == total and seen[-1].slides_done == 7
    assert any(0 < s.tiles_done < total for s in seen)
    for path in store.list_stores(stores):  # provenance: how tiles were read and the signature
        attrs = zarr.open_array(str(path / "features" / ENC), mode="r").attrs.asdict()
        assert attrs["complete"] and attrs["signature"]["tile_read"].startswith("read_tile")
        assert attrs["signature"]["weights"] == {"source": "random", "sha256": None, "seed": 0}


def test_readers_start_once_per_run(stores: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils.data

    made = []
    real = torch.utils.data.DataLoader.__init__

    def counting(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        made.append(kwargs.get("num_workers"))
        real(self, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", counting)
    assert not embed_stores(stores, config=STREAM).failed
    assert made == [1]  # one pipeline for 7 slides (0.x built one per slide)


def test_bad_slides_in_the_middle_of_the_stream_fail_alone(stores: Path, reference: dict[str, np.ndarray]) -> None:
    # Sorted ids put them between good slides: c3 | c3x-* | c4 ...
    _bad_store(stores, "c3x-broken", SLIDES / "broken.svs")  # truncated: OpenSlide cannot open it
    _bad_store(stores, "c3y-unreadable", SLIDES / "unreadable.svs")  # opens; its tiles cannot be decoded
    _bad_store(stores, "c3z-unopenable", SLIDES / "unopenable.tiff")  # unsupported compression
    _bad_store(stores, "c3zz-missing", stores / "gone.svs")  # the slide file was moved away
    seen: list[EmbedProgress] = []
    result = embed_stores(stores, config=dataclasses.replace(STREAM, num_workers=2), progress=seen.append)
    status = {r.slide_id: r for r in result.records}
    # The run's total shrank by the tiles of the failed slides: the bar ends full, at the tiles really embedded.
    assert seen[-1].tiles_done == seen[-1].tiles_total >= sum(SIZES.values()) and seen[-1].slides_done == 11
    bad = ["c3x-broken", "c3y-unreadable", "c3z-unopenable", "c3zz-missing"]
    for sid, file in zip(bad, ["broken.svs", "unreadable.svs", "unopenable.tiff", "gone.svs"], strict=True):
        assert status[sid].status == "failed" and file in status[sid].error, status[sid]
        assert "\n" not in status[sid].error and "Traceback" not in status[sid].error
        assert not (store.store_path(stores, sid) / "features" / ENC).exists()
        assert not list((store.store_path(stores, sid) / "features").glob(".*"))  # no temporary left either
    assert "cannot decode" in status["c3y-unreadable"].error
    assert sorted(sid for sid, r in status.items() if r.status == "ok") == sorted(reference)
    _assert_same_embeddings(_features(stores), reference)  # the slides after them were embedded, correctly
    manifest = {r.slide_id: r.status for r in read_manifest(stores, f"embed-{ENC}")}
    assert manifest == {sid: r.status for sid, r in status.items()}


def test_a_reader_that_dies_takes_only_its_slide_down(
    stores: Path, reference: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    crash = stores.parent / "crash.svs"  # a file that kills the decoding process (as a bad JPEG can, in C)
    crash.symlink_to(CMU_SMALL)
    _bad_store(stores, "c3x-crash", crash)
    real = TileReader.__getitem__

    def dying(self: TileReader, ref: TileRef):  # noqa: ANN202
        if ref.path == str(crash):
            os._exit(3)  # in the worker process: no exception, no cleanup
        return real(self, ref)

    monkeypatch.setattr(TileReader, "__getitem__", dying)
    seen: list[EmbedProgress] = []
    result = embed_stores(stores, config=STREAM, progress=seen.append)
    assert seen[-1].tiles_done == seen[-1].tiles_total == sum(SIZES.values())  # retried tiles counted once
    status = {r.slide_id: r for r in result.records}
    assert status["c3x-crash"].status == "failed" and "retried alone" in status["c3x-crash"].error
    assert str(crash) in status["c3x-crash"].error
    assert [r for sid, r in status.items() if sid != "c3x-crash" and r.status != "ok"] == []
    _assert_same_embeddings(_features(stores), reference)  # slides in flight beside it were redone, correctly


# --------------------------------------------------------------------------------------------- kill -9, resume
_SLOW_RUN = """
import sys, time
from wsi_pipeline.embedding import EmbedConfig, EmbedRuntime, embed_stores

forward = EmbedRuntime.forward

def slow(self, tiles):
    time.sleep(0.15)  # give the test time to kill us while several slides are in flight
    return forward(self, tiles)

EmbedRuntime.forward = slow
embed_stores(sys.argv[1], config=EmbedConfig(encoder="tiny_test", batch_size=4, num_workers=1))
"""


def test_kill_9_mid_stream_then_rerun_equals_a_clean_run(stores: Path, reference: dict[str, np.ndarray]) -> None:
    run = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_SLOW_RUN), str(stores)],
        cwd=ROOT,
        start_new_session=True,  # its own process group: the kill takes the reader worker too, as Slurm does
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while len(_features(stores)) < 2:  # two slides committed, the others pending or in flight
            assert run.poll() is None, run.stderr.read().decode() if run.stderr else ""
            assert time.monotonic() < deadline, "the run never committed a slide"
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGKILL)
    finally:
        run.wait()
    killed = _features(stores)
    assert 2 <= len(killed) < len(reference)
    for sid, feats in killed.items():  # what was committed before the kill is complete and correct
        np.testing.assert_allclose(feats.astype(np.float32), reference[sid].astype(np.float32), rtol=0, atol=2e-3)
    left = [p for p in stores.glob("*.zarr/features/.*")]  # the slide in flight: a temporary, never an array
    assert all(".tmp-" in p.name for p in left)
    assert list((stores / ".locks" / f"embed-{ENC}").glob("*.lock"))  # its lock, held by a dead process

    resumed = embed_stores(stores, config=STREAM)
    status = {r.slide_id: r.status for r in resumed.records}
    assert {sid for sid, s in status.items() if s == "skipped"} == set(killed)  # finished slides are not redone
    assert {sid for sid, s in status.items() if s == "ok"} == set(reference) - set(killed)
    _assert_same_embeddings(_features(stores), reference)
    assert not list(stores.glob("*.zarr/features/.*"))  # temporaries of the killed run are gone
    assert not list((stores / ".locks" / f"embed-{ENC}").glob("*.lock"))


def test_embed_writes_no_temporary_a_resume_of_its_slide_would_miss(
    stores: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zarr writes metadata through ``<name>.<uuid>.partial`` files, some by an exclusive link whose temporary a
    kill at any other rename (in another thread) leaves behind. Embed writes none in a store's root, which nothing
    of its slide's resume cleans, and a resume removes those a killed run left in ``features/``, even before that
    group's own ``zarr.json`` was written (a kill at its very first rename)."""
    written: list[Path] = []
    for name in ("replace", "link", "rename"):
        real = getattr(os, name)

        def spy(src, dst, *args, _real=real, **kwargs):  # noqa: ANN001, ANN202 - os.replace/link/rename
            written.append(Path(dst))
            return _real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    sid = "c3"
    path = store.store_path(stores, sid)
    (path / "features").mkdir()
    stale = [path / "features" / "zarr.0123456789abcdef0123456789abcdef.partial"]
    stale[0].write_text("{")  # killed before the group's first metadata rename
    result = embed_stores(stores, config=dataclasses.replace(STREAM, num_workers=0))
    assert {r.status for r in result.records} == {"ok"}
    roots = set(store.list_stores(stores))
    assert written and not [dst for dst in written if dst.parent in roots]  # nothing renamed into a store's root
    assert not [p for p in stores.rglob("*") if p.suffix == ".partial" or ".tmp-" in p.name]


# --------------------------------------------------------------------------------------------- never reuse silently
def test_features_made_another_way_are_not_reused_silently(stores: Path) -> None:
    assert not embed_stores(stores, config=STREAM).failed
    again = embed_stores(stores, config=STREAM)
    assert {r.status for r in again.records} == {"skipped"}
    other_weights = embed_stores(stores, config=dataclasses.replace(STREAM, seed=1))  # other random weights
    assert {r.status for r in other_weights.records} == {"failed"}
    error = other_weights.records[0].error
    assert "made with other settings (weights: random (seed 0) -> random (seed 1))" in error and "--overwrite" in error
    other_dtype = embed_stores(stores, config=dataclasses.replace(STREAM, dtype="float32"))
    assert "dtype: float16 -> float32" in other_dtype.records[0].error
    redo = embed_stores(stores, config=dataclasses.replace(STREAM, seed=1), overwrite=True)
    assert {r.status for r in redo.records} == {"ok"}
    assert {r.status for r in embed_stores(stores, config=dataclasses.replace(STREAM, seed=1)).records} == {"skipped"}

    # Embeddings of an older version (no signature; tiles resized without anti-aliasing) are not taken as done.
    path = store.list_stores(stores)[0]
    meta_path = path / "features" / ENC / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["signature"]
    meta_path.write_text(json.dumps(meta))
    old = embed_stores(stores, config=dataclasses.replace(STREAM, seed=1))
    record = next(r for r in old.records if r.slide_id == store.slide_id_from_store(path))
    assert record.status == "failed" and "recorded no signature" in record.error
    assert all(r.status == "skipped" for r in old.records if r is not record)


# --------------------------------------------------------------------------------------------- how tiles are read
def test_shrinking_is_anti_aliased() -> None:
    # Pixel-level detail (white noise: the finest texture there is) shrunk 2x and 2.8x: an averaging, anti-aliased
    # resize keeps only what the smaller picture can hold (std / factor); bicubic sampling without anti-aliasing
    # (what embed did before) folds the fine detail back in as false texture.
    noise = np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    for size in (224, 160):
        shrunk = resize_tile(noise, size, interpolation="bicubic")
        assert np.array_equal(shrunk, cv2.resize(noise, (size, size), interpolation=cv2.INTER_AREA))
        aliased = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
        assert shrunk.std() < 1.05 * noise.std() * size / 448  # what averaging leaves of noise
        assert shrunk.std() < 0.75 * aliased.std()
    enlarged = resize_tile(noise[:100, :100], 224, interpolation="bicubic")  # enlarging uses the encoder's rule
    assert np.array_equal(enlarged, cv2.resize(noise[:100, :100], (224, 224), interpolation=cv2.INTER_CUBIC))
    cropped = resize_tile(noise, 256, crop=224)  # resize then centre crop (Prov-GigaPath's Resize+CenterCrop)
    assert cropped.shape == (224, 224, 3)
    assert np.array_equal(cropped, cv2.resize(noise, (256, 256), interpolation=cv2.INTER_AREA)[16:240, 16:240])


def test_the_encoder_sees_read_tile_with_its_view(stores: Path) -> None:
    path = store.store_path(stores, "p1")  # 0.25 mpp tiled at 0.5 mpp: 448 px read squares
    attrs = store.read_attrs(path)
    tiling, coords = attrs["tiling"], store.read_coords(path)
    assert tiling["read_size"] == 448 and tiling["tile_size"] == 224
    spec = create_encoder(ENC).config
    view = encoder_view(spec)
    assert view == TileView(size=64, interpolation=spec.interpolation)
    reader = TileReader(view)
    with Slide(attrs["slide"]["path"]) as slide:
        for row in (0, len(coords) - 1):
            x, y = (int(v) for v in coords[row])
            _, _, tile, error = reader[TileRef(0, row, attrs["slide"]["path"], tiling, x, y)]
            region = slide.read_region((x, y), 0, (448, 448))
            assert error == "" and np.array_equal(tile, cv2.resize(region, (64, 64), interpolation=cv2.INTER_AREA))
            assert np.array_equal(tile, read_tile(slide, (x, y), tiling, view))
    reader.close()
    embed_slide(path, create_encoder(ENC), config=STREAM)
    assert features_view(path, ENC) == view  # recorded with the embeddings: predict's top tiles use it
    assert features_view(path, "no_such_encoder") is None
