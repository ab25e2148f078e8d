"""The training loop: one fold (``train_fold``) and all folds of a run (``train``)."""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from .. import __version__
from ..config import config_to_dict
from ..device import resolve_device
from ..errors import CheckpointError, ConfigError, LockedError, MissingPrerequisiteError, RunMismatchError
from ..files import atomic_write_text, remove_path
from ..locks import SlideLock
from ..mil import Anchor, RandomDropping, create_model, is_model, list_models
from ..store import FEATURES, provenance, resolve_stores
from ._bags import BagLoader, resolve_encoder
from ._calibration import (
    CALIBRATION_KEYS,
    pooled_calibration,
)
from ._checkpoint import fold_dir, load_checkpoint, run_dir, save_checkpoint
from ._config import TrainConfig, resolve_plugins, resolve_selection
from ._epoch import (
    _fmt,
    _note,
    _write_rows,
    bag_localisation_all,
    log,
    run_log,
)
from ._identity import IDENTITY_FILE, check_same_features, identity_changes, read_identity, run_identity
from ._localisation import LOCALISATION_KEYS, mean_localisation
from ._metrics import SCALARS, mean_std, selection_score
from ._plots import plot_history, plot_reliability, plot_risk_groups
from ._splits import (
    SPLIT_NAMES,
    Labels,
    Split,
    detect_task,
    make_splits,
    read_labels,
    read_multi_labels,
    read_survival_labels,
    split_tag,
)
from ._stability import mean_entropy, stability_between
from ._survival_fit import SURVIVAL_KEYS, risk_groups
from ._targets import MULTI_KEYS
from ._tasks import make_task
from ._threads import choose_threads

__all__ = ["FoldResult", "FoldTrainer", "TrainResult", "cosine_schedule", "train_fold", "train"]

EpochCallback = Callable[[int, int, int, dict[str, Any]], None]


