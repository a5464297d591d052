"""docs/RELIABILITY.md says exactly what the suite's fault tests prove."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_reliability_doc_matches_the_fault_tests(tmp_path):
    generated = tmp_path / "RELIABILITY.md"
    subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         f"--reliability-doc={generated}", "tests"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    committed = (ROOT / "docs" / "RELIABILITY.md").read_text(encoding="utf-8")
    assert generated.read_text(encoding="utf-8") == committed, (
        "docs/RELIABILITY.md is out of date: run python -m pytest --collect-only -q "
        "--reliability-doc=docs/RELIABILITY.md"
    )
    assert committed.count("\n| ") >= 20
