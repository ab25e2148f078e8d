"""The product's job on slide pixels: does each MIL model diagnose a generated lesion cohort and find its lesions?

For each cohort setting it generates slides of real H&E with known lesions (``wsi-pipeline lesion-cohort``), then
runs the chain as a user does, through the installed CLI: ``tile``, ``embed`` (EfficientNet-Lite0, real ImageNet
weights), ``annotate`` (the cohort's GeoJSONs) and, for every model variant and seed, ``train`` (5-fold CV). It
prints one markdown table per cohort of test metrics, mean ± std over the seeds (each seed's value is its mean over
the folds): slide AUC, balanced accuracy, macro-F1, and the attention's localisation against the annotated tiles
(tile AUC, attention mass on lesion tiles, top-k precision, lesions hit by the 8 most attended tiles; "slides
scored" says over how many test slides, summed over the folds: only slides with a tile at least half covered by
lesion have any), the attention entropy (1 = uniform) and the seconds per training epoch.

The ceiling: a tile-level logistic regression on the annotated tiles' features (slides split 5-fold), i.e. how well
the features alone tell lesion tiles from the others when every tile is labelled. MIL gets slide labels only.

Everything finished is read back, not redone (delete a folder to redo it). Not part of ``make bench``: the default
grid takes hours on a 2-core CPU.

Usage::

    python benchmarks/slide_benchmark.py --out bench-out/slides                     # the table in docs/asmil.md
    python benchmarks/slide_benchmark.py --out bench-out/slides --slides 60 --seeds 0 --variants abmil asmil
    python benchmarks/slide_benchmark.py --out bench-out/slides-stain --stain-match macenko
    python benchmarks/slide_benchmark.py --out bench-out/sweep --lesion-share 0.002-0.005 --variants abmil asmil
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ENCODER = "efficientnet_lite0"

# name -> (model, extra `wsi-pipeline train` arguments)
ASMIL_RELEASED = ["--set", "anchor.mode=frozen", "--set", "anchor.reduction=mean"]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "meanpool": ("meanpool", []),
    "abmil": ("abmil", []),
    "acmil": ("acmil", []),
    "clam_sb": ("clam_sb", []),
    "dsmil": ("dsmil", []),
    "transmil": ("transmil", []),
    "asmil": ("asmil", []),  # as shipped: a module per branch, the paper's recipe
    "asmil-released": ("asmil", ASMIL_RELEASED),  # the authors' code: frozen random anchor, loss averaged over tiles
    "asmil-localise": ("asmil", ["-c", str(ROOT / "configs" / "presets" / "asmil-localise.yaml")]),
    "asmil-shared": ("asmil", ["--set", "model_kwargs.shared_branches=true"]),  # one module for every branch
}
COLUMNS = [
    ("auc", "slide AUC"),
    ("balanced_accuracy", "bal. acc."),
    ("f1_macro", "macro-F1"),
    ("loc_auc", "tile AUC"),
    ("loc_mass", "attn. on lesions"),
    ("loc_precision", "top-k prec."),
    ("loc_lesions_hit", "lesions hit (top 8)"),
    ("loc_slides", "slides scored"),
    ("entropy", "entropy"),
    ("epoch_s", "s / epoch"),
]


def cli(*args: object) -> list[str]:
    return [str(Path(sys.executable).parent / "wsi-pipeline"), *map(str, args)]


def run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")


def prepare(out: Path, cohort_args: list[str], sources: list[str]) -> tuple[Path, Path]:
    """The cohort, tiled, embedded and annotated under ``out`` (each step skipped when already done)."""
    run(cli("lesion-cohort", "--out", out / "cohort", *cohort_args, *sources), "lesion-cohort")
    stores = out / "stores"
    run(cli("tile", out / "cohort" / "slides", "--out", stores), "tile")
    weights = next(p for p in (DATA / "weights", ROOT / "example" / "weights") if p.is_dir())
    run(cli("embed", stores, "-e", ENCODER, "-w", weights / "efficientnet-lite0-57934424.pth", "--device", "cpu"),
        "embed")  # fmt: skip
    run(cli("annotate", stores, "--annotations", out / "cohort" / "annotations", "--classes", "tumor"), "annotate")
    return stores, out / "cohort" / "labels.csv"


def read_run(run_dir: Path) -> dict[str, float]:
    """Test metrics (mean over folds), last-epoch validation entropy and seconds per epoch (means over folds)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    row = {key: summary["test_mean_std"].get(key, {}).get("mean", math.nan) for key, _ in COLUMNS[:7]}
    entropy, seconds, scored = [], [], 0
    for fold in sorted(run_dir.glob("fold_*/metrics.json")):
        metrics = json.loads(fold.read_text())
        history = metrics["history"]
        entropy.append(history[-1]["attn_entropy_norm"])
        seconds.append(np.median([r.get("seconds", math.nan) for r in history]))
        scored += int(metrics["test"].get("loc_bags", 0))  # test slides with lesion tiles (the localisation's n)
    row["entropy"], row["epoch_s"] = float(np.mean(entropy)), float(np.nanmean(seconds))
    row["loc_slides"] = float(scored)
    return row


