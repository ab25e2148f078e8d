"""``predict``: a trained checkpoint applied to slide stores (or raw slides): class probabilities, per-tile
attention written back into the stores, heatmaps and top-k tiles.

Per slide, like the other per-slide stages (``batch.run_slide_batch``, stage ``predict``): skipped when done (its
``<out>/slides/<slide_id>.json`` names the same checkpoint and embeddings), locked (``<out>/.locks/predict/``),
recorded ok/failed/skipped in ``<out>/manifests/predict[.shard-i-of-n].csv``, and the batch goes on after a failure.
``predictions.csv`` is then rebuilt from every input slide's result (see ``_results``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..batch import BatchResult, Shard, SlideLock, SlideRecord, remove_stale_temporaries, run_slide_batch
from ..errors import ConfigError, StoreMismatchError
from ..store import SCORES, is_complete, list_encoders, read_attrs, read_coords, read_features, write_scores
from ..training._checkpoint import load_checkpoint, model_from_checkpoint
from ..training._train import resolve_device
from ._heatmap import draw_heatmap, save_top_tiles
from ._inputs import PredictItem, SlidePreparer, collect_items
from ._results import (
    checkpoint_identity,
    features_stamp,
    is_finished,
    read_slide_result,
    slide_result_path,
    write_predictions_csv,
    write_slide_result,
)

__all__ = ["PredictConfig", "PredictResult", "predict_store", "predict_slides", "check_store", "scores_name_for"]

log = logging.getLogger(__name__)

STAGE = "predict"


@dataclass
class PredictConfig:
    """Settings of ``predict`` (``configs/predict.yaml`` mirrors these defaults)."""

    heatmaps: bool = True
    top_k: int = 8  # top-attention tiles saved as PNG patches per slide (0: none)
    scaling: Literal["rank", "percentile", "linear"] = "rank"
    thumbnail_size: int = 2048
    write_scores: bool = True  # store per-tile attention as scores/<scores_name> in each store
    scores_name: str | None = None  # default: from the checkpoint's run folder, e.g. asmil_uni_cv5_seed0_fold0
    device: str = "auto"


@dataclass
class PredictResult:
    """``csv``: the merged ``predictions.csv``; ``rows``: its rows (every input slide predicted with this checkpoint
    so far, by this run or an earlier one or another shard); ``batch``: this run's per-slide records."""

    csv: Path
    rows: list[dict[str, Any]]
    batch: BatchResult
    heatmap_skipped: list[str] = field(default_factory=list)

    @property
    def records(self) -> list[SlideRecord]:
        return self.batch.records

    @property
    def failed(self) -> list[SlideRecord]:
        return self.batch.failed

    def summary(self) -> str:
        return self.batch.summary()


def scores_name_for(checkpoint: Path, ckpt: dict[str, Any]) -> str:
    """``<run folder>_fold<k>`` for a checkpoint inside a run, else ``<model>_<checkpoint stem>``."""
    checkpoint = Path(checkpoint).resolve()
    if checkpoint.parent.name.startswith("fold_"):
        return f"{checkpoint.parent.parent.name}_fold{checkpoint.parent.name.removeprefix('fold_')}"
    return f"{ckpt['model_name']}_{checkpoint.stem}"


def check_store(store: Path, ckpt: dict[str, Any], checkpoint: Path) -> None:
    """Raise ``StoreMismatchError`` when ``store`` is not a finished store, lacks the checkpoint's encoder or has
    another dimension."""
    if not is_complete(store):
        raise StoreMismatchError(f"{store}: not a finished slide store; run `wsi-pipeline tile` to make it")
    encoder, in_dim = ckpt["encoder"], int(ckpt["in_dim"])
    found = list_encoders(store)
    if encoder not in found:
        raise StoreMismatchError(
            f"{store}: no '{encoder}' embeddings (found: {', '.join(found) or 'none'}) but {checkpoint} was trained "
            f"on them; run `wsi-pipeline embed {store.parent} --encoder {encoder}`"
        )
    import zarr

    dim = zarr.open_array(str(store / "features" / encoder), mode="r").shape[1]
    if dim != in_dim:
        raise StoreMismatchError(
            f"{store}: '{encoder}' embeddings have dimension {dim} but {checkpoint} expects {in_dim}; "
            "re-embed with the checkpoint's encoder settings or use a matching checkpoint"
        )


