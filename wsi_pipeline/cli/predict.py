"""`wsi-pipeline predict`: class probabilities, attention scores and heatmaps from a trained checkpoint."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..batch import SlideRecord, resolve_shard
from ..config import load_config, merge_overrides, parse_set_overrides
from ._options import ConfigOpt, DeviceOpt, OutDirOpt, OverwriteOpt, SetOpt, ShardOpt
from ._summary import slide_progress, summary_table

__all__ = ["predict"]

console = Console(stderr=True)


def predict(
    model: Annotated[
        Path,
        typer.Argument(
            exists=True,
            metavar="MODEL",
            help="A training run folder (runs/<run>: every fold; out-of-fold predictions for its labelled slides, "
            "the mean of the folds for the others) or one checkpoint_best.pt.",
        ),
    ],
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="INPUTS",
            help="Folders of stores, stores, CSVs slide_id,store; or slide files, folders of slides, slide manifests "
            "(CSV path[,slide_id,mpp]) as `tile` takes them.",
        ),
    ],
    out: OutDirOpt,
    fold: Annotated[int | None, typer.Option("--fold", help="With a run folder: use only this fold's model.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Top-attention tiles saved per slide.")] = None,
    heatmaps: Annotated[bool | None, typer.Option("--heatmaps/--no-heatmaps", help="Draw heatmaps.")] = None,
    scaling: Annotated[
        str | None,
        typer.Option(
            "--scaling",
            help="Heatmap colour scaling: relative (attention x N, log scale; default), rank, percentile or linear.",
        ),
    ] = None,
    report: Annotated[
        bool | None,
        typer.Option(
            "--report/--no-report",
            help="Write OUT/report/index.html: the cohort and a zoomable page per slide, offline (default: on).",
        ),
    ] = None,
    device: DeviceOpt = None,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            "-w",
            help="Slide files only: the encoder weights file (its sha256 must be the one the checkpoint's features "
            "record; default: where they record it).",
        ),
    ] = None,
    slide_mpp: Annotated[
        float | None,
        typer.Option("--slide-mpp", help="Slide files only: level-0 um/px of slides whose metadata states none."),
    ] = None,
    mpp_csv: Annotated[
        Path | None, typer.Option("--mpp-csv", help="Slide files only: CSV with columns slide,mpp (per-slide um/px).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    shard: ShardOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Predict slides (stores or slide files): OUT/predictions.csv, metrics.json (out-of-fold, labelled slides),
    heatmaps/, top_tiles/, geojson/ (QuPath tile objects), report/index.html (open it in a browser; `wsi-pipeline
    view OUT` serves it at full resolution), per-tile scores in each store. Finished slides are
    skipped; exit code 1 when any slide failed.

    Example: wsi-pipeline predict runs/asmil_uni_cv5_seed0 stores/ --out pred/ --shard 0/4
    """
    from ..predict import PredictConfig  # torch-free: a config mistake is reported before torch loads

    options = {
        "top_k": top_k,
        "heatmaps": heatmaps,
        "scaling": scaling,
        "report": report,
        "device": device,
        "weights": weights,
        "slide_mpp": slide_mpp,
        "mpp_csv": mpp_csv,
    }
    cfg = load_config(PredictConfig, "predict", config, merge_overrides(options, parse_set_overrides(set_)))
    from ..predict import predict_slides

    chosen_shard = resolve_shard(shard)
    with slide_progress(console, "predict", None) as on_record:
        result = predict_slides(
            model, inputs, out, cfg, fold=fold, shard=chosen_shard, overwrite=overwrite, on_record=on_record
        )
    rows = {row["slide_id"]: row for row in result.rows}

    def prediction(rec: SlideRecord) -> str:
        row = rows.get(rec.slide_id)
        if row is None or rec.status == "failed":
            return ""
        source = f", {row['source']}" if row.get("source") else ""
        if "risk" in row:  # survival
            return f"{row['risk_group']} risk ({row['risk']:+.2f}{source})"
        if "predicted_class" not in row:  # several targets: each one's prediction
            answers = [
                f"{k.removesuffix('_predicted')} {v:.3g}"
                if isinstance(v, float)
                else f"{k.removesuffix('_predicted')} {v}"
                for k, v in row.items()
                if k.endswith("_predicted")
            ]
            return ", ".join(answers) + source
        label = row["predicted_class"]
        return f"{label} ({row[f'prob_{label}']:.2f}{source})"

    console.print(summary_table("predict", result.batch, {"prediction": prediction}))
    say = functools.partial(console.print, highlight=False, soft_wrap=True)  # long lines wrap, paths stay plain
    say(f"{len(result.rows)} slide(s) in {result.csv}")
    if result.metrics and result.metrics.get("task") == "survival":
        m = result.metrics
        say(
            f"cohort, out-of-fold ({m['slides']} labelled slide(s), {m['events']} events): C-index {m['c_index']:.3f}; "
            f"high vs low predicted risk ({m['groups']['high']} / {m['groups']['low']} slides): log-rank p "
            f"{m['logrank_p']:.3g} ({result.csv.parent / 'risk_groups.png'})",
        )
    elif result.metrics and result.metrics.get("task") == "multi":
        m = result.metrics
        parts = []
        for name, t in m["targets"].items():
            parts.append(
                f"{name} AUC {t['auc']:.3f}" if "auc" in t else f"{name} R^2 {t['r2']:.3f}, r {t['pearson_r']:.3f}"
            )
        say(
            f"cohort, out-of-fold ({m['slides']} labelled slide(s)): {'; '.join(parts)} "
            f"({result.csv.parent / 'metrics.json'})",
        )
    elif result.metrics:
        m = result.metrics
        say(
            f"cohort, out-of-fold ({m['n']} labelled slide(s)): accuracy {m['accuracy']:.3f}, balanced accuracy "
            f"{m['balanced_accuracy']:.3f}, macro-F1 {m['f1_macro']:.3f}, AUC {m['auc']:.3f} "
            f"({result.csv.parent / 'metrics.json'})",
        )
        cal = m.get("calibration")
        if cal:
            say(
                f"calibration: ECE {cal['ece']:.3f} raw, {cal['ece_calibrated']:.3f} with each fold's temperature "
                f"(columns cal_prob_*; {result.csv.parent / 'reliability.png'})",
            )
        loc = m.get("localisation")
        if loc:
            hit = (
                f", lesions with a tile among the 8 most attended {100 * loc['loc_lesions_hit']:.0f}%"
                if ("loc_lesions_hit" in loc)
                else ""
            )
            say(
                f"attention vs annotations ({loc['slides']} slide(s) with lesions): tile AUC {loc['loc_auc']:.3f}, "
                f"attention on lesion tiles {100 * loc['loc_mass']:.1f}% (uniform: {100 * loc['uniform_mass']:.1f}%), "
                f"top-k precision {loc['loc_precision']:.3f}{hit}",
            )
    if result.report:
        say(f"report: {result.report}")
    if result.failed:
        raise typer.Exit(1)
