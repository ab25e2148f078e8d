"""``write_report``: ``<pred>/report/``, the offline report of a prediction folder (cohort page, one page per slide,
deep-zoom pyramids), and the pages ``wsi-pipeline view`` serves.

Layout::

    report/index.html                 the cohort page (written last: an interrupted rebuild leaves none)
    report/slides/<slide_id>.html     one page per slide, its first line the fingerprint of what made it
    report/tiles/<slide_id>_files/    DZI levels up to ``max_size`` px; ``<slide_id>.json`` (written after) says
                                      what slide and settings made them
    report/assets/                    report.js, report.css and OpenSeadragon, copied from the package

A rerun reuses what is unchanged: a pyramid while the slide (its identity) and the settings are the same, a page
while its result, the store's attention, outlines and pyramid are the same; the rest is rebuilt, and pages of
slides this model did not predict are removed, so a report never mixes two runs' results.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import LockedError, MissingPrerequisiteError
from ..files import atomic_write_text, remove_path, temporary_then_rename
from ..locks import SlideLock
from ..predict import read_slide_result, slide_result_path
from ..store import features_attrs, read_attrs
from ._data import colour_bar, slide_data, slide_inputs
from ._pages import STAMP_PREFIX, index_page, slide_page
from ._pyramid import PYRAMID_LAYOUT, read_pyramid_stamp, tile_source, write_pyramid

__all__ = [
    "ReportConfig",
    "ReportResult",
    "write_report",
    "load_results",
    "report_provenance",
    "static_dir",
    "REPORT_DIR",
]

log = logging.getLogger(__name__)

REPORT_DIR = "report"
PAGE_LAYOUT = 1  # bump when pages change meaning: every page is rebuilt


@dataclass
class ReportConfig:
    """Settings of the report (``predict``'s ``report_*`` settings)."""

    max_size: int = 8192  # pyramids stop at the level whose long side fits (px); `view` serves full resolution
    top_k: int = 8  # top-attention tiles in each slide page's gallery
    tile_size: int = 254  # DZI tiles (254 + 2 x 1 overlap = 256)
    overlap: int = 1
    quality: int = 80  # JPEG


@dataclass
class ReportResult:
    index: Path
    slides: list[str]
    pages_written: list[str] = field(default_factory=list)
    pyramids_written: list[str] = field(default_factory=list)
    no_viewer: dict[str, str] = field(default_factory=dict)  # slide id -> why its page has no pixels
    inputs: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        reused = len(self.slides) - len(self.pages_written)
        return f"{len(self.slides)} slide page(s) ({len(self.pages_written)} written, {reused} reused) in {self.index}"


def static_dir() -> Path:
    """The package's report assets; OpenSeadragon in it is built from npm by ``web/build.py``."""
    static = Path(__file__).resolve().parent / "static"
    if not (static / "openseadragon" / "openseadragon.min.js").is_file():
        raise MissingPrerequisiteError(
            f"{static / 'openseadragon'}: OpenSeadragon is not built into the package; run `python web/build.py` "
            "in the source tree (needs Node.js/npm) or reinstall the package (`pip install -e .` builds it)"
        )
    return static


def _ids_from_csv(out_dir: Path) -> list[str]:
    import csv

    path = out_dir / "predictions.csv"
    try:
        with path.open(newline="") as fh:
            return [row["slide_id"] for row in csv.DictReader(fh)]
    except (OSError, KeyError) as err:
        raise MissingPrerequisiteError(
            f"{path}: not a readable predictions.csv ({err}); run `wsi-pipeline predict MODEL INPUTS --out {out_dir}`"
        ) from err


def load_results(
    out_dir: Path, slide_ids: Sequence[str] | None = None, checkpoint_sha256: str | None = None
) -> list[dict[str, Any]]:
    """The per-slide results of one model: those of ``slide_ids`` (default: ``predictions.csv``'s slides) made by
    the checkpoint ``checkpoint_sha256`` (default: the one of the most recent result), sorted by slide id."""
    out_dir = Path(out_dir)
    ids = sorted(set(_ids_from_csv(out_dir) if slide_ids is None else slide_ids))
    results = [r for r in (read_slide_result(out_dir, sid) for sid in ids) if r]
    if not results:
        return []
    sha = checkpoint_sha256
    if sha is None:
        newest = max(results, key=lambda r: slide_result_path(out_dir, r["slide_id"]).stat().st_mtime)
        sha = (newest.get("checkpoint") or {}).get("sha256")
    return [r for r in results if (r.get("checkpoint") or {}).get("sha256") == sha]


def report_provenance(results: Sequence[dict[str, Any]]) -> dict[str, str]:
    """What made the predictions: run, model, encoder and its weights, checkpoint sha256, package versions."""
    from .. import __version__

    if not results:
        return {}
    first = results[0]
    checkpoint = first.get("checkpoint") or {}
    features = features_attrs(Path(first["store"]), first["encoder"]) or {}
    weights = features.get("weights") or {}
    from ..provenance import weights_label

    return {
        "run": str(checkpoint.get("path", "")),
        "model": str(first.get("model", "")),
        "encoder": str(first.get("encoder", "")),
        "encoder weights": weights_label(weights),
        "weights sha256": str(weights.get("sha256") or "none (random initialisation)"),
        "checkpoint sha256": str(checkpoint.get("sha256", "")),
        "classes": ", ".join(first.get("classes") or []),
        "predicted with": f"wsi-pipeline {(first.get('wsi_pipeline') or {}).get('package_version', '?')}",
        "report by": f"wsi-pipeline {__version__}",
    }


@functools.lru_cache(maxsize=1)
def _code() -> str:
    """The code that draws the pages (a new version, or an edited checkout, rebuilds them)."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in (*sorted(here.glob("_*.py")), here.parent / "predict" / "_heatmap.py"):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _page_stamp(path: Path) -> str | None:
    try:
        with path.open() as fh:
            line = fh.readline()
    except OSError:
        return None
    return line[len(STAMP_PREFIX) :].split(" ", 1)[0] if line.startswith(STAMP_PREFIX) else None


def _index_rows(results: Sequence[dict[str, Any]], pages: set[str]) -> list[dict[str, Any]]:
    keys = ("slide_id", "label", "predicted_class", "probabilities", "calibrated_probabilities", "source", "folds")
    keys += ("n_tiles", "localisation")
    return [{**{k: r.get(k) for k in keys}, "page": r["slide_id"] in pages} for r in results]


def _sync_assets(report: Path) -> None:
    """Copy the package's assets into ``report/assets`` when they differ (a new version, a rebuilt viewer)."""
    static = static_dir()
    files = sorted(p for p in static.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(static)).encode() + b"\0" + path.read_bytes())
    target, manifest = report / "assets", report / "assets" / "MANIFEST"
    if manifest.is_file() and manifest.read_text().strip() == digest.hexdigest():
        return
    with temporary_then_rename(target) as tmp:
        shutil.copytree(static, tmp, ignore=shutil.ignore_patterns("__pycache__"))
        (tmp / "MANIFEST").write_text(digest.hexdigest() + "\n")


