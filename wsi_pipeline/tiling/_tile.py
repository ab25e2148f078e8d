"""The tile stage: tissue mask -> tile grid at a target mpp -> one zarr store per slide (+ QC picture, GeoJSON)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..batch import BatchResult, Done, Shard, SlideRecord, run_slide_batch
from ..config import config_to_dict
from ..errors import NoTissueError, SlideOpenError, StoreMismatchError, with_note
from ..files import remove_path, remove_stale_temporaries
from ..locks import SlideLock
from ..provenance import short, slide_changes
from ..slide import Slide
from ..store import is_complete, read_attrs, store_path, update_store_attrs, write_tile_store
from ..tissue import tissue_mask_with_info
from ._config import TileConfig
from ._grid import TileGrid, grid_positions, select_tiles, tissue_fractions

__all__ = [
    "tile_slide",
    "tile_slides",
    "compute_tile_grid",
    "check_store_settings",
    "store_changes",
    "check_store_slide",
    "discard_stale_store",
    "STAGE",
]

log = logging.getLogger(__name__)

STAGE = "tile"


def compute_tile_grid(slide: Slide, config: TileConfig) -> TileGrid:
    """Mask the slide's tissue and lay the grid; no file is written.

    Raises
    ------
    MissingMppError
        The slide has no resolution and none was given.
    NoTissueError
        No tissue, or no tile with at least ``config.min_tissue`` tissue.
    SlideReadError
        A region of the mask level cannot be decoded.
    """
    mpp = slide.mpp
    width, height = slide.dimensions
    if config.target_mpp < mpp * 0.95:
        log.warning(
            "%s: target %.3g um/px is finer than the scan (%.3g um/px); tiles are upsampled",
            slide.path,
            config.target_mpp,
            mpp,
        )
    overview, scale = slide.read_at_mpp(config.mask_mpp)
    mask_h, mask_w = overview.shape[:2]
    mask_scale = (width / mask_w, height / mask_h)  # level-0 px per mask px, per axis (rounding differs)
    mask_mpp = mpp * math.sqrt(mask_scale[0] * mask_scale[1])
    mask, mask_info = tissue_mask_with_info(overview, mask_mpp, config.mask)
    if not mask.any():
        raise NoTissueError(
            f"{slide.path}: no tissue found (threshold {mask_info['threshold']:.0f}); check the slide or lower "
            "--set mask.min_threshold / use --set mask.method=fixed"
        )
    size0 = config.tile_size * config.target_mpp / mpp
    step0 = config.step * config.target_mpp / mpp
    xs = grid_positions(width, size0, step0, config.edge)
    ys = grid_positions(height, size0, step0, config.edge)
    fractions = tissue_fractions(mask, xs, ys, size0, mask_scale)
    coords, kept = select_tiles(fractions, xs, ys, config.min_tissue, max_tiles=config.max_tiles, seed=config.seed)
    if len(coords) == 0:
        raise NoTissueError(
            f"{slide.path}: tissue found but no tile of {config.tile_size} px at {config.target_mpp} um/px has "
            f">= {config.min_tissue:.0%} tissue; lower --min-tissue or --tile-size"
        )
    read_level = slide.best_level_for_mpp(config.target_mpp)
    downsample = slide.level_downsamples[read_level]
    tiling = {
        "target_mpp": config.target_mpp,
        "tile_size": config.tile_size,
        "stride": config.step,
        "tile_size_level0": size0,
        "stride_level0": step0,
        "read_level": read_level,
        "read_mpp": mpp * downsample,
        "read_size": max(1, round(size0 / downsample)),
        "min_tissue": config.min_tissue,
        "edge": config.edge,
        "max_tiles": config.max_tiles,
        "seed": config.seed,
        "grid_shape": [len(ys), len(xs)],
        "n_candidates": int(np.count_nonzero(fractions > 0)),
        "n_tiles": len(coords),
        "order": "row-major",
    }
    mask_attrs = {
        **config_to_dict(config.mask),
        **mask_info,
        "mpp": mask_mpp,
        "scale": list(mask_scale),
        "shape": [mask_h, mask_w],
        "level": slide.best_level_for_mpp(config.mask_mpp),
    }
    return TileGrid(
        coords=coords,
        fractions=kept,
        mask=mask,
        mask_scale=mask_scale,
        mask_info=mask_attrs,
        overview=overview,
        tiling=tiling,
    )


def tile_slide(slide: Slide, out_dir: str | Path, *, config: TileConfig | None = None) -> Path:
    """Tile one slide into ``<out_dir>/<slide_id>.zarr`` (and its QC picture and GeoJSON when enabled).

    Parameters
    ----------
    slide
        The slide (its ``mpp`` override and ``slide_id`` are used).
    out_dir
        Output folder of the stores.
    config
        Tiling settings; defaults to ``TileConfig()``.

    Returns
    -------
    Path
        The finished store. It replaces any store of the same slide, keeping that store's embeddings, scores and
        instance labels when its tiles are the same (same slide, resolution, coordinates and read geometry); use
        ``tile_slides`` for skip/resume logic.

    Examples
    --------
    >>> from wsi_pipeline.slide import Slide
    >>> from wsi_pipeline.tiling import TileConfig, tile_slide
    >>> from wsi_pipeline.store import read_coords
    >>> store = tile_slide(Slide("CMU-1-Small-Region.svs"), "out/", config=TileConfig(target_mpp=0.5))  # doctest: +SKIP
    >>> coords = read_coords(store)  # then: wsi-pipeline embed out/ --encoder ...  # doctest: +SKIP
    """
    return _tile_one(slide, Path(out_dir), config or TileConfig())[0]


def _tile_one(slide: Slide, out_dir: Path, config: TileConfig) -> tuple[Path, int]:
    with slide:
        grid = compute_tile_grid(slide, config)
        info = slide.info()
        if config.qc.enabled:
            # QC first: a finished store then always has its pictures beside it.
            from ._qc import write_qc

            write_qc(out_dir, slide, grid, thumbnail_size=config.qc.thumbnail_size, geojson=config.qc.geojson)
    attrs = {
        "slide": info,
        "tiling": grid.tiling,
        "mask": grid.mask_info,
        "config": config_to_dict(config),
        "signature": config.signature(),
    }
    path = write_tile_store(store_path(out_dir, slide.slide_id), grid.coords, grid.fractions, attrs, keep_arrays=True)
    return path, len(grid.coords)


def store_changes(path: Path, config: TileConfig, slide: Slide) -> dict[str, list[str]] | None:
    """What differs between the finished store at ``path`` and what tiling ``slide`` with ``config`` would make:
    ``{"slide": [...], "settings": [...]}``, e.g. ``slide size 2220x2967 -> 16x16`` (another file at that path),
    ``tile_size 224 -> 256``, ``slide mpp 0.499 -> 0.25``. None when there is no finished store; both lists empty
    when it is the same (a moved slide file is the same slide)."""
    if not is_complete(path):
        return None
    attrs = read_attrs(path)
    stored_slide = attrs.get("slide") or {}
    stored = attrs.get("signature") or {}
    wanted = config_to_dict(config.signature())
    settings = [
        f"{key} {short(stored.get(key))} -> {short(wanted.get(key))}"
        for key in sorted(set(stored) | set(wanted))
        if stored.get(key) != wanted.get(key)
    ]
    stored_mpp, mpp = stored_slide.get("mpp"), slide.mpp_info()[0]
    if stored_mpp is None or mpp is None or not math.isclose(stored_mpp, mpp, rel_tol=1e-6):
        settings.append(f"slide mpp {short(stored_mpp)} -> {short(mpp)}")
    return {"slide": slide_changes(stored_slide.get("identity"), slide.identity()), "settings": settings}


def check_store_settings(path: Path, config: TileConfig, slide: Slide) -> bool:
    """True when the finished store at ``path`` was made from this slide file with ``config`` (and the slide's
    resolution); False when there is no finished store.

    Raises ``StoreMismatchError`` naming what differs when it was made from another file or with other settings.
    """
    diffs = store_changes(path, config, slide)
    if diffs is None:
        return False
    reasons = []
    if diffs["slide"]:
        reasons.append(f"made from another slide file ({'; '.join(diffs['slide'])})")
    if diffs["settings"]:
        reasons.append(f"made with other settings ({'; '.join(diffs['settings'])})")
    if reasons:
        raise StoreMismatchError(
            f"{path}: {', and '.join(reasons)}; use --overwrite to re-tile it (its embeddings go with it) "
            "or another --out"
        )
    return True


def check_store_slide(store: Path) -> Path:
    """The slide file ``store`` was tiled from, after checking that the file at its recorded path is still that
    slide (same identity): a replaced file is a ``StoreMismatchError`` naming what changed and the fix, so no stage
    reads the wrong pixels for a store's tiles."""
    slide_attrs = read_attrs(store).get("slide") or {}
    if not slide_attrs.get("path"):
        raise StoreMismatchError(f"{store}: records no slide file (bags made outside `tile`); it has no pixels to read")
    path = Path(slide_attrs["path"])
    if not path.exists():
        raise SlideOpenError(
            f"{path}: no such file (the slide of {store}); if it moved, re-run `wsi-pipeline tile` on its new place "
            "with the same --out: the store follows it"
        )
    with Slide(path) as slide:
        diffs = slide_changes(slide_attrs.get("identity"), slide.identity())
    if diffs:
        raise StoreMismatchError(
            f"{store}: its slide file {path} is not the one it was tiled from ({'; '.join(diffs)}); re-tile it: "
            f"`wsi-pipeline tile {path} --out {store.parent} --overwrite`"
        )
    return path


