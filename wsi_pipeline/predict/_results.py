"""Per-slide prediction results and the merged ``predictions.csv`` built from them.

Each predicted slide gets ``<out>/slides/<slide_id>.json`` (written atomically, after its scores, heatmap and top
tiles), recording the checkpoint it came from (path, size, sha256) and the fingerprint of the embeddings it read.
That file is what "done" means for ``predict``: a slide is skipped when its result names the same checkpoint and
the same embeddings (and its ``scores/<name>`` array is in the store, when scores are written).

``predictions.csv`` is rebuilt from the per-slide results of every input slide by each run, under a lock: shards
write their per-slide files before they take it, so whichever run writes the CSV last has seen every finished slide.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LockedError
from ..files import atomic_write_text
from ..locks import SlideLock
from ..provenance import file_sha256
from ..store import SCORES, features_attrs, has_array, provenance
from ..training import LOCALISATION_KEYS

__all__ = [
    "checkpoint_identity",
    "features_stamp",
    "slide_result_path",
    "read_slide_result",
    "write_slide_result",
    "result_row",
    "cohort_metrics",
    "write_predictions_csv",
]

log = logging.getLogger(__name__)

CSV_LOCK_WAIT_S = 600.0  # rewriting the CSV takes well under a second; a holder this slow is stuck


def checkpoint_identity(checkpoint: Path) -> dict[str, Any]:
    """``{path, size, sha256}`` of a checkpoint file: a copied checkpoint is the same one, a re-trained one is not."""
    path = Path(checkpoint)
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": file_sha256(path)}


def features_stamp(store: Path, encoder: str) -> dict[str, Any] | None:
    """What a prediction read: the ``features/<encoder>`` fingerprint (its tiles, settings and content), which
    changes when the slide is re-tiled or re-embedded otherwise; arrays made before fingerprints were recorded
    give their creation stamp instead."""
    attrs = features_attrs(store, encoder)
    if not attrs:
        return None
    fingerprint = (attrs.get("fingerprint") or {}).get("sha256")
    return {"fingerprint": fingerprint} if fingerprint else attrs.get("wsi_pipeline")


def slide_result_path(out_dir: Path, slide_id: str) -> Path:
    """``<out>/slides/<slide_id>.json``; the file name minus ``.json`` is the slide id."""
    return Path(out_dir) / "slides" / f"{slide_id}.json"


def read_slide_result(out_dir: Path, slide_id: str) -> dict[str, Any] | None:
    """The slide's result, or None when there is none (or it cannot be read: it is then redone)."""
    try:
        return json.loads(slide_result_path(out_dir, slide_id).read_text())
    except (OSError, ValueError):
        return None


def write_slide_result(out_dir: Path, slide_id: str, result: dict[str, Any]) -> Path:
    path = slide_result_path(out_dir, slide_id)
    atomic_write_text(path, json.dumps({**result, "wsi_pipeline": provenance()}, indent=2) + "\n")
    return path


def is_finished(
    result: dict[str, Any] | None, store: Path, identity: dict[str, Any], encoder: str, scores_name: str | None
) -> bool:
    """True when ``result`` came from this checkpoint and these embeddings, and its scores are in the store."""
    if not result or (result.get("checkpoint") or {}).get("sha256") != identity["sha256"]:
        return False
    if result.get("scores_name") != scores_name or result.get("features") != features_stamp(store, encoder):
        return False
    if not ({"calibrated_probabilities", "risk", "targets"} & set(result)):  # made before calibration: redone
        return False
    return scores_name is None or has_array(store, SCORES, scores_name)


