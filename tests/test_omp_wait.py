"""OpenMP threads sleep instead of spinning on a busy machine; the CLI decides before torch is loaded."""

import os
import subprocess
import sys

import pytest

from bestshot import _omp


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    return monkeypatch


def test_passive_on_a_busy_machine(clean_env):
    clean_env.setattr(os, "getloadavg", lambda: (9.5, 8.0, 7.0))
    assert _omp.apply() is True and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_nothing_changes_on_a_quiet_machine(clean_env):
    clean_env.setattr(os, "getloadavg", lambda: (1.2, 1.0, 0.5))
    assert _omp.apply() is False and "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.parametrize("var,value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "100000")])
def test_the_users_choice_is_kept(clean_env, var, value):
    clean_env.setattr(os, "getloadavg", lambda: (30.0, 30.0, 30.0))
    clean_env.setenv(var, value)
    assert _omp.apply() is False and os.environ[var] == value
    assert var == "OMP_WAIT_POLICY" or "OMP_WAIT_POLICY" not in os.environ


def test_no_load_average_means_quiet(clean_env):
    def unavailable():
        raise OSError("no load average here")

    clean_env.setattr(os, "getloadavg", unavailable)
    assert _omp.apply() is False and "OMP_WAIT_POLICY" not in os.environ


def test_cli_sets_it_before_torch_is_imported():
    """As the `bestshot generate` command, importing the CLI loads no torch (libgomp reads the variable when
    torch loads it), and on a busy machine the variable is set by then."""
    code = (
        "import os, sys; os.getloadavg = lambda: (99.0, 99.0, 99.0); sys.argv[:] = ['bestshot', 'generate']; "
        "import bestshot.cli; print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "PASSIVE"]
