"""The code passes the linter and the formatter (ruff, pinned in requirements/lock-dev.txt; settings in
pyproject.toml), so CI — which runs the README's test command — fails on a lint finding."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["src", "tests", "bench", "scripts"]


def _ruff() -> list[str]:
    try:
        import ruff  # noqa: F401  (the pip package ships the binary; find_ruff_bin locates it)
        from ruff.__main__ import find_ruff_bin

        return [find_ruff_bin()]
    except ImportError:
        exe = shutil.which("ruff")
        if exe is None:
            pytest.skip("ruff is not installed — install the dev tools: bash scripts/install.sh --dev")
        return [exe]


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(args):
    out = subprocess.run([*_ruff(), *args, "--no-cache", *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (
        f"`ruff {' '.join(args)}` found problems (fix with `ruff check --fix` / `ruff format`):\n"
        f"{out.stdout[-4000:]}{out.stderr[-2000:]}"
    )
