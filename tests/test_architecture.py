"""The import layering of the package (.importlinter), checked with import-linter.

The contracts: cli/server above the jobs, the jobs above generation, generation above the building blocks
(scoring, upscale, prompts, models, world), those above the plain settings (config, store, yaml_io,
schedulers, errors); models never import train; the world imports none of train, models, scoring,
evaluate. A planted violation in a copy of the package must break them, so the check can fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
# runs lint-imports' click command in a fresh interpreter, so the package it analyses is the one on PYTHONPATH
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


@pytest.fixture(scope="module")
def importlinter_available():
    try:
        import importlinter  # noqa: F401
    except ImportError:
        pytest.fail(
            "import-linter is not installed, so the import contracts cannot be checked — install the dev "
            "dependencies: bash scripts/install.sh --dev (or pip install import-linter)"
        )


def lint(src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache", "--no-logo", str(CONFIG)],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_package_keeps_its_import_contracts(importlinter_available):
    r = lint(ROOT / "src")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


@pytest.mark.parametrize(
    "module, planted, broken",
    [
        # the runtime model reaching into training
        ("models/embedded_clip.py", "import bestshot.train.common", "Models never import train"),
        # the config <-> registry circle coming back
        ("config.py", "import bestshot.models.registry", "Layers"),
        # the world depending on a scorer
        (
            "world/vocabulary.py",
            "import bestshot.scoring.regions",
            "World imports no train, models, scoring, evaluate or job",
        ),
    ],
)
def test_a_planted_violation_breaks_a_contract(importlinter_available, tmp_path, module, planted, broken):
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "bestshot",
        src / "bestshot",
        ignore=shutil.ignore_patterns("__pycache__", "*.safetensors", "*.png", "*.bin"),
    )
    target = src / "bestshot" / module
    target.write_text(target.read_text() + f"\n{planted}  # planted by the test\n")
    r = lint(src)
    assert r.returncode != 0, r.stdout + r.stderr
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith(broken)), "")
    assert line.endswith("BROKEN") or "BROKEN (" in line, r.stdout
