"""``TrainConfig``: every setting of a training run (``configs/train.yaml`` mirrors these defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["AnchorSettings", "SurvivalSettings", "TrainConfig", "resolve_plugins", "resolve_selection"]


AnchorMode = Literal["auto", "ema", "frozen", "none"]


@dataclass
class AnchorSettings:
    """ASMIL's anchor, a plug-in of the training loop for every model (``mil/plugins.py``).

    ``mode``: ``auto`` (``ema`` for asmil, else ``none``), ``ema`` (a copy of the student that follows it by EMA with
    ``momentum``), ``frozen`` (an independent random network never updated, what the released code does) or
    ``none``. Its target is ``sigmax(a_anchor / tau)``; the loss, times ``weight``, is summed over the tiles (the
    paper) or averaged (``reduction: mean``, the released code).
    """

    mode: AnchorMode = "auto"
    momentum: float = 0.999
    tau: float = 0.5
    weight: float = 1.0
    reduction: Literal["sum", "mean"] = "sum"


@dataclass
class SurvivalSettings:
    """The survival task (``task: survival``): which columns hold the follow-up time and the event, and the head.

    ``loss``: ``cox`` (one log-risk per slide, Cox partial likelihood over ``batch`` slides per step) or ``nll``
    (discrete time: the hazard in ``time_bins`` bins, edges at the training slides' event-time quantiles).
    """

    time_column: str = "time"
    event_column: str = "event"  # 1/true: the event happened at that time; 0/false: censored then
    loss: Literal["cox", "nll"] = "cox"
    time_bins: int = 4
    batch: int = 32  # slides per optimiser step: a Cox risk means something only against others at risk

    def __post_init__(self) -> None:
        if self.time_bins < 2:
            raise ValueError("survival.time_bins must be >= 2")
        if self.batch < 2:
            raise ValueError("survival.batch must be >= 2 (a partial likelihood compares slides)")


@dataclass
class TrainConfig:
    """Settings of ``train``; defaults follow docs/asmil.md (AdamW 1e-4 / 1e-5, cosine per iteration, clip 5).

    ``anchor`` and ``drop`` default to ``auto``: the ASMIL recipe (EMA anchor, token dropping) for ``asmil`` and
    off for the baselines; set them explicitly to plug ASMIL's components into any model.
    """

    model: str = "asmil"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # what to learn: auto follows the labels CSV (a label column: classification; time and event: survival;
    # targets: several columns, one head each: multi)
    task: Literal["auto", "classification", "survival", "multi"] = "auto"
    label_column: str = "label"
    targets: list[str] = field(default_factory=list)  # multi: columns, "name:regression" for a continuous one
    regression_loss: Literal["mse", "huber"] = "mse"  # multi: continuous targets (standardised)
    survival: SurvivalSettings = field(default_factory=SurvivalSettings)
    encoder: str | None = None  # features/<encoder> in the stores; None: the only encoder they have
    # data and splits
    split_csv: Path | None = None  # slide_id,split[,fold] with split in train/val/test
    folds: int = 5  # stratified k-fold CV when no split CSV
    val_fraction: float = 0.1  # of each CV training part held out for model selection (0: none, use last epoch)
    group_column: str | None = None  # labels CSV column (e.g. patient) whose slides stay on one side of a split
    standardize: bool = False  # z-score features with mean/std of the training bags (kept in the checkpoint)
    cache: Literal["auto", "memory", "none"] = "auto"
    max_cache_gb: float = 8.0
    # optimisation
    epochs: int = 50
    lr: float = 1e-4
    weight_decay: float = 1e-5
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = 5.0
    # last: keep the last epoch; a survival run selects on the validation C-index (c_index) unless loss or last
    selection: Literal["f1_auc", "loss", "accuracy", "c_index", "target_score", "last"] = "f1_auc"
    patience: int | None = None  # early stopping after this many epochs without a better val score
    # ASMIL plug-ins; `anchor: ema` (a mode alone) is short for `anchor: {mode: ema}`
    anchor: AnchorSettings | AnchorMode = field(default_factory=lambda: AnchorSettings())
    drop: Literal["auto", "none", "token", "instance"] = "auto"
    n_drop: int = 10
    # run
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    deterministic: bool = True
    plots: bool = True
    # checkpoint_last.pt after an epoch when this many seconds have passed since the last one was written, and
    # after a fold's last epoch; 0: after every epoch. A kill loses at most this much training.
    checkpoint_seconds: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.anchor, str):  # `--set anchor=ema`: the mode alone
            self.anchor = AnchorSettings(mode=self.anchor)  # type: ignore[arg-type]
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if self.folds < 2:
            raise ValueError("folds must be >= 2")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError("val_fraction must be in [0, 0.5)")
        if self.checkpoint_seconds < 0:
            raise ValueError("checkpoint_seconds must be >= 0 (0: after every epoch)")


def resolve_plugins(config: TrainConfig) -> tuple[str, str]:
    """The anchor mode and dropping mode a run uses once ``auto`` is resolved: ASMIL's recipe for ``asmil``."""
    is_asmil = config.model == "asmil"
    mode = config.anchor.mode  # type: ignore[union-attr]  # always settings after __post_init__
    anchor = mode if mode != "auto" else ("ema" if is_asmil else "none")
    drop = config.drop if config.drop != "auto" else ("token" if is_asmil else "none")
    return anchor, drop


def resolve_selection(config: TrainConfig, task: str) -> str:
    """The model selection rule of a run: a survival run scores its validation slides by C-index and a run of
    several targets by their mean score where a classification rule (F1 + AUC, accuracy) was asked for."""
    if task == "survival":
        return config.selection if config.selection in ("loss", "last", "c_index") else "c_index"
    if task == "multi":  # the mean over targets of (macro-F1 + AUC) / 2 or R^2
        return config.selection if config.selection in ("loss", "last", "target_score") else "target_score"
    if config.selection in ("c_index", "target_score"):
        raise ValueError(
            f"train.selection {config.selection} is for survival (c_index) or several targets (target_score); "
            "use f1_auc, accuracy or loss"
        )
    return config.selection
