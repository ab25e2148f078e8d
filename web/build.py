"""Build the report's front-end assets into the Python package (stdlib only; run by setup.py, `make install`, CI).

`npm ci` installs the versions pinned in web/package-lock.json, then OpenSeadragon's built files (the minified
script, its licence and its button images) are copied to wsi_pipeline/report/static/openseadragon/ with a VERSION
file. Nothing is fetched when that folder already holds the locked version. The page loads these copies with
relative links, never from a CDN.

    python web/build.py                # build when missing or out of date (fails without npm)
    python web/build.py --force        # rebuild
    python web/build.py --if-possible  # without npm: a warning, and the report is left out until it is built
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
TARGET = ROOT / "wsi_pipeline" / "report" / "static" / "openseadragon"
FILES = ("openseadragon.min.js",)


def locked_version() -> str:
    lock = json.loads((WEB / "package-lock.json").read_text())
    return lock["packages"]["node_modules/openseadragon"]["version"]


def is_built() -> bool:
    version = TARGET / "VERSION"
    return version.is_file() and version.read_text().strip() == locked_version() and (TARGET / FILES[0]).is_file()


def build(force: bool = False, required: bool = True) -> Path | None:
    if is_built() and not force:
        return TARGET
    npm = shutil.which("npm")
    if npm is None:
        message = (
            "web/build.py: npm not found; install Node.js (e.g. `apt-get install nodejs npm`) and rerun "
            "`python web/build.py` to build the report's viewer (OpenSeadragon)"
        )
        if required:
            raise SystemExit(message)
        print(f"warning: {message}; until then `predict` writes no report", file=sys.stderr)
        return None
    subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=WEB, check=True)
    source = WEB / "node_modules" / "openseadragon"
    built = source / "build" / "openseadragon"
    tmp = TARGET.with_name(f".{TARGET.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in FILES:
        shutil.copy2(built / name, tmp / name)
    shutil.copytree(built / "images", tmp / "images")
    shutil.copy2(source / "LICENSE.txt", tmp / "LICENSE.txt")
    (tmp / "VERSION").write_text(locked_version() + "\n")
    shutil.rmtree(TARGET, ignore_errors=True)
    os.replace(tmp, TARGET)
    print(f"web/build.py: OpenSeadragon {locked_version()} -> {TARGET.relative_to(ROOT)}", file=sys.stderr)
    return TARGET


if __name__ == "__main__":
    build(force="--force" in sys.argv[1:], required="--if-possible" not in sys.argv[1:])
