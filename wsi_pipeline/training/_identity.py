"""A training run's identity: what its folds were trained from, so a run folder never mixes folds of two runs.

The identity covers the settings that change results (not ``device``, ``threads``, ``cache``, ``plots``...), the
split CSV's content, the labels (and groups) of the slides used, and every bag's features fingerprint (so a
re-tiled, re-embedded, repaired or added slide changes it). It is written to ``<run>/identity.json`` before the
first fold is trained and recorded in every fold's checkpoints and ``metrics.json``. ``train`` resumes a run only
when its identity is the same, and otherwise refuses with what changed (``identity_changes``) and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import config_to_dict
from ..errors import StoreMismatchError
from ..mil import model_architecture
from ..provenance import changes, describe_list, file_sha256, fingerprint, weights_identity
from ..store import features_attrs, features_fingerprint_of
from ._config import TrainConfig, resolve_plugins
from ._splits import Labels

__all__ = ["IDENTITY_FILE", "run_identity", "identity_changes", "read_identity", "check_same_features"]

IDENTITY_FILE = "identity.json"
# Settings that change how fast or where a run goes, or what it draws, never what it learns.
_NOT_RESULTS = ("device", "threads", "cache", "max_cache_gb", "plots", "deterministic", "checkpoint_seconds")


def _features_id(store: Path, encoder: str) -> str:
    """A bag's features fingerprint; arrays made before fingerprints were recorded fall back to their creation
    stamp, which changes whenever they are rewritten."""
    found = features_fingerprint_of(store, encoder)
    if found:
        return found
    stamp = (features_attrs(store, encoder) or {}).get("wsi_pipeline") or {}
    return f"unfingerprinted:{stamp.get('created')}:{stamp.get('host')}"


def run_identity(config: TrainConfig, labels: Labels, stores: dict[str, Path]) -> dict[str, Any]:
    """The identity of a run of ``config`` on ``labels`` with the bags of ``stores`` (``config.encoder`` set)."""
    settings = {k: v for k, v in config_to_dict(config).items() if k not in _NOT_RESULTS}
    # The anchor's settings as the flat keys they were before they became one section: a run keeps its identity.
    anchor = settings.pop("anchor")
    settings["anchor"] = anchor["mode"]
    settings.update({f"anchor_{key}": value for key, value in anchor.items() if key != "mode"})
    # Settings of the tasks a run is not, and the task's name for classification, are left out: a classification
    # run keeps the identity it had before survival and several targets existed.
    if labels.task != "survival":
        settings.pop("survival", None)
    if labels.task != "multi":
        settings.pop("targets", None)
        settings.pop("regression_loss", None)
    if labels.task == "classification":
        settings.pop("task", None)
        if settings.get("label_column") == "label":
            settings.pop("label_column")
    anchor, drop = resolve_plugins(config)
    settings["resolved"] = {"anchor": anchor, "drop": drop}
    architecture = model_architecture(config.model, config.model_kwargs)
    if architecture is not None:  # a model whose default architecture changed: a run of the old one is another run
        settings["resolved"]["architecture"] = architecture
    if config.split_csv is not None:
        settings["split_csv"] = {"name": Path(config.split_csv).name, "sha256": file_sha256(config.split_csv)}
    groups = None if labels.groups is None else labels.groups.tolist()
    slide_labels: dict[str, Any] = {
        sid: labels.classes[int(y)] if groups is None else [labels.classes[int(y)], str(groups[i])]
        for i, (sid, y) in enumerate(zip(labels.slide_ids, labels.y, strict=True))
    }
    if labels.multi is not None:  # several targets: every value (None where missing) is the slide's label
        slide_labels = {
            sid: labels.multi.values[sid] if groups is None else [*labels.multi.values[sid], str(groups[i])]
            for i, sid in enumerate(labels.slide_ids)
        }
    if labels.time is not None:  # survival: the follow-up time is part of each slide's label
        slide_labels = {
            sid: [*(value if isinstance(value, list) else [value]), float(t)]
            for (sid, value), t in zip(slide_labels.items(), labels.time, strict=True)
        }
    identity = {
        "settings": settings,
        "labels": slide_labels,
        "features": {sid: _features_id(stores[sid], str(config.encoder)) for sid in labels.slide_ids},
    }
    return {"sha256": fingerprint(identity), **identity}


def read_identity(run: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run) / IDENTITY_FILE).read_text())
    except (OSError, ValueError):
        return None


def identity_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two run identities, one short phrase each: ``lr: 0.0001 -> 0.005``, ``slides: +2
    (S07, S08)``, ``labels of 1 slide (S01: a -> b)``, ``features of 3 slides (S01, S02, S03)``."""
    lines = changes(old.get("settings"), new.get("settings") or {})
    before, after = old.get("labels") or {}, new.get("labels") or {}
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    if added:
        lines.append(f"slides: +{len(added)} ({describe_list(added)})")
    if removed:
        lines.append(f"slides: -{len(removed)} ({describe_list(removed)})")
    relabelled = sorted(s for s in set(before) & set(after) if before[s] != after[s])
    if relabelled:
        first = relabelled[0]
        lines.append(f"labels of {len(relabelled)} slide(s) ({first}: {before[first]} -> {after[first]})")
    old_f, new_f = old.get("features") or {}, new.get("features") or {}
    refeatured = sorted(s for s in set(old_f) & set(new_f) if old_f[s] != new_f[s])
    if refeatured:
        lines.append(f"features of {len(refeatured)} slide(s) re-made ({describe_list(refeatured)})")
    if not lines and old.get("sha256") != new.get("sha256"):
        lines.append("identity changed")
    return lines


def check_same_features(stores: dict[str, Path], encoder: str) -> None:
    """Refuse bags whose ``features/<encoder>`` were made with different settings (weights, preprocessing,
    precision): one model must never learn from a mix. Bags that record no signature (converted tables) pass."""
    groups: dict[str, list[str]] = {}
    signatures: dict[str, dict[str, Any]] = {}
    for sid, store in stores.items():
        signature = (features_attrs(store, encoder) or {}).get("signature")
        if signature is None:
            continue
        signature = {
            **signature,
            "weights": weights_identity(signature.get("weights"), (signature.get("weights") or {}).get("seed")),
        }
        key = fingerprint(signature)
        groups.setdefault(key, []).append(sid)
        signatures[key] = signature
    if len(groups) > 1:
        ranked = sorted(groups, key=lambda k: -len(groups[k]))
        common, odd = ranked[0], ranked[1]
        what = "; ".join(changes(signatures[common], signatures[odd], limit=3))
        raise StoreMismatchError(
            f"'{encoder}' features of {len(groups[odd])} slide(s) ({describe_list(sorted(groups[odd]))}) were made "
            f"otherwise than the other {len(groups[common])} ({what}); re-embed them the same way "
            f"(`wsi-pipeline embed STORES --encoder {encoder} --overwrite` with the settings you want)"
        )
