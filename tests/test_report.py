"""The report: files, reuse and rebuilds, the view server's refusals, and a real headless Chromium looking at the
pages (from file:// and from `wsi-pipeline view`): no console error, no network, the table, deeper tiles on zoom,
the overlay's pixels against the store's attention, layer toggling and the top-tile gallery.

One small cohort (4 stores of real tiles of CMU-1-Small-Region.svs, a 2-fold ABMIL, predicted with the run) is
built once per session; the browser tests skip, saying why, where Debian's chromium or playwright is missing.
"""

from __future__ import annotations

import http.client
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import CMU_SMALL, need_real_data
from tests.data import skip_reason
from wsi_pipeline.errors import MissingPrerequisiteError
from wsi_pipeline.predict import PredictConfig, predict_slides, scale_scores
from wsi_pipeline.report import ReportConfig, make_server, static_dir, write_report
from wsi_pipeline.store import read_attrs, read_coords, read_scores, write_instance_labels, write_scores

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ENTRY_POINT = Path(sys.executable).with_name("wsi-pipeline")
MAX_SIZE = 1000  # caps the 2220 x 2967 slide at 1/4 resolution: the capped path, and fast
PEAKED = "cmu_band2"  # its attention is replaced by a known peaked map (see `cohort`)
FLAT = "cmu_band1"  # keeps the model's own, nearly uniform attention


@dataclass
class Cohort:
    pred: Path
    stores: Path
    slide_ids: list[str]
    scores_name: str
    rebuilt: list[str]  # pages the second write_report rewrote after PEAKED's scores changed
    pyramids_rebuilt: list[str]
    run_dir: Path