def _slide_file(store: Path) -> tuple[Path | None, str]:
    """The store's slide file after checking it is the one it was tiled from, or None and why not."""
    from ..errors import WsiPipelineError
    from ..tiling import check_store_slide

    try:
        return check_store_slide(store), ""
    except WsiPipelineError as err:
        return None, str(err)


def _pyramid(report: Path, result: dict[str, Any], config: ReportConfig) -> tuple[dict | None, str, bool]:
    """``(stamp, why none, written now)`` of the slide's pyramid: reused when it was made from the same slide with
    the same settings (even if the slide file is gone since), else written from the slide file."""
    sid, store = result["slide_id"], Path(result["store"])
    slide = read_attrs(store).get("slide") or {}
    want = {
        "layout": PYRAMID_LAYOUT,
        "slide": slide.get("identity"),
        "max_size": config.max_size,
        "tile_size": config.tile_size,
        "overlap": config.overlap,
        "quality": config.quality,
    }
    files, stamp_path = report / "tiles" / f"{sid}_files", report / "tiles" / f"{sid}.json"
    stamp = read_pyramid_stamp(stamp_path)
    if stamp and slide.get("identity") and all(stamp.get(k) == v for k, v in want.items()) and files.is_dir():
        return stamp, "", False
    stamp_path.unlink(missing_ok=True)  # from now on the folder is incomplete until the new stamp lands
    slide_path, why = _slide_file(store)
    if slide_path is None:
        remove_path(files)
        return None, why, False
    try:
        stamp = write_pyramid(
            slide_path,
            files,
            stamp_path,
            want,
            max_size=config.max_size,
            tile_size=config.tile_size,
            overlap=config.overlap,
            quality=config.quality,
        )
    except Exception as err:  # noqa: BLE001 - one unreadable slide costs its viewer, not the report
        log.warning("report: no pyramid for %s: %s", sid, err)
        return None, f"{slide_path}: its pixels could not be read ({err})", False
    return stamp, "", True


