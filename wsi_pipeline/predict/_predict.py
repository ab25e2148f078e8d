"""``predict``: a training run (every fold) or one checkpoint applied to slide stores (or raw slides): class
probabilities, per-tile attention written back into the stores, heatmaps, top-k tiles and QuPath tile objects.

A run folder gives its labelled slides out-of-fold predictions (the cohort result, with ``metrics.json``) and every
other slide the mean of its folds (``_models``). Per slide, like the other per-slide stages
(``batch.run_slide_batch``, stage ``predict``): skipped when done (its ``<out>/slides/<slide_id>.json`` names the
same model and embeddings), locked (``<out>/.locks/predict/``), recorded ok/failed/skipped in
``<out>/manifests/predict[.shard-i-of-n].csv``, and the batch goes on after a failure. ``predictions.csv`` is then
rebuilt from every input slide's result (see ``_results``).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..batch import BatchResult, Done, Shard, SlideRecord, run_slide_batch
from ..device import resolve_device
from ..errors import ConfigError, StoreMismatchError, WsiPipelineError
from ..files import remove_stale_temporaries
from ..locks import SlideLock
from ..mil_datasets import MIL_ENCODER
from ..provenance import short, weights_identity, weights_label
from ..store import (
    FEATURES,
    SCORES,
    TISSUE_FRACTION,
    features_attrs,
    is_complete,
    list_encoders,
    open_array,
    open_store,
    read_attrs,
    read_coords,
    read_features,
    read_instance_labels,
    read_instance_labels_attrs,
    slide_id_from_store,
    write_scores,
)
from ..training import apply_temperature, bag_localisation, lesion_regions, spread
from ._config import PredictConfig
from ._geojson import write_attention_geojson
from ._heatmap import draw_heatmap, save_top_tiles
from ._inputs import PredictItem, SlidePreparer, collect_items
from ._models import FoldModel, ModelSet, SlidePlan, forward, load_models
from ._results import (
    features_stamp,
    is_finished,
    read_slide_result,
    slide_result_path,
    write_predictions_csv,
    write_slide_result,
)

__all__ = [
    "PredictConfig",
    "PredictResult",
    "predict_store",
    "predict_slide",
    "SlideAnswer",
    "predict_slides",
    "check_store",
    "model_mismatches",
    "scores_name_for",
]

log = logging.getLogger(__name__)

STAGE = "predict"


@dataclass
class PredictResult:
    """``csv``: the merged ``predictions.csv``; ``rows``: its rows (every input slide predicted with this model so
    far, by this run or an earlier one or another shard); ``batch``: this run's per-slide records."""

    csv: Path
    rows: list[dict[str, Any]]
    batch: BatchResult
    heatmap_skipped: list[str] = field(default_factory=list)
    metrics: dict[str, Any] | None = None  # out-of-fold cohort metrics of the run's labelled slides (metrics.json)
    report: Path | None = None  # <out>/report/index.html when written

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
    """Raise ``StoreMismatchError`` when ``store`` is not a finished store, lacks the checkpoint's encoder, or holds
    tiles or embeddings other than the ones the checkpoint was trained on (``model_mismatches``)."""
    if not is_complete(store):
        raise StoreMismatchError(f"{store}: not a finished slide store; run `wsi-pipeline tile` to make it")
    encoder, in_dim = ckpt["encoder"], int(ckpt["in_dim"])
    found = list_encoders(store)
    if encoder not in found and encoder == MIL_ENCODER:
        # Trained on converted MIL benchmark bags: no command makes such features for slide stores.
        raise StoreMismatchError(
            f"{store}: {checkpoint} was trained on '{encoder}' features that `wsi-pipeline embed` does not make "
            "(bags converted with `convert-mil`); predict bag stores made the same way, or use a model trained on "
            "slide embeddings"
        )
    if encoder not in found:
        raise StoreMismatchError(
            f"{store}: no '{encoder}' embeddings (found: {', '.join(found) or 'none'}) but {checkpoint} was trained "
            f"on them; run `wsi-pipeline embed {store.parent} --encoder {encoder}`"
        )
    dim = open_array(store, FEATURES, encoder).shape[1]
    if dim != in_dim:
        raise StoreMismatchError(
            f"{store}: '{encoder}' embeddings have dimension {dim} but {checkpoint} expects {in_dim}; "
            "re-embed with the checkpoint's encoder settings or use a matching checkpoint"
        )
    mismatches = model_mismatches(store, ckpt)
    if mismatches:
        raise StoreMismatchError(
            f"{store}: not what {checkpoint} was trained on ({'; '.join(mismatches)}); tile and embed it as the "
            "training stores were (or give predict the slide file: it is tiled and embedded with the checkpoint's "
            "settings)"
        )