@dataclass
class FoldResult:
    """One fold's metrics: ``val``/``test`` with the selected model (``best_epoch``), ``val_last``/``test_last``
    with the last epoch's model."""

    fold: int
    best_epoch: int
    val: dict[str, Any]
    test: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None
    test_last: dict[str, Any] = field(default_factory=dict)
    val_last: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    run_dir: Path
    folds: list[FoldResult]
    summary: dict[str, Any]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params: list[nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel for all parameters) where torch supports it for these parameters' device: the
    per-parameter loop costs as much as a small model's forward on CPU. Same update up to float rounding."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):  # an old torch or a device without a fused AdamW
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def cosine_schedule(total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at each optimiser step: a cosine from 1 to 0 over ``total_steps`` (per iteration)."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def _plain(data: Any) -> Any:
    """Metrics as plain Python numbers (numpy scalars are not data ``torch.load(weights_only=True)`` reads)."""
    return json.loads(json.dumps(data, default=float))


def _rng_state(device: torch.device, generator: torch.Generator) -> dict[str, Any]:
    """Every random state a fold's next epoch draws from, as plain data and tensors."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device, generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class _Progress:
    """Where a fold's training stands after an epoch: what a killed fold resumes from."""

    history: list[dict[str, Any]] = field(default_factory=list)
    previous_attention: dict[str, np.ndarray] = field(default_factory=dict)
    best_score: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0
    stopped: bool = False  # early stopping ended the fold

    @property
    def epoch(self) -> int:
        return int(self.history[-1]["epoch"]) if self.history else 0

    def state(self) -> dict[str, Any]:
        return {
            "history": _plain(self.history),
            "previous_attention": {k: torch.from_numpy(np.asarray(v)) for k, v in self.previous_attention.items()},
            "best_score": float(self.best_score),
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "stale": self.stale,
            "stopped": self.stopped,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Progress:
        return cls(
            history=list(state["history"]),
            previous_attention={k: v.numpy() for k, v in state["previous_attention"].items()},
            best_score=float(state["best_score"]),
            best_epoch=int(state["best_epoch"]),
            best_state=state["best_state"],
            stale=int(state["stale"]),
            stopped=bool(state["stopped"]),
        )


def _resume_state(path: Path, run_identity: str | None) -> dict[str, Any] | None:
    """The training state of an unfinished fold's ``checkpoint_last.pt`` when it belongs to this run, else None."""
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as err:
        log.warning("%s: cannot resume from it (%s); the fold starts again", path, err)
        return None
    if ckpt.get("run_identity") != run_identity or not ckpt.get("training_state"):
        return None
    return ckpt


class FoldTrainer:
    """One fold as a chain of named steps: ``set_up`` (seed, task, standardisation, model, plug-ins, optimiser),
    ``maybe_resume`` (from ``checkpoint_last.pt``), ``train_epochs`` (each: ``run_epoch``, ``select``,
    ``save_last``, the ``on_epoch`` hook) and ``finish`` (score the chosen model, write the fold's files).
    ``train_fold`` runs them in that order; the task (``_tasks.py``) holds what differs between classification,
    survival and several targets."""

    def __init__(
        self,
        split: Split,
        labels: Labels,
        loader: BagLoader,
        config: TrainConfig,
        *,
        out_dir: Path,
        meta: dict[str, Any],
        on_epoch: EpochCallback | None = None,
    ) -> None:
        self.split, self.labels, self.loader, self.config = split, labels, loader, config
        self.out_dir, self.meta, self.on_epoch = out_dir, meta, on_epoch
        self.progress = _Progress()
        self.saved_at = time.monotonic()  # when checkpoint_last.pt was last written (or the fold started)

    def run(self) -> FoldResult:
        self.set_up()
        self.maybe_resume()
        self.train_epochs()
        return self.finish()

    # ------------------------------------------------------------------ set up
    def set_up(self) -> None:
        """Everything the first epoch needs, in an order that fixes what the seed draws."""
        config, split, loader = self.config, self.split, self.loader
        self.device = loader.device
        seed = config.seed + split.fold
        _seed_everything(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.task = make_task(self.labels, split, config)
        self.selection = resolve_selection(config, self.labels.task)

        norm = None
        if config.standardize:
            mean, std = loader.fit_standardization(split.train)
            loader.set_standardization(mean, std)
            norm = {"mean": mean, "std": std}
        else:
            loader.set_standardization(None, None)

        model_kwargs = {**config.model_kwargs, "in_dim": loader.in_dim, "n_classes": self.task.n_outputs}
        try:
            self.model = create_model(config.model, **model_kwargs).to(self.device)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"train.model_kwargs {config.model_kwargs} do not fit {config.model!r}: {err}") from err
        # What train() resolved once and recorded (config.yaml's `resolved`); a fold trained alone resolves it here.
        resolved = (self.meta.get("config") or {}).get("resolved") or {}
        anchor_mode, drop_mode = resolved.get("anchor"), resolved.get("drop")
        if anchor_mode is None or drop_mode is None:
            anchor_mode, drop_mode = resolve_plugins(config)
        self.anchor = None
        if anchor_mode != "none":
            settings = config.anchor
            assert not isinstance(settings, str)  # a mode alone became settings in TrainConfig.__post_init__
            self.anchor = Anchor(
                self.model,
                mode=anchor_mode,  # type: ignore[arg-type]
                momentum=settings.momentum,
                tau=settings.tau,
                weight=settings.weight,
                reduction=settings.reduction,
                rebuild=lambda: create_model(config.model, **model_kwargs),
            )
        self.dropper = RandomDropping(drop_mode, config.n_drop, self.generator)  # type: ignore[arg-type]
        try:
            self.dropper.check(self.model)
        except ValueError as err:
            raise ConfigError(f"train.drop: {err}") from err

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, lr=config.lr, weight_decay=config.weight_decay)
        total_steps = config.epochs * self.task.steps_per_epoch()
        self.scheduler = (
            torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_schedule(total_steps))
            if config.schedule == "cosine"
            else None
        )
        self.monitor_ids = split.val or split.train
        self.monitor_name = "val" if split.val else "train"
        self.ckpt_meta = {
            **self.meta,
            "model_name": config.model,
            "model_kwargs": model_kwargs,
            "in_dim": loader.in_dim,
            "fold": split.fold,
            "feature_norm": norm,
            # Which slides this fold saw, so predict can give each labelled slide its out-of-fold model.
            "split": {"train": split.train, "val": split.val, "test": split.test, **self.task.split_record()},
            **self.task.checkpoint_fields(),
        }

    def maybe_resume(self) -> None:
        """Continue a fold killed mid-way from its ``checkpoint_last.pt`` (same run identity only)."""
        resumed = _resume_state(self.out_dir / "checkpoint_last.pt", self.meta.get("run_identity"))
        if resumed is None:
            return
        state = resumed["training_state"]
        self.model.load_state_dict(resumed["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.anchor is not None:
            self.anchor.model.load_state_dict(state["anchor"])
        self.progress = _Progress.from_state(state["progress"])
        _set_rng_state(state["rng"], self.device, self.generator)
        _note(
            "fold %d: resuming after epoch %d/%d (%s)",
            self.split.fold,
            self.progress.epoch,
            self.config.epochs,
            self.out_dir,
        )

    # ------------------------------------------------------------------ epochs
    def train_epochs(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        progress, config, fold = self.progress, self.config, self.split.fold
        self.saved_at = time.monotonic()
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            if progress.stopped:
                break
            row, metrics = self.run_epoch(epoch)
            self.select(epoch, metrics)
            # Not after every epoch by default: ASMIL's state at 1280-d is 371 MB, and writing it took half the
            # training time of a small cohort.
            last = epoch == config.epochs or progress.stopped
            if last or time.monotonic() - self.saved_at >= config.checkpoint_seconds:
                self.save_last()
                self.saved_at = time.monotonic()
            if self.on_epoch is not None:
                self.on_epoch(fold, epoch, config.epochs, row)
            _note(
                "fold %d epoch %d/%d: %s",
                fold,
                epoch,
                config.epochs,
                ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != "epoch"),
            )
            if progress.stopped:
                _note("fold %d: early stop at epoch %d (best %d)", fold, epoch, progress.best_epoch)

    def run_epoch(self, epoch: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Train one pass over the training slides in a seeded order, then the epoch's row: losses, validation
        metrics, localisation and attention stability on the monitored slides."""
        start = time.perf_counter()
        model, split, progress = self.model, self.split, self.progress
        model.train()
        order = [split.train[i] for i in torch.randperm(len(split.train), generator=self.generator).tolist()]
        loss_sums = self.task.train_pass(
            model,
            self.loader.iterate(order),
            self.optimizer,
            scheduler=self.scheduler,
            dropper=self.dropper,
            anchor=self.anchor,
            grad_clip=self.config.grad_clip,
        )
        n_steps = max(self.task.steps_per_epoch(), 1)  # losses per bag (per batch of slides for survival)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": float(sum(loss_sums.values())) / n_steps}
        row.update({f"train_loss_{name}": float(value) / n_steps for name, value in loss_sums.items()})
        row["lr"] = self.optimizer.param_groups[0]["lr"]

        metrics, attention = self.task.monitor(model, self.loader, self.monitor_ids)
        if metrics is not None:
            row.update({f"val_{k}": metrics[k] for k in self.task.metric_keys})
        localisation = mean_localisation(bag_localisation_all(self.loader, attention).values())
        row.update({f"{self.monitor_name}_{k}": localisation[k] for k in LOCALISATION_KEYS if k in localisation})
        row["attn_js"] = stability_between(progress.previous_attention, attention)
        row["attn_entropy"] = mean_entropy(attention)
        row["attn_entropy_norm"] = mean_entropy(attention, normalised=True)
        row["seconds"] = time.perf_counter() - start
        row = _plain(row)
        progress.previous_attention = attention
        progress.history.append(row)
        return row, metrics

    def select(self, epoch: int, metrics: dict[str, Any] | None) -> None:
        """Keep the model if its validation score is the best so far (the last epoch without validation slides);
        stop early after ``patience`` epochs without a better one."""
        progress = self.progress
        score = selection_score(metrics, self.selection, epoch) if metrics is not None else float(epoch)
        if score > progress.best_score:
            progress.best_score, progress.best_epoch, progress.stale = score, epoch, 0
            progress.best_state = copy.deepcopy(self.model.state_dict())
        else:
            progress.stale += 1
        if self.config.patience is not None and self.split.val and progress.stale >= self.config.patience:
            progress.stopped = True

    def save_last(self) -> None:
        """The model after this epoch plus everything the next epoch needs; replaced atomically."""
        training_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "anchor": self.anchor.model.state_dict() if self.anchor is not None else None,
            "rng": _rng_state(self.device, self.generator),
            "progress": self.progress.state(),
        }
        save_checkpoint(
            self.out_dir / "checkpoint_last.pt",
            self.model,
            epoch=self.progress.epoch,
            training_state=training_state,
            **self.ckpt_meta,
        )

    # ------------------------------------------------------------------ final evaluation
    def finish(self) -> FoldResult:
        """Score the last epoch's model (what selection gained or cost), load the chosen one, let the task score
        and write its predictions, then the curves, the chosen checkpoint and ``metrics.json``, last."""
        model, loader, split, task, out_dir = self.model, self.loader, self.split, self.task, self.out_dir
        history, best_epoch = self.progress.history, self.progress.best_epoch
        last = {name: task.score(model, loader, ids)[0] for name, ids in (("val", split.val), ("test", split.test))}
        assert self.progress.best_state is not None
        model.load_state_dict(self.progress.best_state)
        val, test, head = task.finish(model, loader, out_dir)
        result = FoldResult(split.fold, best_epoch, val, test, history, out_dir, last["test"], last["val"])

        _write_rows(out_dir / "metrics.csv", history)
        if self.config.plots:
            plot_history(history, out_dir)
        fold_json = {
            "fold": split.fold,
            "run_identity": self.meta.get("run_identity"),
            "best_epoch": best_epoch,
            "last_epoch": history[-1]["epoch"],
            "stability_set": self.monitor_name,
            "n_train": len(split.train),
            "n_val": len(split.val),
            "n_test": len(split.test),
            "val": result.val,
            "test": result.test,
            "val_last": result.val_last,
            "test_last": result.test_last,
            **head,
            "history": history,
            "wsi_pipeline": provenance(),
        }
        # The fold's model, then its metrics.json, last: their presence means every output of the fold is complete
        # (a fold killed before has only checkpoint_last.pt, which no one mistakes for a trained model).
        save_checkpoint(out_dir / "checkpoint_best.pt", model, epoch=best_epoch, **head, **self.ckpt_meta)
        atomic_write_text(out_dir / "metrics.json", json.dumps(fold_json, indent=1, default=float) + "\n")
        return result


def train_fold(
    split: Split,
    labels: Labels,
    loader: BagLoader,
    config: TrainConfig,
    *,
    out_dir: Path,
    meta: dict[str, Any],
    on_epoch: EpochCallback | None = None,
) -> FoldResult:
    """Train one fold and write its checkpoints, per-epoch metrics, test predictions and plots into ``out_dir``.

    The model is selected on the validation slides (``config.selection``, or the task's rule); with no validation
    slides the last epoch is kept. Attention stability is tracked on the validation slides (the training slides
    when there are none).

    ``checkpoint_last.pt`` holds the model after an epoch and everything the next epoch draws from (optimiser,
    scheduler, anchor, random states, the best model so far, the history); it is written when
    ``config.checkpoint_seconds`` have passed since the last write, and after the last epoch. A fold killed mid-way
    resumes from it when ``meta["run_identity"]`` is the same, and ends exactly as an uninterrupted fold would (on
    CPU, bit for bit). ``metrics.json``, written last, is what marks the fold finished. The steps are ``FoldTrainer``'s.
    """
    return FoldTrainer(split, labels, loader, config, out_dir=out_dir, meta=meta, on_epoch=on_epoch).run()


def _store_provenance(store: Path, encoder: str) -> dict[str, Any]:
    """What the checkpoint must record to re-make inputs from raw slides: the tiling and embedding settings."""
    import zarr

    attrs = zarr.open_group(str(store), mode="r").attrs.asdict()
    feature_attrs = zarr.open_array(str(store / FEATURES / encoder), mode="r").attrs.asdict()
    return {"tiling": attrs.get("tiling"), "tile_config": attrs.get("config"), "embedding": feature_attrs}


def train(
    stores: str | Path,
    labels_csv: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    overwrite: bool = False,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train a MIL model on stored bags for every fold of a split CSV or a stratified k-fold CV.

    Parameters
    ----------
    stores
        Folder of ``<slide_id>.zarr`` stores, or a CSV ``slide_id,store``.
    labels_csv
        ``slide_id,label[,<group_column>]``; string labels map to classes in sorted order.
    out_dir
        Parent of the run folder ``<model>_<encoder>_<split>_seed<seed>/``.
    config
        ``TrainConfig``; defaults follow docs/ASMIL.md.
    overwrite
        Retrain the run folder from scratch. Without it, a run folder of the same identity (settings that change
        results, labels, slides, every bag's features fingerprint) resumes: finished folds are kept and an
        interrupted fold continues from its last epoch; one of another identity is refused (``RunMismatchError``
        naming what changed). Two ``train`` processes never work in one run folder (``LockedError``).
    on_epoch
        Called after each epoch with ``(fold, epoch, epochs, row)`` (the CLI's progress bar).

    Returns
    -------
    TrainResult
        The run folder, per-fold results and the summary (per-fold and mean +- std test metrics).

    Examples
    --------
    >>> from wsi_pipeline.training import TrainConfig, train
    >>> result = train("stores/", "labels.csv", "runs/", TrainConfig(model="abmil", encoder="uni"))  # doctest: +SKIP
    """
    config = config or TrainConfig()
    if not is_model(config.model):
        raise ConfigError(f"train.model: unknown MIL model {config.model!r}; valid names: {', '.join(list_models())}")
    if config.deterministic:
        # CPU runs are bit-reproducible for a fixed thread count; on CUDA this picks deterministic kernels.
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    store_map = resolve_stores(stores)
    survival = config.survival
    if config.task == "multi" and not config.targets:
        raise ConfigError("train: task multi needs its target columns (--target A,B,... or train.targets)")
    task = (
        "multi"
        if config.targets
        else detect_task(
            labels_csv,
            label_column=config.label_column,
            time_column=survival.time_column,
            event_column=survival.event_column,
            task=config.task,
        )
    )
    if task == "multi":
        labels = read_multi_labels(labels_csv, list(config.targets), group_column=config.group_column)
    elif task == "survival":
        labels = read_survival_labels(
            labels_csv,
            time_column=survival.time_column,
            event_column=survival.event_column,
            group_column=config.group_column,
        )
    else:
        labels = read_labels(labels_csv, label_column=config.label_column, group_column=config.group_column)
    config = replace(config, task=task)
    usable = [sid for sid in labels.slide_ids if sid in store_map]
    if len(usable) < len(labels.slide_ids):
        log.warning(
            "%d labelled slides have no store in %s and are left out", len(labels.slide_ids) - len(usable), stores
        )
    if not usable:
        raise MissingPrerequisiteError(
            f"{labels_csv}: none of its slide ids has a store in {stores}; check the ids or run `wsi-pipeline tile`"
        )
    labels = labels.subset(usable)
    encoder = resolve_encoder([store_map[s] for s in usable], config.encoder)
    check_same_features({s: store_map[s] for s in usable}, encoder)
    config = replace(config, encoder=encoder)
    anchor_mode, drop_mode = resolve_plugins(config)
    device = resolve_device(config.device)
    loader = BagLoader(
        {s: store_map[s] for s in usable}, encoder, cache=config.cache, max_cache_gb=config.max_cache_gb, device=device
    )
    # Fail on a bad model/plug-in setting before anything is written.
    try:
        probe = create_model(config.model, **{**config.model_kwargs, "in_dim": loader.in_dim, "n_classes": 2})
        RandomDropping(drop_mode, config.n_drop).check(probe)  # type: ignore[arg-type]
        resolve_selection(config, task)
        if task == "survival" and getattr(probe, "takes_label", False):
            raise ValueError("its training loss needs a class label; use another model for survival")
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"train: model {config.model!r} with {config.model_kwargs} and drop={drop_mode}: {err}"
        ) from err
    splits = make_splits(
        labels, split_csv=config.split_csv, folds=config.folds, val_fraction=config.val_fraction, seed=config.seed
    )
    run = run_dir(
        out_dir, model=config.model, encoder=encoder, split=split_tag(config.split_csv, config.folds), seed=config.seed
    )
    run.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    with _run_lock(run):
        identity = run_identity(config, labels, {s: store_map[s] for s in usable})
        _prepare_run(run, identity, overwrite, splits)
        threads = _run_threads(run, config, loader, sum(p.numel() for p in probe.parameters()))
        torch.set_num_threads(threads)
        config_dict = {
            **config_to_dict(config),
            "resolved": {"anchor": anchor_mode, "drop": drop_mode, "threads": threads},
        }
        atomic_write_text(run / IDENTITY_FILE, json.dumps({**identity, "wsi_pipeline": provenance()}, indent=1) + "\n")
        atomic_write_text(run / "config.yaml", yaml.safe_dump({"train": config_dict}, sort_keys=False))
        atomic_write_text(run / "classes.json", json.dumps(labels.class_to_index, indent=1) + "\n")
        meta = {
            "config": config_dict,
            "classes": labels.classes,
            "encoder": encoder,
            "source": _store_provenance(store_map[usable[0]], encoder),
            "run_identity": identity["sha256"],
        }
        try:
            results = _train_folds(run, splits, labels, loader, config, meta, on_epoch=on_epoch, device=device)
        finally:
            torch.set_num_threads(threads_before)
        summary = _summarise(run, results, plots=config.plots)
    return TrainResult(run, results, summary)


def _run_threads(run: Path, config: TrainConfig, loader: BagLoader, n_params: int) -> int:
    """CPU threads of this run: ``threads`` when set; when resuming, the count the run was started with (CPU
    results are bit-identical only for one thread count); else ``choose_threads`` (bag sizes, model size, idle
    cores)."""
    if config.threads:
        return config.threads
    if _trained_folds(run):
        with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError):
            recorded = yaml.safe_load((run / "config.yaml").read_text())["train"]["resolved"]["threads"]
            if isinstance(recorded, int) and recorded >= 1:
                return recorded
    if loader.device.type != "cpu":
        return torch.get_num_threads()  # the GPU does the work; the CPU only feeds it
    return choose_threads(loader.n_instances.values(), n_params)


@contextlib.contextmanager
def _run_lock(run: Path) -> Iterator[None]:
    """One ``train`` at a time per run folder (across processes and hosts): a second one fails at once."""
    lock = SlideLock(run / ".lock")
    try:
        lock.acquire()
    except LockedError as err:
        raise LockedError(
            f"{run}: another `wsi-pipeline train` is training this run folder ({err}); wait for it to finish "
            "(then run this again: finished folds are kept), or train into another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _trained_folds(run: Path) -> list[Path]:
    """Fold folders holding anything trained (a checkpoint or finished metrics)."""
    return sorted(
        p
        for p in run.glob("fold_*")
        if p.is_dir()
        and any((p / name).is_file() for name in ("checkpoint_last.pt", "checkpoint_best.pt", "metrics.json"))
    )


def _prepare_run(run: Path, identity: dict[str, Any], overwrite: bool, splits: list[Split]) -> None:
    """Make ``run`` a folder of this identity's run: keep it when it is one and its folds hold the slides ``splits``
    gives them (finished folds are kept, an interrupted fold resumes), clear it with ``overwrite``, and otherwise
    refuse with what changed: never a mix of two runs."""
    old = read_identity(run)
    trained = _trained_folds(run)
    finished = trained or (run / "summary.json").is_file()
    if not finished:
        return
    if overwrite:  # even a run of the same identity: --overwrite means "train it again"
        _note("--overwrite: %s is retrained from scratch (%d fold folder(s) removed)", run, len(trained))
        figures = [run / "reliability.png", run / "risk_groups.png"]  # plots: false would leave the old run's
        for path in [*run.glob("fold_*"), run / "summary.json", run / "summary.csv", run / IDENTITY_FILE, *figures]:
            remove_path(path)
        return
    if old is not None and old.get("sha256") == identity["sha256"]:
        _check_fold_slides(run, splits)
        return  # the same run: finished folds are kept, an interrupted one resumes
    if old is None:
        raise RunMismatchError(
            f"{run}: holds folds trained by an older wsi-pipeline, which recorded no run identity; retrain it with "
            "--overwrite, or train into another --out"
        )
    raise RunMismatchError(
        f"{run}: holds a run of other settings or data ({'; '.join(identity_changes(old, identity))}); retrain it "
        "with --overwrite, or train into another --out"
    )


def _check_fold_slides(run: Path, splits: list[Split]) -> None:
    """Refuse a run whose trained folds hold other train/val/test slides than ``splits`` gives them. The identity
    covers settings and data, not the rule that deals slides into folds, and that rule has changed: scikit-learn
    1.8 fixed ``StratifiedGroupKFold``'s shuffle, whose folds ``training/_folds.py`` now makes."""
    for split in splits:
        recorded = _recorded_split(fold_dir(run, split.fold))
        if recorded is None:
            continue
        before = {sid: part for part in SPLIT_NAMES for sid in recorded.get(part, ())}
        now = {sid: part for part in SPLIT_NAMES for sid in getattr(split, part)}
        moved = sorted(sid for sid in before.keys() | now.keys() if before.get(sid) != now.get(sid))
        if moved:
            first = moved[0]
            raise RunMismatchError(
                f"{run}: fold {split.fold} was trained with other slides than this version deals it "
                f"({len(moved)} moved, e.g. {first}: {before.get(first, 'none')} -> {now.get(first, 'none')}; "
                "the folds are dealt as by scikit-learn 1.8, whose grouped folds differ from older versions'); "
                "retrain it with --overwrite, or train into another --out"
            )


def _recorded_split(fdir: Path) -> dict[str, Any] | None:
    """The slides a fold's checkpoint records it was trained, validated and tested on (``checkpoint_best.pt``'s,
    else ``checkpoint_last.pt``'s), or None when it has no readable checkpoint (it is reported, or trained again,
    where it is loaded). The checkpoint is mapped: only the record is read, not the weights."""
    for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
        path = fdir / name
        if path.is_file():
            try:
                return load_checkpoint(path, mmap=True).get("split") or {}
            except CheckpointError:
                continue
    return None


def _finished_fold(fdir: Path, run_identity: str) -> FoldResult | None:
    """The result of a fold this run finished (``metrics.json`` of the same run identity), else None."""
    try:
        saved = json.loads((fdir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if saved.get("run_identity") != run_identity or not (fdir / "checkpoint_best.pt").is_file():
        return None
    return FoldResult(
        saved["fold"],
        saved["best_epoch"],
        saved["val"],
        saved["test"],
        saved["history"],
        fdir,
        saved.get("test_last", {}),
        saved.get("val_last", {}),
    )


def _train_folds(
    run: Path,
    splits: list[Split],
    labels: Labels,
    loader: BagLoader,
    config: TrainConfig,
    meta: dict[str, Any],
    *,
    on_epoch: EpochCallback | None,
    device: torch.device,
) -> list[FoldResult]:
    """Every fold of the run: finished ones are read back, the others trained (an interrupted one resumes)."""
    handler = logging.FileHandler(run / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_log = logging.getLogger("wsi_pipeline")
    package_log.addHandler(handler)
    run_log.addHandler(handler)
    resolved = meta["config"]["resolved"]
    anchor_mode, drop_mode = resolved["anchor"], resolved["drop"]
    try:
        _note(
            "run %s (identity %s): %s, %d slides, %d classes, %d fold(s), device %s (%d CPU threads), "
            "anchor=%s drop=%s, package %s",
            run,
            meta["run_identity"][:12],
            config.model,
            len(labels.slide_ids),
            len(labels.classes),
            len(splits),
            device,
            torch.get_num_threads(),
            anchor_mode,
            drop_mode,
            __version__,
        )
        results = []
        for split in splits:
            fdir = fold_dir(run, split.fold)
            finished = _finished_fold(fdir, meta["run_identity"])
            if finished is not None:
                _note("fold %d already trained by this run; kept", split.fold)
                results.append(finished)
                continue
            results.append(train_fold(split, labels, loader, config, out_dir=fdir, meta=meta, on_epoch=on_epoch))
    finally:
        package_log.removeHandler(handler)
        run_log.removeHandler(handler)
        handler.close()
    return results


def _read_rows(paths: list[Path]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in paths:
        with path.open(newline="") as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def _summarise(run: Path, results: list[FoldResult], *, plots: bool = True) -> dict[str, Any]:
    """Write ``summary.json`` and ``summary.csv``: each fold's test metrics with the selected and with the last
    epoch's model, then mean and std over folds (localisation too, where instance labels exist), and the
    calibration of the folds' test predictions pooled (``reliability.png`` with ``plots``)."""
    keys = tuple(dict.fromkeys(SCALARS + SURVIVAL_KEYS + MULTI_KEYS + LOCALISATION_KEYS + CALIBRATION_KEYS))
    summary = {
        "folds": [
            {"fold": r.fold, "best_epoch": r.best_epoch, "val": r.val, "test": r.test, "test_last": r.test_last}
            for r in results
        ],
        "test_mean_std": mean_std([r.test for r in results], keys),
        "test_last_mean_std": mean_std([r.test_last for r in results], keys),
        "val_mean_std": mean_std([r.val for r in results], keys),
        "wsi_pipeline": provenance(),
    }
    names = list(dict.fromkeys(t for r in results for t in (r.test.get("targets") or {})))
    if names:  # several targets: each one's metrics over folds
        per_target = ("accuracy", "balanced_accuracy", "f1_macro", "auc", "r2", "pearson_r", "mae", "mse")
        summary["targets_mean_std"] = {
            name: mean_std([(r.test.get("targets") or {}).get(name, {}) for r in results], per_target) for name in names
        }
    pooled_title = f"{run.name}: test slides of every fold"  # the figures of every fold's test slides
    tests = [r.out_dir / "predictions_test.csv" for r in results if r.out_dir is not None]
    test_rows = _read_rows([p for p in tests if p.is_file()])  # every fold's test slides, read once
    if test_rows and "risk" in test_rows[0]:
        values = np.array([[float(r["time"]), float(r["event"]), float(r["risk"])] for r in test_rows])
        summary["survival"] = {
            "what": "every fold's test slides, risk relative to their fold model's median training risk",
            **risk_groups(values[:, 0], values[:, 1], values[:, 2]),
        }
        if plots:
            p_value = summary["survival"]["logrank_p"]
            plot_risk_groups(*values.T, run / "risk_groups.png", title=pooled_title, p_value=p_value)
    pooled = pooled_calibration(test_rows)
    if pooled is not None:
        summary["calibration"] = pooled
        if plots:
            plot_reliability(pooled, run / "reliability.png", title=pooled_title)
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=1, default=float) + "\n")
    present = [k for k in keys if any(k in r.test for r in results)]
    rows = [
        {
            "fold": r.fold,
            "best_epoch": r.best_epoch,
            **{f"test_{k}": r.test.get(k, math.nan) for k in present},
            **{f"last_epoch_test_{k}": r.test_last.get(k, math.nan) for k in present},
        }
        for r in results
    ]
    for stat in ("mean", "std"):
        rows.append(
            {
                "fold": stat,
                "best_epoch": "",
                **{f"test_{k}": summary["test_mean_std"][k][stat] for k in present},
                **{f"last_epoch_test_{k}": summary["test_last_mean_std"][k][stat] for k in present},
            }
        )
    _write_rows(run / "summary.csv", rows)
    return summary
