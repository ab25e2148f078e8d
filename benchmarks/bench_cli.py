"""Benchmark of the CLI's start-up: ``--help`` and usage/config errors, whole process, side by side in one run.

Each command runs as its own process ``--repeat`` times, interleaved with the others (so a change of machine load
hits them alike); the script prints the median wall time and the median CPU time (user + system of the child,
from ``os.wait4``) and, from one more run under ``python -X importtime``, which heavy libraries the command
imported (torch, numpy, zarr, OpenCV, OpenSlide). Targets: ``--help`` <= 0.3 s CPU; a config error in train, embed
or predict reported in under 1 s, before any heavy import.

    python benchmarks/bench_cli.py
    python benchmarks/bench_cli.py --repeat 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "numpy", "zarr", "cv2", "openslide")


def run(argv: list[str], cwd: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and exit code of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def heavy_imports(argv: list[str], cwd: Path) -> list[str]:
    """The heavy top-level packages the command imports (``-X importtime`` lists every module imported)."""
    out = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=cwd, capture_output=True, text=True)
    names = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    return [name for name in HEAVY if name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (median reported)")
    args = parser.parse_args()
    py = sys.executable
    wsi = [py, "-m", "wsi_pipeline"]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "stores").mkdir()
        (cwd / "runs" / "x").mkdir(parents=True)
        (cwd / "labels.csv").write_text("slide_id,label\na,0\n")
        (cwd / "bad.yaml").write_text("train:\n  epochs: [oops\n")
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "wsi-pipeline --help": [*wsi, "--help"],
            "wsi-pipeline train --help": [*wsi, "train", "--help"],
            "usage error: train without --labels": [*wsi, "train", "stores", "-o", "runs"],
            "config error: train --set epochs=zero": [
                *wsi,
                "train",
                "stores",
                "-l",
                "labels.csv",
                "-o",
                "runs",
                "--set",
                "epochs=zero",
            ],  # fmt: skip
            "config error: train -c bad.yaml (YAML syntax)": [
                *wsi,
                "train",
                "stores",
                "-l",
                "labels.csv",
                "-o",
                "runs",
                "-c",
                "bad.yaml",
            ],  # fmt: skip
            "config error: embed --set batch_size=big": [*wsi, "embed", "stores", "--set", "batch_size=big"],
            "config error: predict --set top_k=many": [
                *wsi,
                "predict",
                "runs/x",
                "stores",
                "-o",
                "pred",
                "--set",
                "top_k=many",
            ],  # fmt: skip
            "config error: tile --set tile_size=huge": [*wsi, "tile", "stores", "-o", "out", "--set", "tile_size=huge"],
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        codes: dict[str, int] = {}
        for _ in range(args.repeat):
            for name, argv in commands.items():
                wall, cpu, codes[name] = run(argv, cwd)
                times[name].append((wall, cpu))
        heavy = {name: heavy_imports(argv, cwd) for name, argv in commands.items() if argv[1] != "-c"}
    try:
        load = f", load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    print(f"CLI start-up, whole process, median of {args.repeat} interleaved runs{load}")
    print("| command | exit | wall s | CPU s | heavy imports |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        imported = ", ".join(heavy.get(name, [])) or "none"
        print(f"| {name} | {codes[name]} | {wall:.2f} | {cpu:.2f} | {imported} |")


if __name__ == "__main__":
    main()
