"""The package, its CLI and its pipeline import without torch, vllm, transformers or peft."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "vllm", "transformers", "peft")


@pytest.mark.parametrize(
    "module",
    ["ftsafe_ray", "ftsafe_ray.cli", "ftsafe_ray.pipeline", "ftsafe_ray.plan", "ftsafe_ray.store"],
)
def test_import_loads_no_heavy_library(module):
    code = (
        f"import sys, {module}\n"
        f"loaded = [name for name in {HEAVY!r} if name in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"{module} imported {result.stdout.strip()}"


def test_cli_help_is_fast_and_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "ftsafe_ray.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in ("validate", "plan", "run", "report", "status"):
        assert command in result.stdout
