"""A screenshot of a report page in headless Chromium (the README's docs/img/report_slide.png).

    python examples/report_screenshot.py example/pred/report/slides/SLIDE.html docs/img/report_slide.png

Needs playwright (the dev extra) and Debian's chromium (`apt-get install chromium`; another binary: --chromium).
The page is opened from file:// as a user would, and shot once its tiles and attention overlay are drawn.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
READY = "!!(window.report && report.ready && report.viewer.world.getItemAt(0).getFullyLoaded())"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="a report page (report/index.html or report/slides/<id>.html)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--size", default="1400x860", help="window WIDTHxHEIGHT")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    if not args.page.is_file():
        print(f"error: {args.page}: no such page; run `wsi-pipeline predict` first", file=sys.stderr)
        return 1
    width, height = (int(v) for v in args.size.split("x"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(args.page.resolve().as_uri())
        if page.evaluate("!!document.getElementById('slide-data')"):
            deadline = time.monotonic() + 60
            while not page.evaluate(READY):  # polled: the page's CSP forbids wait_for_function's eval
                if time.monotonic() > deadline:
                    print("error: the viewer did not finish loading in 60 s", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            page.wait_for_timeout(300)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
