"""The GPU benchmark keeps working on CPU (tiny configs), so CI notices when it breaks."""

import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_generate.py"


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_gpu_bench_runs_tiny_on_cpu(family, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu_generate.py", "--family", family, "--tiny", "--n", "2",
                                      "--workdir", str(tmp_path)])
    runpy.run_path(str(BENCH), run_name="__main__")
    out = capsys.readouterr().out
    assert "| bestshot generate |" in out and "ms/step" in out and "VAE decode" in out