def survival_row(result: dict[str, Any]) -> dict[str, Any]:
    """One survival ``predictions.csv`` row: slide_id, risk (relative to the model's median training risk, the mean
    over the folds used), risk_group (high: > 0), n_tiles, time and event (labelled slides), source, folds, spread
    (the folds' standard deviation of the risk), and the localisation columns."""
    time, event = result.get("follow_up") or ("", "")
    spread = result.get("spread")
    return {
        "slide_id": result["slide_id"],
        "risk": float(result["risk"]),
        "risk_group": result["risk_group"],
        "n_tiles": int(result["n_tiles"]),
        "time": time,
        "event": event,
        "source": result.get("source") or "",
        "folds": " ".join(str(k) for k in result.get("folds") or []),
        "spread": "" if spread is None else float(spread),
        **{key: value for key, value in (result.get("localisation") or {}).items() if key in _LOC_COLUMNS},
    }


def multi_row(result: dict[str, Any]) -> dict[str, Any]:
    """One ``predictions.csv`` row of a model of several targets: slide_id; per target its value where the run had
    one (``<target>``, empty otherwise), ``<target>_predicted`` and ``prob_<target>_<class>`` (categorical); n_tiles,
    source, folds, and the localisation columns."""
    truth = result.get("truth") or [None] * len(result["target_names"])
    row: dict[str, Any] = {"slide_id": result["slide_id"]}
    for name, value in zip(result["target_names"], truth, strict=True):
        answer = result["targets"][name]
        row[name] = "" if value is None else value
        row[f"{name}_predicted"] = answer["predicted"]
        row.update({f"prob_{name}_{c}": q for c, q in (answer.get("probabilities") or {}).items()})
    return {
        **row,
        "n_tiles": int(result["n_tiles"]),
        "source": result.get("source") or "",
        "folds": " ".join(str(k) for k in result.get("folds") or []),
        **{key: value for key, value in (result.get("localisation") or {}).items() if key in _LOC_COLUMNS},
    }