def train_all(out: Path, stores: Path, labels: Path, variants: list[str], seeds: list[int], common: list[str]):
    per_seed: list[dict[str, dict[str, float]]] = []
    for seed in seeds:
        results = {}
        for name in variants:
            model, extra = VARIANTS[name]
            runs = out / f"runs-seed{seed}" / name
            summary = next(runs.glob("*/summary.json"), None)
            if summary is None:
                shutil.rmtree(runs, ignore_errors=True)
                start = time.perf_counter()
                run(cli("train", stores, "-l", labels, "-e", ENCODER, "-o", runs, "-m", model, "--seed", seed,
                        *extra, *common), f"{name}, seed {seed}")  # fmt: skip
                print(f"seed {seed} {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
                summary = next(runs.glob("*/summary.json"))
            results[name] = read_run(summary.parent)
        per_seed.append(results)
    return per_seed


def linear_probe(stores: Path, folds: int = 5) -> dict[str, float] | None:
    """Tile AUC of a logistic regression on the annotated tiles (lesion vs the rest), slides split into folds; None
    when no tile is at least half lesion (lesions smaller than a tile)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    from wsi_pipeline.store import list_stores, read_features, read_instance_labels

    xs, ys, groups = [], [], []
    for i, store in enumerate(list_stores(stores)):
        labels = read_instance_labels(store)
        if labels is None:
            continue
        known = labels >= 0
        xs.append(read_features(store, ENCODER)[known].astype(np.float32))
        ys.append(labels[known] > 0)
        groups.append(np.full(int(known.sum()), i))
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
    if y.all() or not y.any():
        return None
    scores = np.zeros(len(y))
    for train, test in GroupKFold(folds).split(x, y, g):
        probe = LogisticRegression(max_iter=2000, C=0.1).fit(x[train], y[train])
        scores[test] = probe.decision_function(x[test])
    return {"tile_auc": float(roc_auc_score(y, scores)), "tiles": int(len(y)), "lesion_tiles": int(y.sum())}


def table(per_seed: list[dict[str, dict[str, float]]], variants: list[str]) -> str:
    lines = ["| variant | " + " | ".join(title for _, title in COLUMNS) + " |", "| --- " * (len(COLUMNS) + 1) + "|"]
    for name in variants:
        cells = []
        for key, _ in COLUMNS:
            values = np.array([seed[name][key] for seed in per_seed], dtype=float)
            digits = {"epoch_s": ".2f", "loc_slides": ".0f"}.get(key, ".3f")
            mean = format(np.nanmean(values), digits)
            cells.append(mean if len(values) == 1 else f"{mean} ± {format(np.nanstd(values), digits)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cohort_summary(out: Path) -> str:
    record = json.loads((out / "cohort" / "cohort.json").read_text())
    summary = record["summary"]
    with (out / "cohort" / "labels.csv").open() as fh:
        n = sum(1 for _ in csv.DictReader(fh))
    low, high = summary["lesion_share_range"]
    s = record["settings"]
    return (f"{n} slides ({summary['positive']} with {summary['lesions']} lesions covering {100 * low:.2g}-"
            f"{100 * high:.2g}% of their tissue), {s['width']}x{s['height']} px at {s['mpp']} um/px, stain matching "
            f"{s['stain_match']}, seed {s['seed']}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--slides", default="120")
    parser.add_argument("--lesion-share", default="0.005-0.03")
    parser.add_argument("--stain-match", default="none", choices=["none", "reinhard", "macenko"])
    parser.add_argument("--cohort-seed", default="0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=sorted(VARIANTS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a train setting for every run, e.g. --set epochs=20")  # fmt: skip
    args = parser.parse_args()
    sources = []
    for option, name in (("--background", "slides/CMU-1-Small-Region.svs"),
                         ("--lesion", "images/tiatoolbox-target_image.png")):  # fmt: skip
        found = next((root / name for root in (DATA, ROOT / "example") if (root / name).is_file()), None)
        if found is None:
            raise SystemExit(f"{name} not found: run `python examples/fetch_data.py example` first")
        sources += [option, str(found)]
    cohort_args = ["--slides", args.slides, "--lesion-share", args.lesion_share, "--stain-match", args.stain_match,
                   "--seed", args.cohort_seed]  # fmt: skip
    stores, labels = prepare(args.out, cohort_args, sources)
    probe = linear_probe(stores)
    common = ["--set", "threads=1", "--set", "plots=false", *[a for item in args.set for a in ("--set", item)]]
    per_seed = train_all(args.out, stores, labels, args.variants, args.seeds, common)
    print(f"cohort: {cohort_summary(args.out)}")
    if probe is None:
        print("ceiling: none measurable: no tile is at least half lesion (the lesions are smaller than a tile)")
    else:
        print(f"ceiling: tile-level linear probe on the annotated tiles' features, tile AUC {probe['tile_auc']:.3f} "
              f"({probe['lesion_tiles']} lesion tiles of {probe['tiles']})")  # fmt: skip
    settings = f"; settings: {', '.join(args.set)}" if args.set else ""
    print(f"5-fold CV test metrics, mean ± std over seeds {', '.join(map(str, args.seeds))}{settings}")
    print()  # pasted into markdown, the table starts after a blank line, not as more lines of the text above
    print(table(per_seed, args.variants))


if __name__ == "__main__":
    main()
