"""A burst of 50 concurrent txt2img requests against --max-queue 8 on loopback (tiny SD 1.5, 1 step)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")

from bestshot.server import create_app  # noqa: E402
from bestshot.server.background import BackgroundServer  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "bench" / "server_load.py"


def _bench():
    spec = importlib.util.spec_from_file_location("server_load", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_burst_of_50_is_served_or_refused_never_lost(tiny_sd15, tiny_clip, tmp_path):
    out = tmp_path / "images_out"
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(out), max_queue=8)
    body = {"prompt": "a red circle", "steps": 1, "width": 32, "height": 32, "sampler_name": "Euler"}
    with BackgroundServer(app) as url:
        res = _bench().burst(url, 50, body, out)
        tally = res["tally"]
        assert set(tally) <= {200, 429}, res["problems"]
        assert sum(tally.values()) == 50 and tally.get(200, 0) >= 1 and tally.get(429, 0) >= 1
        assert res["problems"] == []  # every 200's images are on disk, every 429 has Retry-After
        assert len(res["files"]) == tally[200] == len(set(res["files"]))
        # nothing half-done: exactly one indexed run per served request, each with its image file
        runs = app.state.store.index.list(limit=1000)
        assert len(runs) == tally[200] and all(app.state.store.resolve_path(r["img_path"], r).is_file() for r in runs)
        assert len(app.state.jobs) == 0  # the queue drained


def test_bench_script_runs_tiny(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    try:
        rep = _bench().main(["--tiny", "--n", "6", "--max-queue", "2", "--workdir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # the script pins 1 thread for hand runs
    assert rep["burst"]["problems"] == [] and sum(rep["burst"]["tally"].values()) == 6
    assert "burst of 6" in capsys.readouterr().out


def test_soak_of_mixed_requests_has_no_server_error(tmp_path, capsys):
    """The soak (bench: 1,000 requests, RSS compared) at a small count: every kind of request answers, none 5xx."""
    import torch

    threads = torch.get_num_threads()
    try:
        rep = _bench().main(["--tiny", "--n", "0", "--soak", "20", "--workdir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    soak = rep["soak"]
    assert soak["server_errors"] == [] and sum(soak["tally"].values()) == 20
    assert soak["tally"].get(200, 0) >= 14 and soak["tally"].get(422, 0) == 4  # NaN and the long prompt, twice each
    assert "soak of 20" in capsys.readouterr().out