_EMBEDDING_KEYS = ("timm_name", "pooling", "input_size", "resize_size", "interpolation", "mean", "std")


def _weights_of(attrs: dict[str, Any]) -> dict[str, Any]:
    seed = ((attrs.get("signature") or {}).get("weights") or {}).get("seed", (attrs.get("config") or {}).get("seed"))
    return weights_identity(attrs.get("weights"), seed)


def model_mismatches(store: Path, ckpt: dict[str, Any]) -> list[str]:
    """How the store's tiles and embeddings differ from those the checkpoint was trained on, as ``what: here ->
    in training`` phrases: tile resolution and size (``target_mpp: 0.5 here, 1 in training``), the encoder's
    weights (by sha256: ``weights: random here, efficientnet-lite0-57934424.pth in training``) and preprocessing.
    Settings that leave the tiles' content alone (mask, stride, precision, device) are not compared."""
    source = ckpt.get("source") or {}
    trained_tiling, trained_features = source.get("tiling") or {}, source.get("embedding") or {}
    tiling = read_attrs(store).get("tiling") or {}
    features = features_attrs(store, ckpt["encoder"]) or {}
    lines = []
    for key in ("target_mpp", "tile_size"):
        here, there = tiling.get(key), trained_tiling.get(key)
        if (here is None) != (there is None) or (
            here is not None and not math.isclose(float(here), float(there), rel_tol=1e-6)
        ):
            lines.append(f"{key}: {short(here)} here, {short(there)} in training")
    if _weights_of(features) != _weights_of(trained_features):
        here, there = weights_label(features.get("weights")), weights_label(trained_features.get("weights"))
        lines.append(f"weights: {here} here, {there} in training")
    for key in _EMBEDDING_KEYS:
        if key in features and key in trained_features and features[key] != trained_features[key]:
            lines.append(f"{key}: {short(features[key])} here, {short(trained_features[key])} in training")
    return lines


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
    from ..tiling import check_store_slide

    try:
        check_store_slide(store)  # never draw a store's attention over another slide's pixels
    except StoreMismatchError as err:
        return str(err)

    tile_size = int(round(float(tile_size)))  # level-0 size may be fractional (target mpp / slide mpp)
    outlines = annotation_outlines(store)
    with Slide(slide_path) as wsi:
        thumb, scale = wsi.thumbnail(config.thumbnail_size)
    # Drawn with the slide closed: its tile cache (OpenSlide's, 32 MiB) is not held while matplotlib draws.
    draw_heatmap(
        thumb,
        scale,
        coords,
        tile_size,
        scores,
        out_dir / "heatmaps" / f"{sid}.png",
        scaling=config.scaling,
        title=title,
        outlines=outlines,
    )
    del thumb
    if config.top_k > 0:
        from ..embedding import features_view

        view = features_view(store, encoder)  # the pixels the encoder saw
        with Slide(slide_path) as wsi:
            save_top_tiles(wsi, coords, tiling, scores, out_dir / "top_tiles" / sid, k=config.top_k, view=view)
    return None


def annotation_outlines(store: Path) -> list[np.ndarray]:
    """The outlines of the positive annotations the store's ``instance_labels`` were made from (``annotate``), when
    that file is still there and unchanged (its sha256 as recorded); else none, so no stale outline is drawn."""
    from ..annotations import read_annotations
    from ..provenance import file_sha256

    attrs = read_instance_labels_attrs(store) or {}
    recorded = attrs.get("annotations") or {}
    path = Path(recorded.get("path") or "")
    if not recorded.get("path") or not path.is_file() or file_sha256(path) != recorded.get("sha256"):
        return []
    try:
        polygons = read_annotations(path)
    except WsiPipelineError:
        return []
    settings = attrs.get("annotate") or {}  # the classes (and their aliases) that made positive labels
    classes = {str(c).lower() for c in settings.get("classes") or []}
    classes |= {str(name).lower() for name in settings.get("aliases") or {}}
    return [p.rings[0] for p in polygons if p.name.lower() in classes]