def discard_stale_store(out_dir: Path, slide_id: str, config: TileConfig, slide: Slide) -> str:
    """After a failed re-tiling (``--overwrite``): remove the finished store of ``slide_id`` (with its embeddings,
    QC picture and GeoJSON) unless it is still what tiling ``slide`` with ``config`` makes, so that no stage takes an
    old slide's store for this one's. Returns a note for the failure's reason ('' when nothing was removed)."""
    from ._qc import qc_paths

    final = store_path(out_dir, slide_id)
    if not is_complete(final):
        return ""
    try:
        diffs = store_changes(final, config, slide)
        why = "; ".join([*diffs["slide"], *diffs["settings"]]) if diffs else ""
    except Exception as err:  # noqa: BLE001 - an unreadable slide: its old store is not of what is there now
        why = f"the slide cannot be read ({err.__class__.__name__})"
    if not why:
        return ""
    for path in (final, *qc_paths(out_dir, slide_id)):
        remove_path(path)
    log.warning("%s: removed the old store %s (%s)", slide_id, final, why)
    return f"its old store was removed ({why})"


def _moved_from(path: Path, slide: Slide) -> str | None:
    """The file the store was made from, when it is not ``slide``'s path (the slide file was moved or renamed)."""
    recorded = (read_attrs(path).get("slide") or {}).get("path")
    return recorded if recorded and recorded != str(slide.path.resolve()) else None