def _resolution_note(stamp: dict[str, Any], mpp: float | None, live: bool) -> str:
    if live or stamp["downsample"] <= 1.0001:
        return "full resolution" + (f" ({mpp:.3g} \u00b5m/px)" if mpp else "")
    at = f" ({mpp * stamp['downsample']:.3g} \u00b5m/px)" if mpp else ""
    return (
        f"pixels down to 1/{stamp['downsample']:.3g} of full resolution{at}; `wsi-pipeline view` of the prediction "
        "folder serves full resolution"
    )


def _slide_stamp(result: dict[str, Any], pyramid: dict[str, Any] | None, why: str, config: ReportConfig) -> str:
    inputs = slide_inputs(result)
    return _fingerprint(
        {
            "layout": PAGE_LAYOUT,
            "code": _code(),
            "inputs": inputs,
            "pyramid": pyramid,
            "why": why,
            "top_k": config.top_k,
        }
    )


def render_slide(
    result: dict[str, Any], pyramid: dict[str, Any] | None, why: str, config: ReportConfig, *, live: bool = False
) -> tuple[str, str]:
    """``(stamp, html)`` of a slide page over ``pyramid`` (``{width, height, downsample}``; None: no viewer, for
    the reason ``why``). ``live``: the pyramid is served at full resolution by ``view``."""
    sid = result["slide_id"]
    stamp = _slide_stamp(result, pyramid, why, config)
    slide_path, _ = _slide_file(Path(result["store"]))  # the gallery's pixels, only from the very slide
    data = slide_data(result, slide_path=slide_path, top_k=config.top_k, viewer_note=why)
    data["colour_bar"] = colour_bar()
    source = None
    if pyramid is not None:
        url = f"../tiles/{quote(sid, safe='')}_files/"
        source = tile_source(url, pyramid["width"], pyramid["height"], config.tile_size, config.overlap)
        data["resolution_note"] = _resolution_note(pyramid, data.get("mpp"), live)
    return stamp, slide_page(data, source, stamp=stamp, assets="../assets")


def render_index(results: Sequence[dict[str, Any]], pages: set[str], page_stamps: dict[str, str]) -> tuple[str, str]:
    classes = list(results[0]["classes"]) if results else []
    provenance = report_provenance(results)
    stamp = _fingerprint(
        {
            "layout": PAGE_LAYOUT,
            "code": _code(),
            "pages": page_stamps,
            "provenance": provenance,
            "results": [_fingerprint(r) for r in results],
        }
    )
    return stamp, index_page(_index_rows(results, pages), classes, provenance, stamp=stamp, assets="assets")


def _finished(out_dir: Path, slide_ids: Sequence[str] | None, sha: str | None) -> dict[str, str]:
    """Fingerprint of every result the report would show now (to tell whether more arrived meanwhile)."""
    return {r["slide_id"]: _fingerprint(r) for r in load_results(out_dir, slide_ids, sha)}


def _remove_temporaries(report: Path) -> None:
    """What a killed report writer left (``.<name>.tmp-<host>-<pid>``); we hold the report's lock."""
    for folder in (report, report / "slides", report / "tiles"):
        for path in folder.glob(".*.tmp-*") if folder.is_dir() else []:
            remove_path(path)


