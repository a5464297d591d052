"""Read a data file's text, first recognising files that only look like data by their name."""

from __future__ import annotations

import re
from pathlib import Path

from ftsafe_ray.errors import DataError

# A Git LFS pointer is a small text file checked out in place of the real data when `git lfs`
# is not installed or the objects were never pulled; its first line is fixed by the LFS spec
# (pre-1.0 clients wrote the "hawser" URL).
_LFS_POINTER = re.compile(rb"version https://(git-lfs\.github\.com|hawser\.github\.com)/spec/v1")
# A download that hit a login wall, a redirect or a repository's "blob" view saves an HTML page
# under the name the user asked for.
_HTML_PAGE = re.compile(rb"<!doctype\s+html|<html[\s>]", re.IGNORECASE)
_UTF8_BOM = b"\xef\xbb\xbf"
# Enough to see past leading whitespace; both markers sit at the very start of the file.
_SNIFF_BYTES = 1024


def read_data_text(path: Path, source: str) -> str:
    """Return a data file's UTF-8 text (BOM dropped, newlines normalised to "\\n").

    Raises DataError when the file is a Git LFS pointer or an HTML page, when it is not UTF-8
    and when it cannot be read.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{source}: cannot read file ({exc.strerror}); check permissions") from exc
    check_not_a_stand_in(raw[:_SNIFF_BYTES], source)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not UTF-8 text (byte {exc.start}); re-save as UTF-8") from exc
    # The same universal-newline translation Path.read_text does, so CSV and JSONL line
    # numbers count physical lines whatever the file's line endings.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def check_not_a_stand_in(head: bytes, source: str) -> None:
    """Raise DataError if the file's first bytes show a Git LFS pointer or an HTML page."""
    start = head.removeprefix(_UTF8_BOM).lstrip()
    if _LFS_POINTER.match(start):
        raise DataError(
            f"{source}: is a Git LFS pointer, not the data; run `git lfs pull` in its repository "
            "(or download the real file)"
        )
    if _HTML_PAGE.match(start):
        raise DataError(
            f"{source}: is an HTML page (a saved web page or a login/redirect page), not a "
            "CSV/JSON file; download the raw file"
        )
