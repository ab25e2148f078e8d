"""Benchmark of ``predict`` straight from a raw slide: wall, user and system CPU, minor page faults, peak RSS.

Set-up (once, into ``--workdir``): a generated ``--size`` pyramidal JPEG slide at 0.25 um/px with real H&E pixels
(``tests/slide_factory.py``), and a training run made the way a user makes one: ten copies of the real
CMU-1-Small-Region.svs tiled and embedded with ``--encoder`` (EfficientNet-Lite0 with its real weights when
``../shared/data`` has them, else a random init), then ASMIL trained with ``--folds`` folds for one epoch.

Measured (``/usr/bin/time -v``, the whole process, ``--repeat`` times, median): ``wsi-pipeline predict RUN
slide.svs`` (tile, embed on the CPU, every fold, heatmap), with ``--mode`` variants run side by side. The targets of
issue 21: system time < 20% of user time, peak RSS < 1 GB. Peak RSS is the kernel's (``time``: the largest process);
the predict process's RSS is also sampled every 20 ms from ``/proc/PID/status`` and split into anonymous memory
(``RssAnon``: what the process allocated) and file-backed pages (``RssFile``: shared libraries and mapped files,
shared with the page cache; ``RssShmem``, the readers' batches, is left out): the peak of each and the split at
the sampled peak of the sum. ``--perf`` also records where the page faults happen (``perf record -e page-faults
-g``) and prints the top call sites.

    python benchmarks/bench_predict.py --workdir /tmp/bench-predict
    python benchmarks/bench_predict.py --workdir /tmp/bench-predict --size 20000x15000 --repeat 1 --perf
    python benchmarks/bench_predict.py --workdir /tmp/bench-predict --skip-before --repeat 3
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIME = Path("/usr/bin/time")
DATA = ROOT.parent / "shared" / "data"
LITE0 = DATA / "weights" / "efficientnet-lite0-57934424.pth"
CMU = DATA / "slides" / "CMU-1-Small-Region.svs"

FIELDS = {
    "wall": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (.+)",
    "user": r"User time \(seconds\): ([\d.]+)",
    "sys": r"System time \(seconds\): ([\d.]+)",
    "rss_kb": r"Maximum resident set size \(kbytes\): (\d+)",
    "minor": r"Minor \(reclaiming a frame\) page faults: (\d+)",
}
SAMPLED = ("anon_peak", "file_peak", "anon_at_peak", "file_at_peak")


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "wsi_pipeline", *map(str, args)]


def check(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")


def setup(work: Path, size: tuple[int, int], encoder: str, folds: int) -> tuple[Path, Path]:
    """The generated slide and the training run (made once; reused when ``work`` has them)."""
    sys.path.insert(0, str(ROOT))
    from tests.slide_factory import make_pyramid_slide

    work.mkdir(parents=True, exist_ok=True)
    slide = work / f"slide_{size[0]}x{size[1]}.svs"
    if not slide.exists():
        start = time.perf_counter()
        make_pyramid_slide(slide, width=size[0], height=size[1], mpp=0.25, tile=256, jpeg=True)
        print(f"generated {slide.name} in {time.perf_counter() - start:.0f} s", flush=True)
    run = work / "runs" / f"asmil_{encoder}_cv{folds}_seed0"
    if not run.exists():
        slides = work / "train_slides"
        slides.mkdir(exist_ok=True)
        names = [f"s{i}" for i in range(max(4, 2 * folds))]  # k-fold CV needs k slides per class
        for name in names:
            shutil.copyfile(CMU, slides / f"{name}.svs")
        check(cli("tile", slides, "-o", work / "stores", "--set", "qc.enabled=false"), work)
        weights = ["-w", str(LITE0)] if encoder == "efficientnet_lite0" and LITE0.exists() else []
        check(cli("embed", work / "stores", "-e", encoder, *weights, "--device", "cpu"), work)
        rows = [f"{name},{'xy'[i % 2]}" for i, name in enumerate(names)]
        (work / "labels.csv").write_text("slide_id,label\n" + "\n".join(rows) + "\n")
        train = ["train", work / "stores", "-l", work / "labels.csv", "-o", work / "runs", "-k", str(folds)]
        check(cli(*train, "--epochs", "1", "--set", "val_fraction=0", "--set", "plots=false", "--device", "cpu"), work)
    return slide, run


def _status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and RssShmem of ``pid`` in KiB ({} once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            lines = [line.split(":", 1) for line in handle]
    except OSError:
        return {}
    keys = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
    return {key: int(value.split()[0]) for key, value in lines if key in keys}


def _child(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            kids = handle.read().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def _sample_rss(timer: subprocess.Popen[str], peaks: dict[str, float]) -> None:
    """Sample the RSS of ``timer``'s child (the predict process) every 20 ms until it ends; ``peaks`` gets the peak
    of RssAnon and of RssFile, and both at the sampled peak of their sum (MiB)."""
    pid = None
    while pid is None and timer.poll() is None:
        pid = _child(timer.pid)
        time.sleep(0.005)
    best = 0
    while pid is not None and timer.poll() is None:
        status = _status(pid)
        if not status:
            break
        anon, file = status.get("RssAnon", 0), status.get("RssFile", 0)
        peaks["anon_peak"] = max(peaks.get("anon_peak", 0), anon / 1024)
        peaks["file_peak"] = max(peaks.get("file_peak", 0), file / 1024)
        if anon + file > best:
            best = anon + file
            peaks["anon_at_peak"], peaks["file_at_peak"] = anon / 1024, file / 1024
        time.sleep(0.02)


def measure(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    timer = subprocess.Popen(
        [str(TIME), "-v", *cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peaks: dict[str, float] = {}
    sampler = threading.Thread(target=_sample_rss, args=(timer, peaks), daemon=True)
    sampler.start()
    _, stderr = timer.communicate()
    sampler.join()
    if timer.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    out: dict[str, float] = dict.fromkeys(SAMPLED, 0.0) | peaks
    for key, pattern in FIELDS.items():
        value = re.search(pattern, stderr).group(1)  # type: ignore[union-attr]
        if key == "wall":
            parts = [float(p) for p in value.split(":")]
            out[key] = sum(p * 60**i for i, p in enumerate(reversed(parts)))
        else:
            out[key] = float(value)
    return out


def perf_profile(cmd: list[str], env: dict[str, str], cwd: Path, work: Path) -> None:
    """Where the minor page faults come from: the top call sites (shared object and symbol) by fault count."""
    data = work / "perf.data"
    subprocess.run(["perf", "record", "-q", "-e", "page-faults", "-g", "-o", str(data), "--", *cmd], cwd=cwd, env=env,
                   capture_output=True, check=True)  # fmt: skip
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--stdio", "--sort", "dso,sym", "-g", "none"],
        capture_output=True,
        text=True,
    ).stdout
    lines = [line for line in report.splitlines() if line.strip() and not line.startswith("#")]
    print("page faults by call site (perf record -e page-faults):")
    print("\n".join(lines[:25]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "wsi-pipeline-bench-predict",
        help="keeps the slide and the run between runs",
    )
    parser.add_argument("--size", default="40000x30000")
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--mode",
        action="append",
        default=None,
        help="NAME=ENV1=V1,ENV2=V2: a variant run with extra environment variables (repeatable)",
    )
    parser.add_argument("--perf", action="store_true", help="also profile the page faults of the default run")
    parser.add_argument("--skip-before", action="store_true", help="leave out the 'whole batches' variant")
    args = parser.parse_args()
    if not TIME.exists():
        sys.exit(f"{TIME} not found: install GNU time")
    size = tuple(int(v) for v in args.size.lower().split("x"))
    slide, run = setup(args.workdir, size, args.encoder, args.folds)  # type: ignore[arg-type]
    # "whole batches": the encoder on whole 64-tile batches with glibc's malloc defaults, as before issue 21.
    modes: dict[str, dict[str, str]] = {"default": {}, "whole batches": {"WSI_PIPELINE_CPU_CHUNK": "0"}}
    if args.skip_before:
        del modes["whole batches"]
    for spec in args.mode or []:
        name, _, assignments = spec.partition("=")
        modes[name] = dict(a.split("=", 1) for a in assignments.split(",") if a)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
    for i in range(args.repeat):
        for name, extra in modes.items():
            out = args.workdir / f"pred-{name}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            env = {**os.environ, **extra}
            cmd = cli("predict", run, slide, "-o", out, "--device", "cpu", "--overwrite")
            results[name].append(measure(cmd, env, args.workdir))
    load = os.getloadavg()
    print(f"predict {slide.name} with {run.name}, whole process, median of {args.repeat}")
    print(f"load average after the runs: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (1, 5, 15 min)")
    print(
        "| variant | wall s | user s | sys s | sys / user | minor faults (M) | peak RSS MiB | sampled peak: anon "
        "MiB / file MiB | at the peak of their sum: anon / file |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        m = {k: statistics.median(r[k] for r in runs) for k in (*FIELDS, *SAMPLED)}
        print(
            f"| {name} | {m['wall']:.1f} | {m['user']:.1f} | {m['sys']:.1f} | {m['sys'] / m['user']:.2f} | "
            f"{m['minor'] / 1e6:.2f} | {m['rss_kb'] / 1024:.0f} | {m['anon_peak']:.0f} / {m['file_peak']:.0f} | "
            f"{m['anon_at_peak']:.0f} / {m['file_at_peak']:.0f} |"
        )
    if args.perf:
        out = args.workdir / "pred-perf"
        shutil.rmtree(out, ignore_errors=True)
        perf_profile(cli("predict", run, slide, "-o", out, "--device", "cpu"), dict(os.environ), args.workdir,
                     args.workdir)  # fmt: skip


if __name__ == "__main__":
    main()