def _tissue_geojson(stores: Path, sid: str) -> None:
    """A tissue outline where `tile` would write it: the bounding box of the store's tiles."""
    coords = read_coords(stores / f"{sid}.zarr")
    (x0, y0), (x1, y1) = coords.min(0), coords.max(0) + 256
    ring = [[float(x0), float(y0)], [float(x1), float(y0)], [float(x1), float(y1)], [float(x0), float(y1)]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]}, "properties": {}}
    path = stores / "geojson" / f"{sid}.geojson"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    from tests.test_predict import _make_stores
    from wsi_pipeline.training import TrainConfig, train

    need_real_data(CMU_SMALL)
    try:
        static_dir()
    except MissingPrerequisiteError as err:
        pytest.skip(skip_reason("the report's viewer built from npm", str(err)))
    tmp = tmp_path_factory.mktemp("report")
    stores, labels = _make_stores(CMU_SMALL, tmp / "data", n_bands=4)
    for sid in ("cmu_band0", PEAKED):
        _tissue_geojson(stores, sid)
    # An annotated slide: a polygon file as `annotate` records it beside its instance labels.
    annotation = tmp / "data" / "cmu_band0.geojson"
    ring = [[300.0, 100.0], [900.0, 100.0], [900.0, 500.0], [300.0, 500.0], [300.0, 100.0]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}}
    annotation.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    n0 = len(read_coords(stores / "cmu_band0.zarr"))
    write_instance_labels(
        stores / "cmu_band0.zarr",
        np.zeros(n0, dtype=np.int16),
        attrs={"classes": ["negative", "tumor"], "annotations": {"path": str(annotation), "sha256": "x"}},
    )
    cfg = TrainConfig(
        model="abmil", folds=2, val_fraction=0.0, epochs=1, lr=1e-3, plots=False, model_kwargs={"hidden_dim": 16}
    )
    run = train(stores, labels, tmp / "runs", cfg)
    pred = tmp / "pred"
    predict_config = PredictConfig(top_k=4, heatmaps=False, geojson=False, device="cpu", report_max_size=MAX_SIZE)
    result = predict_slides(run.run_dir, [stores], pred, predict_config)
    assert result.report == pred / "report" / "index.html"
    name = run.run_dir.name
    # One epoch leaves the attention nearly uniform (which the flat slide shows); to see where the colours go, the
    # peaked slide's scores become a known map: rising from the top-left tile, one tile far above the rest.
    store = stores / f"{PEAKED}.zarr"
    attrs = dict(zarr.open_array(str(store / "scores" / name)).attrs)
    coords = read_coords(store)
    peaked = np.exp((coords[:, 0] + coords[:, 1]) / 600.0)
    peaked[len(peaked) // 3] *= 40
    write_scores(store, name, peaked / peaked.sum(), attrs=attrs)
    again = write_report(pred, [f"cmu_band{i}" for i in range(4)], ReportConfig(max_size=MAX_SIZE, top_k=4))
    assert again is not None
    ids = [f"cmu_band{i}" for i in range(4)]
    return Cohort(pred, stores, ids, name, again.pages_written, again.pyramids_written, run.run_dir)


def test_cohort_reliability_shows_raw_and_calibrated_with_the_ece_predict_computed(cohort: Cohort) -> None:
    import re

    page = (cohort.pred / "report" / "index.html").read_text()
    title = re.search(r"reliability \(ECE raw ([0-9.]+), ECE temperature-scaled ([0-9.]+)\)", page)
    assert title, "the reliability chart names both ECEs"
    calibration = json.loads((cohort.pred / "metrics.json").read_text())["calibration"]
    assert float(title[1]) == pytest.approx(calibration["ece"], abs=5e-4)
    assert float(title[2]) == pytest.approx(calibration["ece_calibrated"], abs=5e-4)
    assert 'class="bin"' in page and 'class="bin calibrated"' in page


# --------------------------------------------------------------------------------------------- files, reuse
def test_report_files_and_rebuilds_only_what_changed(cohort: Cohort, tmp_path: Path) -> None:
    report = cohort.pred / "report"
    assert (report / "index.html").is_file()
    assert (report / "assets" / "openseadragon" / "openseadragon.min.js").is_file()
    for sid in cohort.slide_ids:
        assert (report / "slides" / f"{sid}.html").is_file()
        stamp = json.loads((report / "tiles" / f"{sid}.json").read_text())
        assert (stamp["width"], stamp["height"]) == (555, 742) and stamp["downsample"] == pytest.approx(4.0)
        top = report / "tiles" / f"{sid}_files" / str(stamp["levels"] - 1)
        assert (top / "0_0.jpeg").is_file() and not (top.parent / str(stamp["levels"])).exists()
    # The changed scores rebuilt that slide's page only; no pyramid was redone.
    assert cohort.rebuilt == [PEAKED] and cohort.pyramids_rebuilt == []
    # A copy of the folder (stores stay where they are) is reused whole, then loses a slide it no longer predicts.
    pred = tmp_path / "pred"
    shutil.copytree(cohort.pred, pred)
    config = ReportConfig(max_size=MAX_SIZE, top_k=4)
    same = write_report(pred, cohort.slide_ids, config)
    assert same is not None and same.pages_written == [] and same.pyramids_written == []
    fewer = write_report(pred, cohort.slide_ids[1:], config)
    assert fewer is not None and fewer.pages_written == []
    assert not (pred / "report" / "slides" / "cmu_band0.html").exists()
    assert not (pred / "report" / "tiles" / "cmu_band0_files").exists()
    assert "cmu_band0" not in (pred / "report" / "index.html").read_text()
    # Another pyramid cap redoes the pyramids and the pages over them.
    bigger = write_report(pred, cohort.slide_ids[3:], ReportConfig(max_size=800, top_k=4))
    assert bigger is not None and bigger.pyramids_written == bigger.pages_written == cohort.slide_ids[3:]


def test_interrupted_rebuild_leaves_no_index_and_a_held_lock_is_left_to_its_holder(
    cohort: Cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsi_pipeline.locks import SlideLock
    from wsi_pipeline.report import _report as report_module

    pred = tmp_path / "pred"
    shutil.copytree(cohort.pred, pred)
    config = ReportConfig(max_size=MAX_SIZE, top_k=3)  # another gallery size: every page is redrawn

    def killed(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "render_slide", killed)
    with pytest.raises(KeyboardInterrupt):
        write_report(pred, cohort.slide_ids, config)
    assert not (pred / "report" / "index.html").exists()  # no entry point to a half-redrawn report
    monkeypatch.undo()
    lock = SlideLock(pred / ".locks" / "report.lock")
    lock.acquire()  # another shard is writing it
    try:
        assert write_report(pred, cohort.slide_ids, config) is None
    finally:
        lock.release()
    done = write_report(pred, cohort.slide_ids, config)
    assert done is not None and sorted(done.pages_written) == cohort.slide_ids and done.pyramids_written == []
    assert (pred / "report" / "index.html").is_file()


def test_relative_scale_shows_flat_attention_flat() -> None:
    flat = 0.02321 + np.linspace(0, 0.00009, 43)  # max/min 1.004
    values = scale_scores(flat, "relative")
    assert np.ptp(values) < 0.002 and values.mean() == pytest.approx(0.5, abs=0.002)  # one colour: uniform
    peaked = np.full(100, 0.5 / 99)
    peaked[7] = 0.5  # half the attention on one tile of 100: 50 times uniform
    scaled = scale_scores(peaked, "relative")
    # the others get 0.505 of uniform: log2 -0.99 of the -4..4 range
    assert scaled[7] == 1.0 and scaled.argmax() == 7 and scaled[0] == pytest.approx(0.377, abs=0.001)


def test_cli_predict_prints_the_report_and_a_missing_viewer_is_one_warning(cohort: Cohort, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    # write_scores=false: the cohort's stores keep the attention its own report shows
    args = [cohort.run_dir, cohort.stores, "--out", out, "--no-heatmaps", "--top-k", "2"]
    args += ["--set", "write_scores=false", "--set", "report_max_size=300"]
    run = subprocess.run(
        [sys.executable, str(ENTRY_POINT), "predict", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert f"report: {out / 'report' / 'index.html'}" in run.stderr.replace("\n", "")
    assert sorted(p.stem for p in (out / "report" / "slides").glob("*.html")) == cohort.slide_ids

    # Without the built viewer the predictions stand and the report is one warning naming the fix.
    def missing(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise MissingPrerequisiteError("static/openseadragon: OpenSeadragon is not built; run `python web/build.py`")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("wsi_pipeline.report.write_report", missing)
        with pytest.warns(UserWarning, match="report not written: .*web/build.py"):
            settings = PredictConfig(heatmaps=False, top_k=2, write_scores=False, report_max_size=300)  # as above
            again = predict_slides(cohort.run_dir, [cohort.stores], out, settings)
        assert again.report is None and {r.status for r in again.batch.records} == {"skipped"}


@pytest.mark.parametrize("cap", [8192, 2048])
def test_pyramid_tiles_have_deep_zooms_geometry_and_each_level_halves_the_one_above(cap: int, tmp_path: Path) -> None:
    """Every written tile has the size Deep Zoom's geometry gives it (1 px overlaps inside the level), whether the
    top level is the slide's full resolution (8192) or one resized from another slide level (2048: there
    openslide's tiles can come out 1 px short); the top level's tiles are openslide.deepzoom's own, and each level
    below is the level above in 2 x 2 means (stitched, they match within JPEG noise: a row or column out of place
    would not)."""
    import cv2
    from PIL import Image

    from wsi_pipeline.report._pyramid import open_deepzoom, write_pyramid

    need_real_data(CMU_SMALL)
    files = tmp_path / "files"
    write_pyramid(CMU_SMALL, files, tmp_path / "stamp.json", {}, max_size=cap)

    def level_picture(dz, level: int) -> np.ndarray:  # the level's tiles stitched, overlaps cut off
        width, height = dz.generator.level_dimensions[level]
        cols, rows = dz.generator.level_tiles[level]
        picture = np.zeros((height, width, 3), dtype=np.int32)
        for row in range(rows):
            for col in range(cols):
                tile = np.asarray(Image.open(files / str(level) / f"{col}_{row}.jpeg"))
                core_h, core_w = min(254, height - row * 254), min(254, width - col * 254)
                want = (core_h + (row > 0) + (row < rows - 1), core_w + (col > 0) + (col < cols - 1), 3)
                if level < dz.top_level:
                    assert tile.shape == want, (level, col, row)
                elif tile.shape != want:  # openslide's own top-level tiles may be 1 px short
                    tile = cv2.resize(tile, want[1::-1], interpolation=cv2.INTER_AREA)
                top, left = int(row > 0), int(col > 0)
                picture[row * 254 : row * 254 + core_h, col * 254 : col * 254 + core_w] = tile[
                    top : top + core_h, left : left + core_w
                ]
        return picture

    with open_deepzoom(CMU_SMALL, max_size=cap) as dz:
        top = dz.top_level
        assert sorted(int(p.name) for p in files.iterdir()) == list(range(top + 1))
        assert (files / str(top) / "0_0.jpeg").read_bytes() == dz.tile_jpeg(top, 0, 0)
        above = level_picture(dz, top)
        for level in (top - 1, top - 2):
            below = level_picture(dz, level)
            h, w = above.shape[0] // 2, above.shape[1] // 2  # the whole 2 x 2 blocks of the level above
            halved = above[: 2 * h : 2, : 2 * w : 2] + above[1 : 2 * h : 2, : 2 * w : 2]
            halved = (halved + above[: 2 * h : 2, 1 : 2 * w : 2] + above[1 : 2 * h : 2, 1 : 2 * w : 2]) / 4
            aligned = np.abs(below[:h, :w] - halved).mean()
            shifted = min(
                np.abs(below[1:h, :w] - halved[: h - 1]).mean(), np.abs(below[:h, 1:w] - halved[:, : w - 1]).mean()
            )
            assert aligned < 4.0 and shifted > 2 * aligned, level  # JPEG noise, and what one row out of place makes
            above = below


# --------------------------------------------------------------------------------------------- view server
@pytest.fixture(scope="module")
def view_url(cohort: Cohort):
    """`wsi-pipeline view` of the cohort through the installed entry point, on a free port."""
    process = subprocess.Popen(
        [sys.executable, str(ENTRY_POINT), "view", str(cohort.pred), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    if "http://127.0.0.1:" not in line:
        process.kill()
        pytest.fail(f"view did not start: {line}{process.stderr.read()}")
    url = line.split(" on ", 1)[1].split(" ")[0]
    yield url
    process.terminate()
    process.wait(10)


def _get(url: str, path: str) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body


def test_view_serves_the_run_and_refuses_everything_else(cohort: Cohort, view_url: str, tmp_path: Path) -> None:
    assert _get(view_url, "/")[0] == 200 and _get(view_url, f"/slides/{FLAT}.html")[0] == 200
    assert _get(view_url, "/assets/report.js")[0] == 200
    status, tile = _get(view_url, f"/tiles/{FLAT}_files/12/0_0.jpeg")  # level 12: full resolution
    assert status == 200 and tile[:2] == b"\xff\xd8"
    for path in (
        "/../../etc/passwd",
        "/assets/../../../../etc/passwd",
        "/assets/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/assets//etc/passwd",
        "//etc/passwd",
        "/etc/passwd",
        f"/{cohort.pred}/predictions.csv",
        "/predictions.csv",
        "/slides/../index.html",
        "/slides/unknown.html",
        f"/tiles/{FLAT}_files/13/0_0.jpeg",  # past the last level
        f"/tiles/{FLAT}_files/12/99_0.jpeg",
        "/tiles/unknown_files/0/0_0.jpeg",
    ):
        assert _get(view_url, path)[0] == 404, path
    # Symlinks inside the served assets that point out of them are refused, in-folder ones served.
    static = tmp_path / "static"
    shutil.copytree(Path(__import__("wsi_pipeline.report", fromlist=["x"]).__file__).parent / "static", static)
    (tmp_path / "secret.txt").write_text("secret")
    (static / "out.txt").symlink_to(tmp_path / "secret.txt")
    (static / "outdir").symlink_to(tmp_path)
    (static / "in.js").symlink_to(static / "report.js")
    server = make_server(cohort.pred, port=0, static=static)
    import threading

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert _get(server.url, "/assets/in.js")[0] == 200
        assert _get(server.url, "/assets/out.txt")[0] == 404 and _get(server.url, "/assets/outdir/secret.txt")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_view_survives_clients_that_drop_mid_tile(view_url: str) -> None:
    host, port = view_url.removeprefix("http://").rstrip("/").split(":")
    for i in range(12):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(f"GET /tiles/{FLAT}_files/12/{i % 8}_{i % 11}.jpeg HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if i % 2:
            sock.recv(10)  # the headers have started: drop mid-response
        # a reset, not a polite close: what a browser cancelling a tile looks like
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    status, body = _get(view_url, f"/tiles/{FLAT}_files/12/1_1.jpeg")
    assert status == 200 and body[:2] == b"\xff\xd8"


def test_view_cli_user_mistakes_are_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ENTRY_POINT), "view", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "predictions.csv" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    run = subprocess.run(
        [sys.executable, str(ENTRY_POINT), "view", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr


# --------------------------------------------------------------------------------------------- browser
@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(skip_reason("Debian's chromium", f"{CHROMIUM} not found (apt-get install chromium)"))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(skip_reason("playwright", "not installed (pip install -e '.[dev]')"))
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Watched:
    """A page whose console errors and requests to anywhere but ``allowed`` are recorded."""

    def __init__(self, browser, allowed: tuple[str, ...]) -> None:  # noqa: ANN001
        self.page = browser.new_page(viewport={"width": 1200, "height": 800})
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url}"))
        self.page.on("request", lambda r: None if r.url.startswith(allowed) else self.foreign.append(r.url))

    def js(self, expression: str):  # noqa: ANN201
        return self.page.evaluate(expression)

    def wait(self, expression: str, timeout: float = 30.0) -> None:
        # polled from here: the pages' Content-Security-Policy forbids the eval that wait_for_function uses
        deadline = time.monotonic() + timeout
        while not self.js(f"!!({expression})"):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)

    def settled(self) -> None:
        self.wait("window.report && report.ready && report.viewer.world.getItemAt(0).getFullyLoaded()")
        self.wait(
            "!report.viewer.viewport.getZoom(true) || Math.abs(report.viewer.viewport.getZoom(true) - "
            "report.viewer.viewport.getZoom(false)) < 1e-6"
        )
        self.wait("report.viewer.world.getItemAt(0).getFullyLoaded()")
        self.page.wait_for_timeout(150)

    def viewer_pixels(self) -> np.ndarray:
        from PIL import Image

        png = self.page.locator("#viewer").screenshot()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)


def _tile_centres(page: Watched, store: Path) -> tuple[np.ndarray, np.ndarray]:
    coords = read_coords(store)
    size = float(read_attrs(store)["tiling"]["tile_size_level0"])
    points = page.js(f"{json.dumps((coords + size / 2).tolist())}.map(p => report.toPixel(p[0], p[1]))")
    return coords, np.rint(np.array(points)).astype(int)


def _heat(pixels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Red minus blue at each point (3 x 3 mean): the diverging map's hot end is red, its cold end blue."""
    return np.array([pixels[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(0) @ [1, 0, -1] for x, y in points])


def _check_pages(browser, cohort: Cohort, base: str, allowed: tuple[str, ...]) -> None:  # noqa: ANN001
    from scipy.stats import spearmanr

    watched = Watched(browser, allowed)
    page = watched.page
    # The cohort page lists every slide and links to its page.
    page.goto(base + "index.html")
    ids = page.locator("#slides tbody tr").evaluate_all("rows => rows.map(r => r.dataset.slide)")
    assert sorted(ids) == cohort.slide_ids
    page.fill("#filter", FLAT)
    assert page.locator("#slides tbody tr:not([hidden])").count() == 1
    page.set_viewport_size({"width": 450, "height": 300})  # a small viewer starts on a low level
    page.click(f"#slides a[href='slides/{FLAT}.html']")
    watched.settled()
    assert page.url.endswith(f"slides/{FLAT}.html")
    # Zooming in loads deeper tiles.
    before = watched.js("report.maxLoadedLevel")
    watched.js("report.viewer.viewport.zoomTo(report.viewer.viewport.getMaxZoom())")
    watched.settled()
    assert watched.js("report.maxLoadedLevel") > before
    # Nearly uniform attention is one colour.
    page.set_viewport_size({"width": 1200, "height": 800})
    watched.js("report.viewer.viewport.goHome(true)")
    store = cohort.stores / f"{FLAT}.zarr"
    page.fill("#opacity", "100")
    page.dispatch_event("#opacity", "input")
    watched.settled()
    _, points = _tile_centres(watched, store)
    flat_heat = _heat(watched.viewer_pixels(), points)
    assert np.ptp(flat_heat) < 12, flat_heat

    # The peaked slide: the overlay is hottest where the store's attention is highest.
    page.goto(base + f"slides/{PEAKED}.html")
    watched.settled()
    page.uncheck("#layer-tissue")
    page.fill("#opacity", "100")
    page.dispatch_event("#opacity", "input")
    watched.settled()
    store = cohort.stores / f"{PEAKED}.zarr"
    scores = read_scores(store, cohort.scores_name)
    coords, points = _tile_centres(watched, store)
    shown = watched.viewer_pixels()
    heat = _heat(shown, points)
    assert spearmanr(heat, scores).statistic > 0.9 and heat.argmax() == scores.argmax()
    assert heat.max() - heat.min() > 150  # from blue to red, not shades of one colour
    # Toggling the layer changes the picture there, and back.
    page.uncheck("#layer-attention")
    watched.settled()
    hidden = watched.viewer_pixels()
    assert np.abs(_heat(hidden, points) - heat).mean() > 30
    page.check("#layer-attention")
    watched.settled()
    assert np.abs(watched.viewer_pixels() - shown).mean() < 2
    # Clicking the first top tile flies there: its centre comes to the middle of the viewer, zoomed in.
    zoom = watched.js("report.viewer.viewport.getZoom(true)")
    page.click(".top-tiles button[data-rank='1']")
    watched.settled()
    top = int(scores.argmax())
    size = float(read_attrs(store)["tiling"]["tile_size_level0"])
    centre = np.array(watched.js(f"report.toPixel({coords[top, 0] + size / 2}, {coords[top, 1] + size / 2})"))
    middle = np.array(watched.js("[report.viewer.container.clientWidth / 2, report.viewer.container.clientHeight / 2]"))
    assert np.abs(centre - middle).max() < 20 and watched.js("report.viewer.viewport.getZoom(true)") > 2 * zoom
    assert watched.errors == [] and watched.foreign == []
    page.close()


def test_report_in_a_browser_from_file(browser, cohort: Cohort) -> None:  # noqa: ANN001
    _check_pages(browser, cohort, (cohort.pred / "report").as_uri() + "/", ("file:", "data:"))


def test_report_in_a_browser_from_view(browser, cohort: Cohort, view_url: str) -> None:  # noqa: ANN001
    _check_pages(browser, cohort, view_url, (view_url, "data:"))
