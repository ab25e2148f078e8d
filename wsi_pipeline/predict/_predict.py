"""``predict``: a trained checkpoint applied to slide stores (or raw slides): class probabilities, per-tile
attention written back into the stores, heatmaps and top-k tiles."""

from __future__ import annotations

import csv
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..batch import atomic_write_text
from ..errors import CheckpointError, ConfigError, StoreMismatchError, WsiPipelineError
from ..store import (
    STORE_SUFFIX,
    is_complete,
    list_encoders,
    read_attrs,
    read_coords,
    read_features,
    store_path,
    write_scores,
)
from ..training._checkpoint import load_checkpoint, model_from_checkpoint
from ..training._splits import resolve_stores
from ..training._train import resolve_device
from ._heatmap import draw_heatmap, save_top_tiles

__all__ = ["PredictConfig", "PredictResult", "predict_store", "predict_slides", "check_store", "scores_name_for"]

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".dcm", ".vms", ".vmu", ".bif", ".svslide"}


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
    csv: Path
    rows: list[dict[str, Any]]
    failed: list[tuple[str, str]] = field(default_factory=list)


def scores_name_for(checkpoint: Path, ckpt: dict[str, Any]) -> str:
    """``<run folder>_fold<k>`` for a checkpoint inside a run, else ``<model>_<checkpoint stem>``."""
    checkpoint = Path(checkpoint).resolve()
    if checkpoint.parent.name.startswith("fold_"):
        return f"{checkpoint.parent.parent.name}_fold{checkpoint.parent.name.removeprefix('fold_')}"
    return f"{ckpt['model_name']}_{checkpoint.stem}"


def check_store(store: Path, ckpt: dict[str, Any], checkpoint: Path) -> None:
    """Raise ``StoreMismatchError`` when ``store`` lacks the checkpoint's encoder or has another dimension."""
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


def _collect(inputs: Sequence[str | Path]) -> tuple[dict[str, Path], list[Path]]:
    """Split inputs into stores (folders of stores, single stores, CSVs ``slide_id,store``) and raw slide files."""
    stores: dict[str, Path] = {}
    slides: list[Path] = []
    for item in map(Path, inputs):
        if item.name.endswith(STORE_SUFFIX) and item.is_dir():
            stores[item.name[: -len(STORE_SUFFIX)]] = item
        elif item.is_dir() and any(item.glob(f"*{STORE_SUFFIX}")):
            stores.update(resolve_stores(item))
        elif item.is_dir():
            slides.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES))
        elif item.suffix.lower() == ".csv":
            stores.update(resolve_stores(item))
        elif item.suffix.lower() in SLIDE_SUFFIXES:
            slides.append(item)
        else:
            raise ConfigError(f"{item}: not a store, a folder of stores or slides, a stores CSV or a slide file")
    return stores, slides


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _stores_from_slides(
    slides: list[Path], out_dir: Path, ckpt: dict[str, Any], checkpoint: Path, device: str
) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """Tile and embed raw slides into ``<out_dir>/stores`` with the tiling and embedding settings the checkpoint
    recorded from its training stores; returns the stores made and the slides that failed (id, reason)."""
    from ..config import load_config
    from ..embedding import EmbedConfig, embed_stores
    from ..tiling import TileConfig, tile_slides

    source = ckpt.get("source") or {}
    tile_settings = source.get("tile_config")
    embed_settings = (source.get("embedding") or {}).get("config")
    if not tile_settings or not embed_settings:
        raise CheckpointError(
            f"{checkpoint}: records no tile/embed settings (its training stores were not made by `tile` and "
            "`embed`, e.g. converted MIL benchmark bags); tile and embed the slides yourself and pass the stores"
        )
    tile_config = load_config(TileConfig, "tile", None, _flatten(tile_settings))
    embed_overrides = {**_flatten(embed_settings), "encoder": ckpt["encoder"]}
    if device != "auto":
        embed_overrides["device"] = device
    embed_config = load_config(EmbedConfig, "embed", None, embed_overrides)
    stores_dir = out_dir / "stores"
    log.info("tiling and embedding %d slide(s) into %s with the checkpoint's settings", len(slides), stores_dir)
    tiled = tile_slides(slides, stores_dir, config=tile_config)
    failed = [(r.slide_id, r.error) for r in tiled.records if r.status == "failed"]
    embedded = embed_stores(stores_dir, config=embed_config)
    failed += [(r.slide_id, r.error) for r in embedded.records if r.status == "failed"]
    bad = {sid for sid, _ in failed}
    stores = {
        r.slide_id: store_path(stores_dir, r.slide_id)
        for r in tiled.records
        if r.status != "failed" and r.slide_id not in bad
    }
    return stores, failed