def _as_entries(slides: Any) -> list[Any]:
    """``SlideEntry``-like items as given; plain paths (a folder, files, manifests) go through ``discover_slides``."""
    from ..discovery import discover_slides

    if isinstance(slides, (str, Path)):
        return discover_slides([slides])
    items = list(slides)
    if items and all(isinstance(item, (str, Path)) for item in items):
        return discover_slides(items)
    if not all(hasattr(item, "slide_id") and hasattr(item, "path") for item in items):
        raise TypeError("slides: pass SlideEntry items (see discover_slides) or paths, not a mix")
    return items


def _slide_of(item: Any) -> Slide:
    """The ``Slide`` of a ``SlideEntry``-like item (its per-slide mpp and the run's default, when it has them)."""
    return Slide(
        item.path,
        mpp=getattr(item, "mpp", None),
        slide_id=item.slide_id,
        default_mpp=getattr(item, "default_mpp", None),
    )


def _remove_stale_temporaries(out_dir: Path, slide_id: str) -> None:
    """Temporaries of a killed run (``.<name>.tmp-<host>-<pid>``); safe because we hold the slide's lock."""
    from ._qc import qc_paths

    for final in (store_path(out_dir, slide_id), *qc_paths(out_dir, slide_id)):
        remove_stale_temporaries(final)