def _heatmap(
    store: Path,
    sid: str,
    coords: np.ndarray,
    scores: np.ndarray,
    out_dir: Path,
    config: PredictConfig,
    title: str,
    encoder: str,
) -> str | None:
    """Draw the heatmap and top tiles; return why not when the store's slide file is unavailable."""
    attrs = read_attrs(store)
    slide = attrs.get("slide") or {}
    tiling = attrs.get("tiling") or {}
    slide_path, tile_size = slide.get("path"), tiling.get("tile_size_level0")
    if not slide_path:
        return f"{store}: the store records no slide file (source: {slide.get('source', 'unknown')})"
    if not Path(slide_path).is_file():
        return f"{store}: slide file {slide_path} not found"
    if not tile_size:
        return f"{store}: no tiling.tile_size_level0 in the store's attrs"
    from ..slide import Slide

    tile_size = int(round(float(tile_size)))  # level-0 size may be fractional (target mpp / slide mpp)
    with Slide(slide_path) as wsi:
        thumb, scale = wsi.thumbnail(config.thumbnail_size)
        draw_heatmap(
            thumb,
            scale,
            coords,
            tile_size,
            scores,
            out_dir / "heatmaps" / f"{sid}.png",
            scaling=config.scaling,
            title=title,
        )
        if config.top_k > 0:
            from ..embedding import features_view

            view = features_view(store, encoder)  # the pixels the encoder saw
            save_top_tiles(wsi, coords, tiling, scores, out_dir / "top_tiles" / sid, k=config.top_k, view=view)
    return None


def predict_store(
    store: Path, model: torch.nn.Module, ckpt: dict[str, Any], *, device: torch.device | str = "cpu"
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Predict one store: ``(row, attention (N,), probabilities (C,))`` where ``row`` holds the predicted class,
    ``prob_<class>`` columns and ``n_tiles``; the bag is normalised as in training."""
    classes = list(ckpt["classes"])
    bag = torch.from_numpy(np.asarray(read_features(store, ckpt["encoder"]), dtype=np.float32)).to(device)  # (N, D)
    norm = ckpt.get("feature_norm")
    if norm:
        bag = (bag - norm["mean"].to(device)) / norm["std"].to(device)  # (N, D)
    with torch.inference_mode():
        out = model(bag)
        probs = torch.softmax(out.logits.float(), dim=-1)[0].cpu().numpy()  # (C,)
        attention = out.attention()[0].cpu().numpy()  # (N,)
    row = {
        "predicted_class": classes[int(probs.argmax())],
        **{f"prob_{c}": float(p) for c, p in zip(classes, probs, strict=True)},
        "n_tiles": len(attention),
    }
    return row, attention, probs


def _remove_stale_temporaries(out_dir: Path, item: PredictItem, scores_name: str) -> None:
    """Temporaries a killed run left for this slide (``.<name>.tmp-<host>-<pid>``); we hold its lock."""
    finals = [
        slide_result_path(out_dir, item.slide_id),
        out_dir / "heatmaps" / f"{item.slide_id}.png",
        out_dir / "top_tiles" / item.slide_id,
        item.store / SCORES / scores_name,
    ]
    for final in finals:
        remove_stale_temporaries(final)


def _check_some_store_fits(
    items: Sequence[PredictItem], ckpt: dict[str, Any], checkpoint: Path, is_done: Callable[[PredictItem], bool]
) -> None:
    """Raise the first store's ``StoreMismatchError`` when NO store input fits the checkpoint (wrong checkpoint or
    encoder for these stores: a setup error, said once, before anything is written). When some fit, the others are
    failed slides of the batch. Stops at the first store that fits, so it usually reads one store's metadata."""
    first: StoreMismatchError | None = None
    for item in items:
        if item.entry is not None:
            return  # raw slides get stores made with the checkpoint's own settings
        if is_done(item):
            return
        try:
            check_store(item.store, ckpt, checkpoint)
            return
        except StoreMismatchError as err:
            first = first or err
    if first is not None:
        raise first