def multi_cohort_metrics(rows: Sequence[dict[str, Any]], specs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Per-target metrics of the out-of-fold predictions (each target over the slides that have a value), and
    their averages (accuracy, macro-F1, AUC over categorical targets; R^2, Pearson r, MAE over continuous ones)."""
    from ..training import classification_metrics, regression_metrics

    held_out = [row for row in rows if row["source"] == "out-of-fold"]
    if not held_out:
        return None
    per_target: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, have = spec["name"], [row for row in held_out if row[spec["name"]] != ""]
        if spec["kind"] == "categorical":
            index = {c: i for i, c in enumerate(spec["classes"])}
            y = np.array([index[row[name]] for row in have], dtype=np.int64)
            probs = np.array([[row[f"prob_{name}_{c}"] for c in spec["classes"]] for row in have], dtype=np.float64)
            per_target[name] = classification_metrics(y, probs.reshape(len(have), -1), len(spec["classes"]))
        else:
            y = np.array([float(row[name]) for row in have])
            per_target[name] = regression_metrics(y, np.array([float(row[f"{name}_predicted"]) for row in have]))

    def mean(key: str, kind: str) -> float:
        values = [per_target[s["name"]].get(key, math.nan) for s in specs if s["kind"] == kind]
        finite = [v for v in values if not math.isnan(v)]
        return float(np.mean(finite)) if finite else math.nan

    out = {
        "what": "out-of-fold predictions: each labelled slide predicted by the fold model(s) that never trained on it",
        "task": "multi",
        "slides": len(held_out),
        "targets": per_target,
        **{key: mean(key, "categorical") for key in ("accuracy", "f1_macro", "auc")},
        **{key: mean(key, "regression") for key in ("r2", "pearson_r", "mae")},
    }
    localisation = cohort_localisation(held_out)
    if localisation:
        out["localisation"] = localisation
    return out


def result_row(result: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """One ``predictions.csv`` row: slide_id, predicted_class, prob_<class>..., cal_prob_<class>... (temperature-
    scaled), n_tiles, label, source, folds, spread (the folds' standard deviation of the predicted class's calibrated
    probability, when several folds predict the slide), and the localisation columns (``loc_auc``,
    ``loc_precision``, ``loc_mass``, ``loc_lesions_hit``, ``key_fraction``, ``lesions``) for slides whose store has
    instance labels."""
    probs = result["probabilities"]
    return {
        "slide_id": result["slide_id"],
        "predicted_class": result["predicted_class"],
        **{f"prob_{c}": float(probs[c]) for c in classes},
        **{f"cal_prob_{c}": float(result["calibrated_probabilities"][c]) for c in classes},
        "n_tiles": int(result["n_tiles"]),
        "label": result.get("label") or "",
        "source": result.get("source") or "",
        "folds": " ".join(str(k) for k in result.get("folds") or []),
        "spread": "" if result.get("spread") is None else float(result["spread"]),
        **{key: value for key, value in (result.get("localisation") or {}).items() if key in _LOC_COLUMNS},
    }


_LOC_COLUMNS = (*LOCALISATION_KEYS, "key_fraction", "lesions")


def cohort_localisation(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The mean of each localisation measure over the slides that have one (annotated slides with lesions), with
    ``uniform_mass``: the mass a uniform attention would put on the lesions (the mean key fraction)."""
    scored = [row for row in rows if row.get("loc_auc") not in (None, "")]
    if not scored:
        return None
    out: dict[str, Any] = {"slides": len(scored)}
    for key in LOCALISATION_KEYS:
        values = [float(row[key]) for row in scored if row.get(key) not in (None, "")]
        if values:
            out[key] = float(np.mean(values))
    out["uniform_mass"] = float(np.mean([float(row["key_fraction"]) for row in scored]))
    lesions = [int(row["lesions"]) for row in scored if row.get("lesions") not in (None, "")]
    if lesions:
        out["lesions"] = sum(lesions)
    return out


def survival_cohort_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Survival measures of the out-of-fold predictions of labelled slides: Harrell's C-index of their risks and
    the log-rank test between the high- and low-risk groups (``risk_groups``), or None."""
    from ..training import risk_groups

    held_out = [row for row in rows if row["source"] == "out-of-fold" and row["time"] != ""]
    if not held_out:
        return None
    time = np.array([float(row["time"]) for row in held_out])
    event = np.array([int(row["event"]) for row in held_out])
    risk = np.array([float(row["risk"]) for row in held_out])
    out = {
        "what": "out-of-fold predictions: each labelled slide predicted by the fold model(s) that never trained on it",
        "task": "survival",
        "slide_ids": [row["slide_id"] for row in held_out],
        **risk_groups(time, event, risk),
    }
    localisation = cohort_localisation(held_out)
    if localisation:
        out["localisation"] = localisation
    return out


def cohort_metrics(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> dict[str, Any] | None:
    """Metrics of the out-of-fold predictions of labelled slides (the run's honest cohort result), or None."""
    from ..training import calibration_metrics, classification_metrics

    index = {c: i for i, c in enumerate(classes)}
    held_out = [row for row in rows if row["source"] == "out-of-fold" and row["label"] in index]
    if not held_out:
        return None
    y_true = np.array([index[row["label"]] for row in held_out], dtype=np.int64)
    probs = np.array([[row[f"prob_{c}"] for c in classes] for row in held_out], dtype=np.float64)
    calibrated = np.array([[row[f"cal_prob_{c}"] for c in classes] for row in held_out], dtype=np.float64)
    metrics = classification_metrics(y_true, probs, len(classes))
    out = {
        "what": "out-of-fold predictions: each labelled slide predicted by the fold model(s) that never trained on it",
        "classes": list(classes),
        "slides": [row["slide_id"] for row in held_out],
        **metrics,
        # ECE/NLL of the raw and the temperature-scaled probabilities, with their reliability bins
        "calibration": calibration_metrics(probs, calibrated, y_true, bins=True),
    }
    localisation = cohort_localisation(held_out)
    if localisation:
        out["localisation"] = localisation
    return out


def write_predictions_csv(
    out_dir: Path,
    slide_ids: Sequence[str],
    identity: dict[str, Any],
    classes: Sequence[str],
    *,
    task: str = "classification",
    targets: Sequence[dict[str, Any]] = (),
) -> tuple[Path, list[dict[str, Any]], dict[str, Any] | None]:
    """Rewrite ``<out>/predictions.csv`` from the results of ``slide_ids`` made with this model, sorted by id, and
    ``<out>/metrics.json`` (out-of-fold cohort metrics, when there are labelled held-out slides).

    Runs under ``<out>/.locks/predictions.csv.lock`` so that of several shards finishing together, the last one to
    write has read every other shard's finished results (a rename alone would let a slower, older view win).
    """
    out_csv = Path(out_dir) / "predictions.csv"
    metrics_json = Path(out_dir) / "metrics.json"
    # Held for well under a second (its heartbeat beats every 15 s), so a lock older than a minute is abandoned.
    lock = SlideLock(Path(out_dir) / ".locks" / "predictions.csv.lock", stale_after_s=60.0)
    deadline = time.monotonic() + CSV_LOCK_WAIT_S
    while True:
        try:
            lock.acquire()
            break
        except LockedError as err:
            if time.monotonic() > deadline:
                raise LockedError(
                    f"{out_csv}: not rewritten ({err}); the per-slide results in {out_dir / 'slides'} are kept, "
                    "re-run `wsi-pipeline predict` to assemble it (finished slides are skipped)"
                ) from err
            time.sleep(0.1)
    try:
        rows = []
        for slide_id in sorted(set(slide_ids)):
            result = read_slide_result(out_dir, slide_id)
            if result and (result.get("checkpoint") or {}).get("sha256") == identity["sha256"]:
                if task == "multi":
                    rows.append(multi_row(result))
                else:
                    rows.append(survival_row(result) if task == "survival" else result_row(result, classes))
        buffer = io.StringIO()
        if task == "multi":
            fields = ["slide_id"]
            for spec in targets:
                fields += [spec["name"], f"{spec['name']}_predicted"]
                fields += [f"prob_{spec['name']}_{c}" for c in spec.get("classes") or []]
            fields += ["n_tiles", "source", "folds"]
        elif task == "survival":
            fields = ["slide_id", "risk", "risk_group", "n_tiles", "time", "event", "source", "folds", "spread"]
        else:
            fields = ["slide_id", "predicted_class", *(f"prob_{c}" for c in classes)]
            fields += [*(f"cal_prob_{c}" for c in classes), "n_tiles", "label", "source", "folds", "spread"]
        if any("loc_auc" in row for row in rows):
            fields += list(_LOC_COLUMNS)
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out_csv, buffer.getvalue())
        if task == "multi":
            metrics = multi_cohort_metrics(rows, targets)
        else:
            metrics = survival_cohort_metrics(rows) if task == "survival" else cohort_metrics(rows, classes)
        figure = Path(out_dir) / ("risk_groups.png" if task == "survival" else "reliability.png")
        if metrics is not None:
            text = json.dumps({**metrics, "model": identity["path"], "wsi_pipeline": provenance()}, indent=1)
            atomic_write_text(metrics_json, text + "\n")
            from ..training import plot_reliability, plot_risk_groups

            title = f"{Path(identity['path']).name}: out-of-fold slides"
            if task == "survival":
                scored = set(metrics["slide_ids"])
                held_out = [row for row in rows if row["slide_id"] in scored]
                columns = [[float(row[k]) for row in held_out] for k in ("time", "event", "risk")]
                plot_risk_groups(*columns, figure, title=title, p_value=metrics["logrank_p"])
            elif task == "classification":  # several targets: per-target numbers only, no figure
                plot_reliability({**metrics["calibration"], "slides": metrics["n"]}, figure, title=title)
        else:
            metrics_json.unlink(missing_ok=True)  # would describe another model's predictions
            figure.unlink(missing_ok=True)
    finally:
        lock.release()
    return out_csv, rows, metrics
