"""`wsi-pipeline train`: MIL models on stored bags (split CSV or stratified k-fold CV)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..config import load_config, merge_overrides, parse_set_overrides
from ._options import ConfigOpt, DeviceOpt, EncoderOpt, LabelsOpt, ModelOpt, OutDirOpt, SeedOpt, SetOpt

__all__ = ["train"]

console = Console()


def _list_models(value: bool) -> None:
    # The names come from the model registry, which needs torch: only when asked, never for --help.
    if value:
        from ..mil import list_models

        typer.echo("\n".join(list_models()))
        raise typer.Exit()


def train(
    stores: Annotated[
        Path, typer.Argument(metavar="STORES", help="Folder of <slide_id>.zarr stores, or a CSV slide_id,store.")
    ],
    labels: LabelsOpt,
    out: OutDirOpt,
    model: ModelOpt = None,
    encoder: EncoderOpt = None,
    split_csv: Annotated[
        Path | None, typer.Option("--split-csv", help="CSV slide_id,split[,fold] (train/val/test) instead of CV.")
    ] = None,
    folds: Annotated[int | None, typer.Option("--folds", "-k", help="Folds of stratified CV.")] = None,
    group_column: Annotated[
        str | None, typer.Option("--group-column", help="Labels CSV column (e.g. patient) kept on one side.")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="classification (a label column), survival (time and event columns; Cox or discrete-time head), "
            "multi (several --target columns), or auto (default): follows the labels CSV's columns.",
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            help="The labels CSV's column(s) to learn: LABEL for classification (default: label), TIME,EVENT for "
            "survival (default: time,event), A,B,C... (or --task multi) for several targets, one head each "
            "(NAME:regression for a continuous one; empty cells are missing values).",
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs per fold.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="AdamW learning rate.")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Retrain the run folder from scratch (default: resume it when its settings and data are the same; "
            "refuse, saying what changed, when they are not).",
        ),
    ] = False,
    list_models_: Annotated[
        bool,
        typer.Option(
            "--list-models", callback=_list_models, is_eager=True, expose_value=False, help="List the MIL models."
        ),
    ] = False,
) -> None:
    """Train a MIL model (ASMIL by default) on stored embeddings; writes <out>/<model>_<encoder>_<split>_seed<n>/.

    Classification (slide_id,label[,patient]): probabilities calibrated per fold. Survival (slide_id,time,event):
    --set survival.loss=cox|nll; C-index (Harrell, Uno), time-dependent AUC, integrated Brier score.
    """
    from ..training import TrainConfig  # torch-free: a config mistake is reported before torch loads

    columns = [part.strip() for part in (target or "").split(",") if part.strip()]
    if target is not None and not columns:
        raise typer.BadParameter(f"{target!r}: give LABEL, TIME,EVENT or A,B,... columns", param_hint="--target")
    # One column: the label; two: time and event (survival) unless --task multi; more (or --task multi): targets.
    several = len(columns) > 2 or (task == "multi" and len(columns) > 0)
    survival_columns = len(columns) == 2 and not several
    options = {
        "task": task,
        "label_column": columns[0] if len(columns) == 1 and not several else None,
        "targets": columns if several else None,
        "survival.time_column": columns[0] if survival_columns else None,
        "survival.event_column": columns[1] if survival_columns else None,
        "model": model,
        "encoder": encoder,
        "split_csv": split_csv,
        "folds": folds,
        "group_column": group_column,
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "device": device,
    }
    cfg = load_config(TrainConfig, "train", config, merge_overrides(options, parse_set_overrides(set_)))
    from ..training import train as run_train

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"train {cfg.model}", total=None, info="")

        def on_epoch(fold: int, epoch: int, total: int, row: dict) -> None:
            progress.update(
                task,
                total=total,
                completed=epoch,
                description=f"fold {fold}",
                info=f"loss {row['train_loss']:.3f}"
                + (f" val f1 {row['val_f1_macro']:.3f}" if "val_f1_macro" in row else ""),
            )

        result = run_train(stores, labels, out, cfg, overwrite=overwrite, on_epoch=on_epoch)
    console.print(summary_table(result.run_dir, result.summary, len(result.folds)))


def summary_table(run_dir: Path, summary: dict, n_folds: int) -> Table:
    """Test metrics (mean ± std over folds) of the selected and of the last epoch's models, one metric a row;
    localisation rows where the bags have instance labels."""
    names = {
        "accuracy": "accuracy",
        "balanced_accuracy": "balanced accuracy",
        "f1_macro": "macro-F1",
        "auc": "AUC",
        "c_index": "C-index (Harrell)",
        "c_index_uno": "C-index (Uno)",
        "td_auc": "time-dependent AUC (mean at 3 times)",
        "ibs": "integrated Brier score",
        "r2": "R^2 (continuous targets)",
        "pearson_r": "Pearson r (continuous targets)",
        "target_score": "mean target score",
        "loc_auc": "localisation AUC",
        "loc_precision": "localisation top-k precision",
        "loc_mass": "attention on key instances",
        "loc_lesions_hit": "lesions hit by the 8 most attended tiles",
        "ece": "calibration error (ECE)",
        "ece_calibrated": "ECE, temperature-scaled",
    }
    selected, last = summary["test_mean_std"], summary["test_last_mean_std"]
    table = Table(title=f"{run_dir}\ntest metrics, mean ± std over {n_folds} fold(s)")
    for column in ("", "selected epoch", "last epoch"):
        table.add_column(column)

    def cell(stats: dict, key: str) -> str:
        mean = stats.get(key, {}).get("mean", math.nan)
        return "-" if math.isnan(mean) else f"{mean:.3f} ± {stats[key]['std']:.3f}"

    for key, name in names.items():
        if not math.isnan(selected.get(key, {}).get("mean", math.nan)):
            table.add_row(name, cell(selected, key), cell(last, key))  # no temperature is fitted for the last epoch
    for target, stats in (summary.get("targets_mean_std") or {}).items():  # several targets: each one's own
        for key, name in (("auc", "AUC"), ("f1_macro", "macro-F1"), ("r2", "R^2"), ("pearson_r", "Pearson r")):
            if not math.isnan(stats.get(key, {}).get("mean", math.nan)):
                table.add_row(f"{target}: {name}", cell(stats, key), "")
    return table