def _build(out_dir: Path, slide_ids: Sequence[str] | None, config: ReportConfig, sha: str | None) -> ReportResult:
    report = out_dir / REPORT_DIR
    _remove_temporaries(report)
    results = load_results(out_dir, slide_ids, sha)
    index = report / "index.html"
    outcome = ReportResult(
        index, [r["slide_id"] for r in results], inputs={r["slide_id"]: _fingerprint(r) for r in results}
    )
    report.mkdir(parents=True, exist_ok=True)
    _sync_assets(report)
    pages, stamps = set(), {}
    index_removed = False
    for result in results:
        sid = result["slide_id"]
        pyramid, why, written = _pyramid(report, result, config)
        if written:
            outcome.pyramids_written.append(sid)
        if pyramid is None:
            outcome.no_viewer[sid] = why
        page = report / "slides" / f"{sid}.html"  # on disk as is; links quote it (page_href)
        quick = _slide_stamp(result, pyramid, why, config)
        if _page_stamp(page) != quick:
            if not index_removed:
                index.unlink(missing_ok=True)  # no entry point while pages of two runs could sit side by side
                index_removed = True
            stamp, text = render_slide(result, pyramid, why, config)
            atomic_write_text(page, text)
            outcome.pages_written.append(sid)
        pages.add(sid)
        stamps[sid] = quick
    # Pages and pyramids of slides this model has no result for (another run's, removed inputs) go.
    keep_pages = {f"{sid}.html" for sid in pages}
    for page in (report / "slides").glob("*.html") if (report / "slides").is_dir() else []:
        if page.name not in keep_pages:
            index.unlink(missing_ok=True)
            page.unlink()
    wanted = set(slide_ids) if slide_ids is not None else set(pages)
    tiles = report / "tiles"
    for path in tiles.iterdir() if tiles.is_dir() else []:
        sid = path.name.removesuffix("_files") if path.is_dir() else path.name.removesuffix(".json")
        if sid not in wanted and not path.name.startswith("."):
            remove_path(path)
    stamp, text = render_index(results, pages, stamps)
    if _page_stamp(index) != stamp:
        atomic_write_text(index, text)
    return outcome


def write_report(
    out_dir: str | Path,
    slide_ids: Sequence[str] | None = None,
    config: ReportConfig | None = None,
    *,
    checkpoint_sha256: str | None = None,
) -> ReportResult | None:
    """Write or update ``<out_dir>/report/`` from the prediction folder's per-slide results.

    Parameters
    ----------
    out_dir
        A ``predict`` output folder (``slides/<id>.json``, ``predictions.csv``; the stores the results name).
    slide_ids
        The slides to show (default: those of ``predictions.csv``); only results of the model that made the most
        recent of them are shown.
    config
        Pyramid cap, gallery size, tile settings (``ReportConfig``).
    checkpoint_sha256
        Show the results of this checkpoint only (``predict`` passes its own); default: the most recent result's.

    Returns
    -------
    ReportResult or None
        None when another process holds ``<out_dir>/.locks/report.lock``: it is writing the report and, after it
        releases the lock, takes in every result finished before then (this run's included).

    Examples
    --------
    >>> result = predict_slides(run_dir, [stores], "pred/")  # doctest: +SKIP  (writes pred/report/ itself)
    >>> write_report("pred/").summary()  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    config = config or ReportConfig()
    static_dir()  # a missing viewer is said before anything is written
    lock = SlideLock(out_dir / ".locks" / "report.lock", stale_after_s=600.0)
    outcome = None
    while True:
        try:
            lock.acquire()
        except LockedError:
            log.info("report: %s is being written by another process; it takes in these results", out_dir / REPORT_DIR)
            return outcome
        try:
            outcome = _build(out_dir, slide_ids, config, checkpoint_sha256)
        finally:
            lock.release()
        # Results finished while we held the lock may belong to a process that found it held: take them in.
        if _finished(out_dir, slide_ids, checkpoint_sha256) == outcome.inputs:
            return outcome