def _heatmap(
    store: Path, sid: str, coords: np.ndarray, scores: np.ndarray, out_dir: Path, config: PredictConfig, title: str
) -> str | None:
    """Draw the heatmap and top tiles; return why not when the store's slide file is unavailable."""
    attrs = read_attrs(store)
    slide = attrs.get("slide") or {}
    slide_path, tile_size = slide.get("path"), (attrs.get("tiling") or {}).get("tile_size_level0")
    if not slide_path:
        return f"{store}: the store records no slide file (source: {slide.get('source', 'unknown')})"
    if not Path(slide_path).is_file() or not tile_size:
        return f"{store}: slide file {slide_path} not found"
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
            save_top_tiles(wsi, coords, tile_size, scores, out_dir / "top_tiles" / sid, k=config.top_k)
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


def predict_slides(
    checkpoint: str | Path,
    inputs: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    config: PredictConfig | None = None,
    *,
    on_slide: Callable[[str, dict[str, Any]], None] | None = None,
) -> PredictResult:
    """Predict every slide of ``inputs`` with a trained checkpoint.

    Parameters
    ----------
    checkpoint
        A ``checkpoint_best.pt`` (or ``_last``) written by ``train``.
    inputs
        Folders of stores, single stores, CSVs ``slide_id,store`` or raw slide files.
    out_dir
        Receives ``predictions.csv`` (slide_id, predicted_class, prob_<class>...), ``heatmaps/<slide>.png`` and
        ``top_tiles/<slide>/``.
    config
        ``PredictConfig``.
    on_slide
        Called after each slide with ``(slide_id, row)`` (the CLI's progress bar).

    Raises
    ------
    CheckpointError
        The checkpoint is unreadable.
    StoreMismatchError
        A store lacks the checkpoint's encoder or has another input dimension (checked before any prediction).

    Examples
    --------
    >>> stores, labels = convert_mil_csv("musk1.csv", "mil/musk1")  # doctest: +SKIP
    >>> run = train(stores, labels, "runs/", TrainConfig(model="abmil"))  # doctest: +SKIP
    >>> predict_slides(run.run_dir / "fold_0" / "checkpoint_best.pt", [stores], "pred/")  # doctest: +SKIP
    """
    config = config or PredictConfig()
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    ckpt = load_checkpoint(checkpoint)
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    stores, slides = _collect(inputs)
    made_failed: list[tuple[str, str]] = []
    if slides:
        made, made_failed = _stores_from_slides(slides, out_dir, ckpt, checkpoint, config.device)
        stores.update(made)
    if not stores and not made_failed:
        raise ConfigError(f"no stores or slides found in {', '.join(map(str, inputs))}")
    for store in stores.values():
        if not is_complete(store):
            raise StoreMismatchError(f"{store}: not a finished slide store; run `wsi-pipeline tile` to make it")
        check_store(store, ckpt, checkpoint)

    device = resolve_device(config.device)
    model = model_from_checkpoint(ckpt, device)
    classes = list(ckpt["classes"])
    name = config.scores_name or scores_name_for(checkpoint, ckpt)
    rows, failed, no_heatmap = [], list(made_failed), []
    for sid, store in sorted(stores.items()):
        try:
            row, attention, probs = predict_store(store, model, ckpt, device=device)
            row = {"slide_id": sid, **row}
            if config.write_scores:
                write_scores(
                    store,
                    name,
                    attention,
                    attrs={
                        "checkpoint": str(checkpoint.resolve()),
                        "model": ckpt["model_name"],
                        "encoder": ckpt["encoder"],
                        "kind": "attention",
                        "classes": classes,
                        "probabilities": probs.tolist(),
                    },
                )
            if config.heatmaps:
                title = f"{sid}: {row['predicted_class']} (p={probs.max():.2f})"
                reason = _heatmap(store, sid, read_coords(store), attention, out_dir, config, title)
                if reason:
                    no_heatmap.append(reason)
        except WsiPipelineError as err:
            log.error("%s: %s", sid, err)
            failed.append((sid, str(err)))
            continue
        rows.append(row)
        if on_slide is not None:
            on_slide(sid, row)

    if no_heatmap:
        message = (
            f"heatmaps skipped for {len(no_heatmap)} slide(s) without a slide file, e.g. {no_heatmap[0]}; "
            "their predictions and scores are kept"
        )
        warnings.warn(message, stacklevel=2)
        log.warning(message)
    buffer = io.StringIO()
    fields = ["slide_id", "predicted_class"] + [f"prob_{c}" for c in classes] + ["n_tiles"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out_csv = out_dir / "predictions.csv"
    atomic_write_text(out_csv, buffer.getvalue())
    log.info("%d slides predicted (%d failed) -> %s", len(rows), len(failed), out_csv)
    return PredictResult(out_csv, rows, failed)
