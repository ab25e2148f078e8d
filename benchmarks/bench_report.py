"""Benchmark of the report's slide pyramids (``write_pyramid``): this checkout against another, side by side.

Each (checkout, slide, cap) writes a whole pyramid in its own process, ``--repeat`` times, interleaved (so a change
of machine load hits them alike); the script prints the median CPU seconds of the write (``time.process_time``
around ``write_pyramid``, imports left out), the tiles' bytes and the ratio to the other checkout. Slides: a
generated 40000 x 30000 px JPEG pyramid at 0.25 um/px with real H&E pixels (``tests/slide_factory.py``, made once
into ``--workdir``), a 4096 x 3072 px lesion-cohort-sized one, and CMU-1-Small-Region.svs when ``../shared/data``
has it.

    python benchmarks/bench_report.py --workdir /tmp/bench-report --before ../old-checkout
    python benchmarks/bench_report.py --workdir /tmp/bench-report --caps 2048,4096,8192 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"

ONE_WRITE = """
import json, shutil, sys, time
from pathlib import Path
from wsi_pipeline.report._pyramid import write_pyramid
slide, out, cap = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
shutil.rmtree(out, ignore_errors=True)
start = time.process_time()
stamp = write_pyramid(slide, out / "files", out / "stamp.json", {}, max_size=cap)
cpu = time.process_time() - start
print(json.dumps({"cpu": cpu, "bytes": stamp["bytes"], "size": [stamp["width"], stamp["height"]]}))
"""


def write_once(checkout: Path, slide: Path, cap: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(  # not run from a checkout: `python -c` puts the working folder first on sys.path
        [sys.executable, "-c", ONE_WRITE, str(slide), str(out), str(cap)],
        env=env,
        cwd=out.parent,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"{checkout}: write_pyramid failed on {slide}:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def slides(workdir: Path) -> list[Path]:
    sys.path.insert(0, str(ROOT))
    from tests.slide_factory import make_pyramid_slide

    made = []
    for width, height in ((40000, 30000), (4096, 3072)):
        path = workdir / f"slide_{width}x{height}.svs"
        if not path.is_file():
            make_pyramid_slide(path, width=width, height=height, mpp=0.25, seed=0)
        made.append(path)
    return [*made, CMU] if CMU.is_file() else made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "wsi-pipeline-bench-report",
        help="keeps the generated slides between runs",
    )
    parser.add_argument("--before", type=Path, help="another checkout (its repository root) to compare with")
    parser.add_argument("--caps", default="2048,8192", help="report_max_size values, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    checkouts = {"this": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    caps = [int(c) for c in args.caps.split(",")]
    runs: dict[tuple[str, str, int], list[dict]] = {}
    for _ in range(args.repeat):
        for slide in slides(args.workdir):
            for cap in caps:
                for name, checkout in checkouts.items():
                    found = write_once(checkout, slide, cap, args.workdir / "out")
                    runs.setdefault((name, slide.name, cap), []).append(found)
    print(f"{'slide':34} {'cap':>5} {'written':>11} " + " ".join(f"{n + ' CPU s':>12} {'MB':>5}" for n in checkouts)
          + ("  this/before" if args.before else ""))  # fmt: skip
    for slide in slides(args.workdir):
        for cap in caps:
            cells, medians = [], {}
            for name in checkouts:
                found = runs[(name, slide.name, cap)]
                medians[name] = statistics.median(r["cpu"] for r in found)
                cells.append(f"{medians[name]:12.2f} {found[-1]['bytes'] / 1e6:5.2f}")
            size = "x".join(map(str, found[-1]["size"]))
            ratio = f"  {medians['this'] / medians['before']:.2f}" if args.before else ""
            print(f"{slide.name:34} {cap:5d} {size:>11} " + " ".join(cells) + ratio)


if __name__ == "__main__":
    main()
