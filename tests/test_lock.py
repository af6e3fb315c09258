"""requirements/lock*.txt must agree with pyproject.toml (scripts/lock_check.py; scripts/update-lock.sh fixes it)."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("lock_check", ROOT / "scripts" / "lock_check.py")
lock_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock_check)


@pytest.fixture
def copy(tmp_path):
    """pyproject.toml and requirements/ in a scratch folder, to plant disagreements in."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def test_locks_agree_with_pyproject():
    assert lock_check.problems(ROOT) == []


def test_the_copy_agrees_too(copy):
    assert lock_check.problems(copy) == []


def test_every_direct_dependency_is_pinned_exactly():
    pins = lock_check.read_lock(ROOT / "requirements" / "lock-dev.txt")
    assert {"torch", "diffusers", "pytest", "schemathesis", "import-linter"} <= set(pins)
    assert [str(r.specifier) for r in pins["torch"]] == ["==2.13.0"]
    assert all(str(r.specifier).startswith("==") for lines in pins.values() for r in lines)


def test_cpu_locks_download_no_cuda():
    for name in ("lock.txt", "lock-dev.txt"):
        pins = lock_check.read_lock(ROOT / "requirements" / name)
        assert not [p for p in pins if re.match(r"nvidia-|cuda-|triton$", p)], name


def test_a_changed_dependency_without_a_new_lock_fails(copy):
    # a specifier the locked version still satisfies: only the fingerprint notices
    _edit(copy / "pyproject.toml", '"diffusers>=0.35"', '"diffusers>=0.34"')
    found = lock_check.problems(copy)
    assert found and all("inputs-sha256 differs" in line for line in found)
    assert len(found) == len(lock_check.locks(copy))  # every lock is stale


def test_a_specifier_the_lock_refuses_fails(copy):
    _edit(copy / "pyproject.toml", '"diffusers>=0.35"', '"diffusers>=99"')
    assert any(
        "diffusers==" in line and "does not satisfy" in line and line.startswith("requirements/lock.txt")
        for line in lock_check.problems(copy)
    )


def test_a_new_dependency_missing_from_the_lock_fails(copy):
    _edit(copy / "pyproject.toml", '"pyyaml>=6",', '"pyyaml>=6", "leftpad>=1",')
    found = lock_check.problems(copy)
    assert any(line.startswith("requirements/lock.txt: leftpad") and "not locked" in line for line in found)
    assert any(line.startswith("requirements/lock-dev.txt: leftpad") for line in found)


def test_a_hand_edited_pin_fails(copy):
    lock = copy / "requirements" / "lock-dev.txt"
    version = re.search(r"^pytest==(\S+)$", lock.read_text(), re.M).group(1)
    _edit(lock, f"pytest=={version}\n", "pytest==9.2.0\n")
    found = lock_check.problems(copy)
    assert "requirements/lock-dev.txt: pytest==9.2.0 does not satisfy pyproject's pytest<9.2,>=8" in found


def test_runtime_and_dev_locks_must_pin_alike(copy):
    lock = copy / "requirements" / "lock.txt"
    version = re.search(r"^pyyaml==(\S+)$", lock.read_text(), re.M).group(1)
    _edit(lock, f"pyyaml=={version}\n", "pyyaml==6.0\n")
    assert "requirements/lock.txt and lock-dev.txt pin pyyaml differently" in lock_check.problems(copy)


def test_a_cuda_package_in_a_cpu_lock_fails(copy):
    _edit(copy / "requirements" / "lock.txt", "\naccelerate==", "\nnvidia-cublas==13.1.1.3\naccelerate==")
    assert any("nvidia-cublas is CUDA-only" in line for line in lock_check.problems(copy))


def test_a_changed_input_file_fails(copy):
    _edit(copy / "requirements" / "constraints.in", "torch==2.13.0", "torch==2.12.0")
    assert any("inputs-sha256 differs" in line for line in lock_check.problems(copy))
    # comments do not count
    (copy / "requirements" / "constraints.in").write_text(
        (ROOT / "requirements" / "constraints.in").read_text() + "# a note\n"
    )
    assert lock_check.problems(copy) == []
