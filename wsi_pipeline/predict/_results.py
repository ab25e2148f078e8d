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
    return scores_name is None or has_array(store, SCORES, scores_name)


def result_row(result: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """One ``predictions.csv`` row: slide_id, predicted_class, prob_<class>..., n_tiles, label, source, folds, and
    the localisation columns (``loc_auc``, ``loc_precision``, ``loc_mass``, ``loc_lesions_hit``, ``key_fraction``,
    ``lesions``) for slides whose store has instance labels."""
    probs = result["probabilities"]
    return {
        "slide_id": result["slide_id"],
        "predicted_class": result["predicted_class"],
        **{f"prob_{c}": float(probs[c]) for c in classes},
        "n_tiles": int(result["n_tiles"]),
        "label": result.get("label") or "",
        "source": result.get("source") or "",
        "folds": " ".join(str(k) for k in result.get("folds") or []),
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


def cohort_metrics(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> dict[str, Any] | None:
    """Metrics of the out-of-fold predictions of labelled slides (the run's honest cohort result), or None."""
    from ..training import classification_metrics

    index = {c: i for i, c in enumerate(classes)}
    held_out = [row for row in rows if row["source"] == "out-of-fold" and row["label"] in index]
    if not held_out:
        return None
    y_true = np.array([index[row["label"]] for row in held_out], dtype=np.int64)
    probs = np.array([[row[f"prob_{c}"] for c in classes] for row in held_out], dtype=np.float64)
    metrics = classification_metrics(y_true, probs, len(classes))
    out = {
        "what": "out-of-fold predictions: each labelled slide predicted by the fold model(s) that never trained on it",
        "classes": list(classes),
        "slides": [row["slide_id"] for row in held_out],
        **metrics,
    }
    localisation = cohort_localisation(held_out)
    if localisation:
        out["localisation"] = localisation
    return out


def write_predictions_csv(
    out_dir: Path, slide_ids: Sequence[str], identity: dict[str, Any], classes: Sequence[str]
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
                rows.append(result_row(result, classes))
        buffer = io.StringIO()
        fields = (
            ["slide_id", "predicted_class"] + [f"prob_{c}" for c in classes] + ["n_tiles", "label", "source", "folds"]
        )
        if any("loc_auc" in row for row in rows):
            fields += list(_LOC_COLUMNS)
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out_csv, buffer.getvalue())
        metrics = cohort_metrics(rows, classes)
        if metrics is not None:
            text = json.dumps({**metrics, "model": identity["path"], "wsi_pipeline": provenance()}, indent=1)
            atomic_write_text(metrics_json, text + "\n")
        else:
            metrics_json.unlink(missing_ok=True)  # would describe another model's predictions
    finally:
        lock.release()
    return out_csv, rows, metrics