def predict_slides(
    checkpoint: str | Path,
    inputs: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    config: PredictConfig | None = None,
    *,
    shard: Shard | None = None,
    overwrite: bool = False,
    on_record: Callable[[SlideRecord], None] | None = None,
) -> PredictResult:
    """Predict every slide of ``inputs`` with a trained checkpoint; resumable and shardable.

    Each slide is skipped when done (``<out>/slides/<slide_id>.json`` from the same checkpoint and embeddings),
    locked, and recorded ok/failed/skipped in ``<out>/manifests/predict[.shard-i-of-n].csv``; a failed slide (e.g. a
    store without the checkpoint's embeddings) does not stop the others. ``predictions.csv`` is rebuilt at the end
    from the results of every input slide, so after the last shard it lists them all.

    Parameters
    ----------
    checkpoint
        A ``checkpoint_best.pt`` (or ``_last``) written by ``train``.
    inputs
        Folders of stores, single stores, CSVs ``slide_id,store``, or raw slide files and folders of slides (tiled
        and embedded into ``<out_dir>/stores`` with the settings the checkpoint recorded, one slide at a time).
    out_dir
        Receives ``predictions.csv`` (slide_id, predicted_class, prob_<class>..., n_tiles), ``slides/<id>.json``,
        ``heatmaps/<id>.png``, ``top_tiles/<id>/``, ``manifests/`` and ``.locks/``.
    config
        ``PredictConfig``.
    shard
        Only this shard of the slides (``resolve_shard("0/4")`` or the Slurm array variables).
    overwrite
        Redo finished slides (raw slides are tiled and embedded again too).
    on_record
        Called with each slide's record as soon as it is known (progress bars).

    Raises
    ------
    CheckpointError
        The checkpoint is unreadable (or, for raw slides, records no tile/embed settings).
    StoreMismatchError
        EVERY store input lacks the checkpoint's encoder or has another input dimension (checked before any
        prediction). When only some do, those slides are failed records and the rest are predicted.

    Examples
    --------
    >>> stores, labels = convert_mil_csv("musk1.csv", "mil/musk1")  # doctest: +SKIP
    >>> run = train(stores, labels, "runs/", TrainConfig(model="abmil"))  # doctest: +SKIP
    >>> result = predict_slides(run.run_dir / "fold_0" / "checkpoint_best.pt", [stores], "pred/")  # doctest: +SKIP
    >>> result.summary(), result.csv  # doctest: +SKIP
    """
    config = config or PredictConfig()
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    ckpt = load_checkpoint(checkpoint)
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    items = collect_items(inputs, out_dir / "stores")
    if not items:
        raise ConfigError(f"no stores or slides found in {', '.join(map(str, inputs))}")
    identity = checkpoint_identity(checkpoint)
    encoder, classes = ckpt["encoder"], list(ckpt["classes"])
    name = config.scores_name or scores_name_for(checkpoint, ckpt)
    scores_name = name if config.write_scores else None
    preparer = None
    if any(item.entry is not None for item in items):
        preparer = SlidePreparer(ckpt, checkpoint, config.device, overwrite=overwrite)

    def is_done(item: PredictItem) -> bool:
        result = read_slide_result(out_dir, item.slide_id)
        return is_finished(result, item.store, identity, encoder, scores_name)

    _check_some_store_fits(items, ckpt, checkpoint, (lambda item: False) if overwrite else is_done)
    device = resolve_device(config.device)
    model = model_from_checkpoint(ckpt, device)
    no_heatmap: list[str] = []

    def process(item: PredictItem, lock: SlideLock) -> int:
        _remove_stale_temporaries(out_dir, item, name)
        if item.entry is not None:
            assert preparer is not None
            preparer.prepare(item, lock)
        check_store(item.store, ckpt, checkpoint)
        row, attention, probs = predict_store(item.store, model, ckpt, device=device)
        if config.write_scores:
            write_scores(
                item.store,
                name,
                attention,
                attrs={
                    "checkpoint": identity["path"],
                    "checkpoint_sha256": identity["sha256"],
                    "model": ckpt["model_name"],
                    "encoder": encoder,
                    "kind": "attention",
                    "classes": classes,
                    "probabilities": probs.tolist(),
                },
            )
        heatmap = None
        if config.heatmaps:
            title = f"{item.slide_id}: {row['predicted_class']} (p={probs.max():.2f})"
            coords = read_coords(item.store)
            heatmap = _heatmap(item.store, item.slide_id, coords, attention, out_dir, config, title, encoder)
            if heatmap:
                no_heatmap.append(heatmap)
        # Written last: its presence means the scores, heatmap and top tiles above are complete.
        write_slide_result(
            out_dir,
            item.slide_id,
            {
                "slide_id": item.slide_id,
                "store": str(item.store.resolve()),
                "checkpoint": identity,
                "model": ckpt["model_name"],
                "encoder": encoder,
                "features": features_stamp(item.store, encoder),
                "scores_name": scores_name,
                "classes": classes,
                "predicted_class": row["predicted_class"],
                "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
                "n_tiles": int(row["n_tiles"]),
                "heatmap_skipped": heatmap,
            },
        )
        return int(row["n_tiles"])

    batch = run_slide_batch(
        items,
        process,
        stage=STAGE,
        out_dir=out_dir,
        is_done=is_done,
        overwrite=overwrite,
        shard=shard,
        on_record=on_record,
    )
    if no_heatmap:
        message = (
            f"heatmaps skipped for {len(no_heatmap)} slide(s) without a slide file, e.g. {no_heatmap[0]}; "
            "their predictions and scores are kept"
        )
        warnings.warn(message, stacklevel=2)
        log.warning(message)
    out_csv, rows = write_predictions_csv(out_dir, [item.slide_id for item in items], identity, classes)
    log.info("predict: %s; %d slide(s) in %s", batch.summary(), len(rows), out_csv)
    return PredictResult(out_csv, rows, batch, no_heatmap)
