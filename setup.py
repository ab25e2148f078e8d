"""Builds the report's viewer (OpenSeadragon from web/package-lock.json) into the package before its files are
collected, so a wheel, an sdist install and `pip install -e .` all ship it (everything else is in pyproject.toml)."""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithViewer(build_py):
    def run(self) -> None:
        build = Path(__file__).resolve().parent / "web" / "build.py"
        if build.is_file():  # absent in a wheel's own build tree only when the sdist left web/ out
            # without npm the package still installs (a warning says how to add the report's viewer later)
            runpy.run_path(str(build))["build"](required=False)
        super().run()


setup(cmdclass={"build_py": BuildWithViewer})
