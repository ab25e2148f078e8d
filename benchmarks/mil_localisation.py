"""The sparse digit-bag benchmark end to end: does each MIL model (and ASMIL's components) find the key instances?

For every seed it makes the bags (``wsi-pipeline digit-bags --seed S``), trains every variant with
``wsi-pipeline train`` (the installed CLI, 5-fold CV, ``configs/presets/digit-bags.yaml``, seed S), and prints one
markdown table of test metrics, mean ± std over the seeds (each seed's value is its mean over the folds):
accuracy, AUC, macro-F1, localisation (attention AUC against the key instances, top-k precision, attention mass on
the key instances), the paper's stability diagnostic (validation JS divergence of the attention between consecutive
epochs, averaged over epochs), the attention entropy (1 = uniform), and the wall time of one seed's training.

Runs that finished are read back, not redone (delete their folder to redo one). Not part of ``make bench``: the
default grid takes hours on a 2-core CPU.

Usage::

    python benchmarks/mil_localisation.py --out bench-out/digits                   # the table in docs/asmil.md
    python benchmarks/mil_localisation.py --out bench-out/digits --variants abmil asmil --seeds 0
    python benchmarks/mil_localisation.py --out bench-out/hard --bags 120 --prevalence 0.008
    python benchmarks/mil_localisation.py --out bench-out/plugins --bags 60 --bag-size 100-200 --prevalence 0.03 \
        --set epochs=20 --set folds=3 --variants transmil transmil+anchor+dropping   # the plug-in table
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "presets" / "digit-bags.yaml"

# name -> (model, extra `wsi-pipeline train` arguments)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "meanpool": ("meanpool", []),
    "abmil": ("abmil", []),
    "abmil+anchor": ("abmil", ["--set", "anchor=ema"]),
    "abmil+dropping": ("abmil", ["--set", "drop=instance"]),
    "abmil+anchor+dropping": ("abmil", ["--set", "anchor=ema", "--set", "drop=instance"]),
    "acmil": ("acmil", []),
    "asmil": ("asmil", []),  # the paper's recipe (docs/asmil.md)
    "asmil-student": ("asmil", ["--set", "anchor=none", "--set", "drop=none"]),
    # configs/presets/asmil-localise.yaml, as --set (the run already takes the benchmark preset as its config)
    "asmil-localise": ("asmil", ["--set", "model_kwargs.token_norm=false", "--set", "anchor.reduction=mean"]),
    "asmil-q1-anchor-mean": ("asmil", ["--set", "model_kwargs.query_std=1.0", "--set", "anchor.reduction=mean"]),
    "transmil": ("transmil", []),
    "transmil+anchor+dropping": ("transmil", ["--set", "anchor=ema", "--set", "drop=instance"]),
    "clam_sb": ("clam_sb", []),
    "clam_sb+anchor+dropping": ("clam_sb", ["--set", "anchor=ema", "--set", "drop=instance"]),
    "dsmil": ("dsmil", []),
    "dsmil+anchor+dropping": ("dsmil", ["--set", "anchor=ema", "--set", "drop=instance"]),
}
DEFAULT = ["meanpool", "abmil", "acmil", "asmil", "asmil-localise", "abmil+anchor", "abmil+dropping",
           "abmil+anchor+dropping"]  # fmt: skip
COLUMNS = [
    ("accuracy", "accuracy"),
    ("auc", "AUC"),
    ("f1_macro", "macro-F1"),
    ("loc_auc", "loc. AUC"),
    ("loc_precision", "top-k prec."),
    ("loc_mass", "attn. on keys"),
    ("js", "JS / epoch"),
    ("entropy", "entropy"),
]


def cli(*args: object) -> list[str]:
    return [str(Path(sys.executable).parent / "wsi-pipeline"), *map(str, args)]


def run_seed(
    out: Path, seed: int, variants: list[str], bag_args: list[str], common: list[str]
) -> dict[str, dict[str, float]]:
    data = out / f"bags-seed{seed}"
    subprocess.run(cli("digit-bags", "--out", data, "--seed", seed, *bag_args), check=True, capture_output=True)
    results = {}
    for name in variants:
        model, extra = VARIANTS[name]
        runs = out / f"runs-seed{seed}" / name
        summary = next(runs.glob("*/summary.json"), None)
        if summary is None:
            shutil.rmtree(runs, ignore_errors=True)
            start = time.perf_counter()
            command = cli("train", data / "stores", "-l", data / "labels.csv", "-o", runs, "-m", model,
                          "-c", PRESET, "--seed", seed, *common, *extra)  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name}, seed {seed} failed:\n{done.stderr[-2000:]}")
            (runs / "seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
            summary = next(runs.glob("*/summary.json"))
        results[name] = read_run(summary.parent)
        print(f"seed {seed} {name}: {results[name]}", file=sys.stderr, flush=True)
    return results


def read_run(run: Path) -> dict[str, float]:
    """Test metrics (mean over folds), JS divergence and entropy on validation (mean over folds and epochs)."""
    summary = json.loads((run / "summary.json").read_text())
    row = {key: summary["test_mean_std"].get(key, {}).get("mean", math.nan) for key, _ in COLUMNS[:6]}
    js, entropy = [], []
    for fold in sorted(run.glob("fold_*/metrics.json")):
        history = json.loads(fold.read_text())["history"]
        js.append(np.nanmean([r["attn_js"] for r in history]))
        entropy.append(history[-1]["attn_entropy_norm"])
    row["js"], row["entropy"] = float(np.mean(js)), float(np.mean(entropy))
    seconds = run.parent / "seconds.txt"
    row["seconds"] = float(seconds.read_text()) if seconds.is_file() else math.nan
    return row


def table(per_seed: list[dict[str, dict[str, float]]], variants: list[str]) -> str:
    lines = [
        "| variant | " + " | ".join(title for _, title in COLUMNS) + " | time / seed |",
        "| --- " * (len(COLUMNS) + 2) + "|",
    ]
    for name in variants:
        cells = []
        for key, _ in COLUMNS:
            values = np.array([seed[name][key] for seed in per_seed], dtype=float)
            digits = ".1e" if key == "js" else ".3f"
            mean = format(np.nanmean(values), digits)
            cells.append(mean if len(values) == 1 else f"{mean} ± {format(np.nanstd(values), digits)}")
        minutes = np.nanmean([seed[name]["seconds"] for seed in per_seed]) / 60
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {minutes:.1f} min |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=DEFAULT, choices=sorted(VARIANTS))
    parser.add_argument("--bags", default="200")
    parser.add_argument("--bag-size", default="400-800")
    parser.add_argument("--prevalence", default="0.01")
    parser.add_argument("--target", default="0")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a train setting for every run, e.g. --set epochs=20 --set folds=3")  # fmt: skip
    args = parser.parse_args()
    common = [arg for item in args.set for arg in ("--set", item)]
    bag_args = ["--bags", args.bags, "--bag-size", args.bag_size, "--prevalence", args.prevalence,
                "--target", args.target]  # fmt: skip
    per_seed = [run_seed(args.out, seed, args.variants, bag_args, common) for seed in args.seeds]
    seeds = ", ".join(map(str, args.seeds))
    print(f"digit bags: {args.bags} bags of {args.bag_size}, prevalence {args.prevalence}, target digit {args.target};")
    settings = f" (settings: {', '.join(args.set)})" if args.set else ""
    print(f"seeds {seeds}; test metrics of the CV folds, mean ± std over the seeds{settings}")
    print(table(per_seed, args.variants))


if __name__ == "__main__":
    main()