def tile_slides(
    slides: Sequence[Any] | str | Path,
    out_dir: str | Path,
    *,
    config: TileConfig | None = None,
    shard: Shard | None = None,
    overwrite: bool = False,
    on_record: Callable[[SlideRecord], None] | None = None,
) -> BatchResult:
    """Tile many slides: skip finished ones, record every slide in ``<out_dir>/manifests/tile*.csv``, go on after
    failures.

    Parameters
    ----------
    slides
        ``SlideEntry`` items (``slide_id``, ``path``, ``mpp``), e.g. from ``discover_slides``; or paths (a folder,
        slide files, CSV manifests), which go through ``discover_slides`` with its defaults.
    out_dir
        Output folder: ``<slide_id>.zarr`` stores, ``manifests/``, ``qc/``, ``geojson/``.
    config
        Tiling settings; defaults to ``TileConfig()``.
    shard
        Process only this shard's slides (see ``resolve_shard``); its manifest is ``tile.shard-i-of-n.csv``.
    overwrite
        Redo slides whose store is already finished (also those made with other settings or from another file).
        Embeddings, scores and instance labels of a store whose tiles come out the same are kept.
    on_record
        Called with each slide's record as soon as it is known (progress bars).

    Returns
    -------
    BatchResult
        Records (ok / failed with reason / skipped) and the manifest path; ``result.failed`` is non-empty when a slide
        failed. A finished store made from another slide file or with other settings fails its slide
        (StoreMismatchError naming what changed) unless ``overwrite``; one made from the same file at another path
        (a moved slide) is kept and records the new path.

    Examples
    --------
    >>> from wsi_pipeline.discovery import discover_slides
    >>> result = tile_slides(discover_slides(["slides/"]), "out/", config=TileConfig())  # doctest: +SKIP
    >>> result.summary()  # doctest: +SKIP
    '3 ok, 0 skipped, 1 failed (manifest: out/manifests/tile.csv)'
    """
    config = config or TileConfig()
    out_dir = Path(out_dir)
    slides = _as_entries(slides)
    out_dir.mkdir(parents=True, exist_ok=True)

    def is_done(item: Any) -> bool:
        # A finished store made otherwise (or from a moved file) is "not done": process() then fails it with the
        # reason (or records the new path).
        final = store_path(out_dir, item.slide_id)
        if not is_complete(final):
            return False
        try:
            with _slide_of(item) as slide:
                diffs = store_changes(final, config, slide)
                return diffs is not None and not any(diffs.values()) and _moved_from(final, slide) is None
        except Exception:  # noqa: BLE001 - an unreadable slide is process()'s to report
            return False

    def process(item: Any, lock: SlideLock) -> Done:
        slide = _slide_of(item)
        try:
            return tile_one(item, slide, lock)
        except Exception as err:
            # --overwrite was asked and failed: an old store of another file or settings must not look finished.
            removed = discard_stale_store(out_dir, item.slide_id, config, slide) if overwrite else ""
            noted = with_note(err, removed) if removed else err
            if noted is err:
                raise
            raise noted from err

    def tile_one(item: Any, slide: Slide, lock: SlideLock) -> Done:
        final = store_path(out_dir, item.slide_id)
        with slide:
            note = slide.mpp_note()
            if note:
                log.warning("%s", note)
            if not overwrite and check_store_settings(final, config, slide):
                moved = _moved_from(final, slide)
                info = dict(read_attrs(final)["slide"], path=str(slide.path.resolve()))
                update_store_attrs(final, {"slide": info})  # same slide, new place: the store follows it
                n_done = int(read_attrs(final)["tiling"]["n_tiles"])
                return Done(n_done, "; ".join(filter(None, [f"already done; the slide moved from {moved}", note])))
        _remove_stale_temporaries(out_dir, item.slide_id)
        start = time.perf_counter()
        _, n_tiles = _tile_one(slide, out_dir, config)
        lock.heartbeat()
        log.info("%s: %d tiles in %.1fs", item.slide_id, n_tiles, time.perf_counter() - start)
        return Done(n_tiles, note)

    return run_slide_batch(
        list(slides),
        process,
        stage=STAGE,
        out_dir=out_dir,
        is_done=is_done,
        overwrite=overwrite,
        shard=shard,
        on_record=on_record,
    )