def predict_store(
    store: Path, model: torch.nn.Module, ckpt: dict[str, Any], *, device: torch.device | str = "cpu"
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Predict one store with one model: ``(row, attention (N,), probabilities (C,))`` where ``row`` holds the
    predicted class, ``prob_<class>`` and ``cal_prob_<class>`` (with the checkpoint's temperature) columns and
    ``n_tiles``; the bag is normalised as in training."""
    member = FoldModel(ckpt.get("fold"), Path(store), ckpt, model=model)
    probs, attention, log_probs, _ = forward(member, read_features(store, ckpt["encoder"]), device)
    classes = list(ckpt["classes"])
    calibrated = apply_temperature(log_probs, member.temperature)
    row = _row(classes, probs, len(attention))
    row.update({f"cal_prob_{c}": float(q) for c, q in zip(classes, calibrated, strict=True)})
    return row, attention, probs


@dataclass
class SlideAnswer:
    """What a model (one checkpoint, or the folds of a run) says about one slide (``predict_slide``)."""

    slide_id: str
    plan: SlidePlan  # which fold models answered and what that means (out-of-fold, new, in-training)
    attention: np.ndarray  # (N,) per tile, the mean over those folds (sums to 1)
    row: dict[str, Any]  # predicted_class (a class, a risk group, or the first target's answer) and n_tiles
    probabilities: dict[str, float]  # classification: per class; survival: risk; several targets: numeric answers
    fields: dict[str, Any]  # the task's answer as slides/<slide_id>.json records it
    scores_attrs: dict[str, Any]  # what the attention array in the store records of the answer
    headline: str  # a few words for a heatmap title ("p=0.93; ", "+0.41; " or "")
    localisation: dict[str, Any] | None  # attention vs the store's instance labels, when it has them


def predict_slide(
    models: ModelSet, store: str | Path, *, slide_id: str | None = None, device: torch.device | str = "cpu"
) -> SlideAnswer:
    """One store in, one answer out: the slide's class probabilities (calibrated too), survival risk or every
    target's prediction, with the per-tile attention, from the fold models that may answer for it (``models.plan``).

    Writes nothing; ``predict_slides`` calls it for every slide and writes what it returns (scores, heatmaps,
    GeoJSON, ``slides/<slide_id>.json``). A raw slide file goes through ``predict_slides``, which tiles and embeds it
    first with the checkpoint's settings.

    Examples
    --------
    >>> models = load_models("runs/asmil_uni_cv5_seed0")  # doctest: +SKIP
    >>> models.load("cpu")  # doctest: +SKIP
    >>> answer = predict_slide(models, "stores/S01.zarr")  # doctest: +SKIP
    >>> answer.row["predicted_class"], answer.attention.argmax()  # doctest: +SKIP
    """
    store = Path(store)
    slide_id = slide_id or slide_id_from_store(store)
    ckpt, classes = models.ckpt, models.classes
    plan = models.plan(slide_id)
    features = read_features(store, models.encoder)
    outputs = [forward(member, features, device) for member in plan.members]
    probs = np.mean([o.probs for o in outputs], axis=0)  # (C,) mean over the folds used
    attention = np.mean([o.attention for o in outputs], axis=0)  # (N,) each fold's sums to 1, so does the mean
    if models.task == "multi":  # each target's probabilities or value, the mean over the folds used
        names = [spec["name"] for spec in ckpt["targets"]]
        per_fold = [m.target_predictions(o.outputs) for m, o in zip(plan.members, outputs, strict=True)]
        target_results: dict[str, dict[str, Any]] = {}
        for t, spec in enumerate(ckpt["targets"]):
            mean = np.mean([fold[t] for fold in per_fold], axis=0)
            if spec["kind"] == "categorical":
                target_results[spec["name"]] = {
                    "predicted": spec["classes"][int(np.argmax(mean))],
                    "probabilities": {c: float(q) for c, q in zip(spec["classes"], mean, strict=True)},
                }
            else:
                target_results[spec["name"]] = {"predicted": float(mean)}
        first = target_results[names[0]]["predicted"]
        row = {"predicted_class": f"{names[0]} {first:.3g}" if isinstance(first, float) else f"{names[0]} {first}"}
        row["n_tiles"] = len(attention)
        probabilities = {
            f"{name}_{key}": value
            for name, result in target_results.items()
            for key, value in ({"predicted": result["predicted"]} | result.get("probabilities", {})).items()
            if not isinstance(value, str)
        }
        fields = {
            "task": "multi",
            "targets": target_results,
            "truth": models.target_values.get(slide_id),
            "target_names": names,
        }
        scores_attrs, headline = {"targets": probabilities}, ""
    elif models.task == "survival":  # each fold's risk relative to its median training risk, then their mean
        risks = [m.risk(o.outputs) for m, o in zip(plan.members, outputs, strict=True)]
        risk = float(np.mean(risks))
        group = "high" if risk > 0 else "low"
        row = {"predicted_class": f"{group} risk", "n_tiles": len(attention)}
        probabilities = {"risk": risk}
        fields = {
            "task": "survival",
            "risk": risk,
            "risk_group": group,
            "fold_risks": {str(k): r for k, r in zip(plan.folds, risks, strict=False)},
            "spread": float(np.std(risks)) if len(risks) > 1 else None,
            "follow_up": list(models.follow_up[slide_id]) if slide_id in models.follow_up else None,
        }
        scores_attrs, headline = {"risk": risk}, f"{risk:+.2f}; "
    else:
        # Each fold's probabilities with its own temperature, then their mean; their spread is the uncertainty.
        calibrated_each = [
            apply_temperature(o.log_probs, m.temperature) for m, o in zip(plan.members, outputs, strict=True)
        ]
        calibrated = np.mean(calibrated_each, axis=0)  # (C,)
        row = _row(classes, probs, len(attention))
        probabilities = {c: float(p) for c, p in zip(classes, probs, strict=True)}
        fields = {
            "probabilities": probabilities,
            "fold_probabilities": {
                str(k): [float(v) for v in o.probs] for k, o in zip(plan.folds, outputs, strict=False)
            },
            "calibrated_probabilities": {c: float(q) for c, q in zip(classes, calibrated, strict=True)},
            "temperatures": [m.temperature for m in plan.members],
            "spread": spread(calibrated_each, int(probs.argmax())),
        }
        scores_attrs, headline = {"probabilities": probs.tolist()}, f"p={probs.max():.2f}; "
    localisation = None
    instance_labels = read_instance_labels(store)
    if instance_labels is not None:
        on_slide = bool((read_attrs(store).get("slide") or {}).get("path"))  # bags of features have no grid
        regions = lesion_regions(read_coords(store), instance_labels) if on_slide else None
        localisation = bag_localisation(attention, instance_labels, regions)
    return SlideAnswer(slide_id, plan, attention, row, probabilities, fields, scores_attrs, headline, localisation)


def _row(classes: Sequence[str], probs: np.ndarray, n_tiles: int) -> dict[str, Any]:
    return {
        "predicted_class": classes[int(probs.argmax())],
        **{f"prob_{c}": float(p) for c, p in zip(classes, probs, strict=True)},
        "n_tiles": n_tiles,
    }


def _remove_stale_temporaries(out_dir: Path, item: PredictItem, scores_name: str) -> None:
    """Temporaries a killed run left for this slide (``.<name>.tmp-<host>-<pid>``); we hold its lock."""
    finals = [
        slide_result_path(out_dir, item.slide_id),
        out_dir / "heatmaps" / f"{item.slide_id}.png",
        out_dir / "top_tiles" / item.slide_id,
        out_dir / "geojson" / f"{item.slide_id}.geojson",
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


def _quietly(check: Callable[[PredictItem], bool], item: PredictItem) -> bool:
    try:
        return check(item)
    except Exception:  # noqa: BLE001 - an unreadable result is not a finished one
        return False


def _geojson(store: Path, attention: np.ndarray, probabilities: dict[str, float], path: Path) -> str | None:
    """Write the slide's tiles as QuPath detections; return why not when the store has no tile geometry."""
    tile_size = (read_attrs(store).get("tiling") or {}).get("tile_size_level0")
    if not tile_size:
        return f"{store}: no tiling.tile_size_level0 in the store's attrs"
    group = open_store(store)
    tissue = np.asarray(group[TISSUE_FRACTION][...]) if TISSUE_FRACTION in group else None
    coords = read_coords(store)
    write_attention_geojson(path, coords, float(tile_size), attention, probabilities, tissue_fraction=tissue)
    return None


def _describe(models: ModelSet, source: str, folds: Sequence[int]) -> str:
    """How a slide was predicted, for titles: ``out-of-fold: fold 2``, ``mean of 5 folds``..."""
    if not models.whole_run:
        return f"fold {folds[0]}" if folds else "one checkpoint"
    if source == "out-of-fold":
        return f"out-of-fold: fold {', '.join(map(str, folds))}"
    return f"mean of {len(folds)} folds" + (" (all trained on it)" if source == "in-training" else "")


def predict_slides(
    model: str | Path,
    inputs: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    config: PredictConfig | None = None,
    *,
    fold: int | None = None,
    shard: Shard | None = None,
    overwrite: bool = False,
    on_record: Callable[[SlideRecord], None] | None = None,
) -> PredictResult:
    """Predict every slide of ``inputs`` with a training run (every fold) or one checkpoint; resumable, shardable.

    With a run folder, each slide the run was trained on (it has a label there) is predicted by the fold model(s)
    that never saw it (``source`` out-of-fold; their cohort metrics go to ``<out>/metrics.json``) and every other
    slide by the mean of the folds' probabilities, with attention averaged over the same folds; ``fold`` picks one.
    Each slide is skipped when done (``<out>/slides/<slide_id>.json`` from the same model and embeddings),
    locked, and recorded ok/failed/skipped in ``<out>/manifests/predict[.shard-i-of-n].csv``; a failed slide (e.g.
    a store without the model's embeddings) does not stop the others. ``predictions.csv`` is rebuilt at the end
    from the results of every input slide, so after the last shard it lists them all.

    Parameters
    ----------
    model
        A training run folder (``runs/<model>_<encoder>_<split>_seed<seed>``, finished) or one
        ``checkpoint_best.pt`` (or ``_last``) written by ``train``.
    inputs
        Folders of stores, single stores, CSVs ``slide_id,store``, or raw slide files and folders of slides (tiled
        and embedded into ``<out_dir>/stores`` with the settings the checkpoint recorded, one slide at a time).
    out_dir
        Receives ``predictions.csv`` (slide_id, predicted_class, prob_<class>..., n_tiles, label, source, folds),
        ``metrics.json``, ``slides/<id>.json``, ``heatmaps/<id>.png``, ``top_tiles/<id>/``, ``geojson/<id>.geojson``,
        ``report/index.html`` (``config.report``; see ``wsi_pipeline.report.write_report``),
        ``manifests/`` and ``.locks/``.
    config
        ``PredictConfig``.
    fold
        With a run folder: only this fold's model.
    shard
        Only this shard of the slides (``resolve_shard("0/4")`` or the Slurm array variables).
    overwrite
        Redo finished slides (raw slides are tiled and embedded again too).
    on_record
        Called with each slide's record as soon as it is known (progress bars).

    Raises
    ------
    CheckpointError
        The checkpoint is unreadable, the run's training has not finished, the fold does not exist (or, for raw
        slides, the checkpoint records no tile/embed settings).
    StoreMismatchError
        EVERY store input lacks the model's encoder, has another input dimension, or holds tiles or embeddings
        other than the ones the model was trained on (tile resolution and size, the encoder weights' sha256 and
        preprocessing: ``model_mismatches``), checked before any prediction. When only some do, those slides are
        failed records (with what differs) and the rest are predicted.
    WeightsError
        Raw slides are to be embedded and the weights (``config.weights``, else where the checkpoint's features
        record them) are missing or have another sha256 than those features were made with.

    Examples
    --------
    >>> stores, labels = convert_mil_csv("musk1.csv", "mil/musk1")  # doctest: +SKIP
    >>> run = train(stores, labels, "runs/", TrainConfig(model="abmil"))  # doctest: +SKIP
    >>> result = predict_slides(run.run_dir, [stores], "pred/")  # doctest: +SKIP
    >>> result.summary(), result.metrics["auc"]  # doctest: +SKIP
    """
    config = config or PredictConfig()
    out_dir = Path(out_dir)
    models = load_models(model, fold=fold)
    ckpt, source_path = models.ckpt, models.source
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    items = collect_items(inputs, out_dir / "stores", slide_mpp=config.slide_mpp, mpp_csv=config.mpp_csv)
    if not items:
        raise ConfigError(f"no stores or slides found in {', '.join(map(str, inputs))}")
    identity = models.identity()
    encoder, classes = models.encoder, models.classes
    name = config.scores_name or models.scores_name()
    scores_name = name if config.write_scores else None
    preparer = None
    if any(item.entry is not None for item in items):
        preparer = SlidePreparer(
            ckpt, models.members[0].path, config.device, overwrite=overwrite, weights=config.weights
        )

    def is_done(item: PredictItem) -> bool:
        result = read_slide_result(out_dir, item.slide_id)
        if not is_finished(result, item.store, identity, encoder, scores_name):
            return False
        # A slide file: its store must still be of the file now at that path, at the resolution given now.
        return item.entry is None or (preparer is not None and preparer.store_is_current(item))

    _check_some_store_fits(items, ckpt, source_path, (lambda item: False) if overwrite else is_done)
    if preparer is not None and any(item.entry is not None and (overwrite or not is_done(item)) for item in items):
        preparer.check_weights()  # the wrong weights file fails the run here, before any slide is touched
    device = resolve_device(config.device)
    models.load(device)
    survival = models.task == "survival"
    several = models.task == "multi"
    no_heatmap: list[str] = []

    def process(item: PredictItem, lock: SlideLock) -> Done:
        try:
            return predict_one(item, lock)
        except Exception:
            # The slide failed: a result left from before describes an input that changed (else it would have
            # been skipped), so it must not stay in predictions.csv; under --overwrite a still-valid one stays.
            if not (overwrite and _quietly(is_done, item)):
                slide_result_path(out_dir, item.slide_id).unlink(missing_ok=True)
            raise

    def predict_one(item: PredictItem, lock: SlideLock) -> Done:
        _remove_stale_temporaries(out_dir, item, name)
        note = ""
        if item.entry is not None:
            assert preparer is not None
            note = preparer.prepare(item, lock)
        check_store(item.store, ckpt, source_path)
        answer = predict_slide(models, item.store, slide_id=item.slide_id, device=device)
        plan, attention, row, probabilities = answer.plan, answer.attention, answer.row, answer.probabilities
        how = _describe(models, plan.source, plan.folds)
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
                    "folds": plan.folds,
                    "source": plan.source,
                    "classes": classes,
                    **answer.scores_attrs,
                },
            )
        heatmap = None
        if config.heatmaps:
            title = f"{item.slide_id}: {row['predicted_class']} ({answer.headline}{how})"
            coords = read_coords(item.store)
            heatmap = _heatmap(item.store, item.slide_id, coords, attention, out_dir, config, title, encoder)
            if heatmap:
                no_heatmap.append(heatmap)
        no_geojson = None
        if config.geojson:
            path = out_dir / "geojson" / f"{item.slide_id}.geojson"
            no_geojson = _geojson(item.store, attention, probabilities, path)
        # Written last: its presence means the scores, heatmap, top tiles and GeoJSON above are complete.
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
                **answer.fields,  # the task's own answer: probabilities, a risk, or each target's prediction
                "label": plan.label,
                "source": plan.source,
                "folds": plan.folds,
                "n_tiles": int(row["n_tiles"]),
                "localisation": answer.localisation,  # attention vs the store's instance_labels, when it has them
                "heatmap_skipped": heatmap,
                "geojson_skipped": no_geojson,
            },
        )
        return Done(int(row["n_tiles"]), note)

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
        warnings.warn(message, stacklevel=2)  # the CLI shows it as one line (no source line, not twice)
    out_csv, rows, metrics = write_predictions_csv(
        out_dir,
        [item.slide_id for item in items],
        identity,
        classes,
        task=models.task,
        targets=ckpt.get("targets") or (),
    )
    log.info("predict: %s; %d slide(s) in %s", batch.summary(), len(rows), out_csv)
    report = None
    if config.report and (survival or several):
        log.info("report: not written for a %s model (the report shows classification results for now)", models.task)
    elif config.report:
        report = _report(out_dir, [item.slide_id for item in items], identity, config)
    return PredictResult(out_csv, rows, batch, no_heatmap, metrics, report)


def _report(out_dir: Path, slide_ids: list[str], identity: dict[str, Any], config: PredictConfig) -> Path | None:
    """Write ``<out>/report/``; a report that cannot be written is a warning: the predictions stand."""
    from ..errors import WsiPipelineError
    from ..report import ReportConfig, write_report

    settings = ReportConfig(max_size=config.report_max_size, top_k=config.top_k)
    try:
        written = write_report(out_dir, slide_ids, settings, checkpoint_sha256=identity["sha256"])
    except WsiPipelineError as err:
        warnings.warn(f"report not written: {err}", stacklevel=3)
        return None
    if written is None:
        return None  # another shard holds the report's lock and takes these slides in
    log.info("report: %s", written.summary())
    return written.index
