"""Render an ftsafe HTML report in headless Chromium and save a full-page screenshot.

    python scripts/html_screenshot.py run/report/report.html shot.png [--width 1400]

A check by eye that the page reads in a real browser; CI does not need it (the test that calls
it is skipped without a browser). Chromium runs with networking off, so a page that tried to
load anything from outside would show it missing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 4000) -> Path:
    """Save a screenshot of `page` (a local file) `width` × `height` pixels to `out`."""
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        raise SystemExit(f"no headless browser found (looked for {', '.join(BROWSERS)})")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9",
                f"--window-size={width},{height}", f"--screenshot={out.resolve()}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=4000)
    args = parser.parse_args(argv)
    print(screenshot(args.page, args.out, args.width, args.height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
