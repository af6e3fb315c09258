"""Batch jobs on Ray (``--ray``): the embedded model on the session's local Ray (2 CPUs, ``ray_local``).

* ``eval generate`` with 2 workers gives the single-process images bit for bit and the same JSON table;
  a rerun skips verified rows and remakes a corrupt one;
* a worker process killed mid-run: every row still made exactly once (the workers' journal counts the
  rows each one made), no temp file left;
* a killed driver: the rerun makes only the rows that were not finished;
* ``generate --prompts-file`` and ``stage1 --count`` give the single-process results;
* without Ray, ``--ray`` says how to install it; an unreachable address fails fast.

Ray's start-up cost for the session is printed (``pytest -s``) and recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image

from helpers import CAPTIONS, run_cli

pytestmark = pytest.mark.xdist_group("ray")  # one xdist worker owns the session's local Ray (conftest.py)

ROWS = 16
KILL_ROWS = 10  # the fault tests: fewer rows, more steps (time to kill something mid-run)
STEPS = "3"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def _bestshot(args, env, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "bestshot.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from bestshot.evaluate.manifest import build_folder_manifest

    root = tmp_path_factory.mktemp("ray_manifest")
    real = root / "real"
    real.mkdir()
    rng = np.random.default_rng(0)
    for i in range(ROWS):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(real / f"im{i:02d}.png")
        (real / f"im{i:02d}.txt").write_text(f"{CAPTIONS[i % len(CAPTIONS)]}, picture {i}")
    return build_folder_manifest(real, root / "m.csv")


@pytest.fixture(scope="module")
def single(manifest, tmp_path_factory):
    """The single-process run every --ray run is compared with (this process: one torch thread, as each
    1-CPU Ray worker)."""
    from bestshot.cli import main

    out = tmp_path_factory.mktemp("single") / "out"
    old = sys.argv
    sys.argv = ["bestshot", "eval", "generate", str(manifest), "--out", str(out), "--steps", STEPS]
    try:
        with pytest.raises(SystemExit) as e:
            main()
        assert e.value.code in (0, None)
    finally:
        sys.argv = old
    return out


def _table(folder):
    from bestshot.evaluate.batch import read_outputs

    return [{k: v for k, v in r.items() if k not in ("seconds", "path")} for r in read_outputs(folder)]


def _pixels(folder, i):
    with Image.open(Path(folder) / f"{i:06d}.png") as im:
        return np.asarray(im)


def _journal(folder):
    rows = []
    for f in sorted((Path(folder) / "ray_journal").glob("*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


def _no_temp(folder):
    return not [p.name for p in Path(folder).rglob("*") if p.name.endswith(".tmp")]


def test_ray_startup_cost(ray_local):
    print(f"\nRay start-up (one local Ray, 2 CPUs, once per test session): {ray_local.startup_s:.1f} s")
    assert ray_local.ray.is_initialized() and ray_local.ray.cluster_resources().get("CPU") == 2


def test_eval_generate_on_two_workers_matches_single_process(
    ray_local, manifest, single, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "ray"
    code, stdout, err = run_cli(
        ["eval", "generate", str(manifest), "--out", str(out), "--steps", STEPS, "--ray", "--ray-workers", "2"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert f"{ROWS} generated, 0 already done" in stdout
    assert "Ray workers" in stdout and "rows/s" in stdout  # the per-worker summary
    for i in range(ROWS):
        assert np.array_equal(_pixels(out, i), _pixels(single, i)), f"row {i} differs"
    assert _table(out) == _table(single)  # same rows, fields, order and values (timings aside)
    made = _journal(out)
    assert sorted(r["key"] for r in made) == list(range(ROWS))
    assert len({r["worker"] for r in made}) == 2  # both workers made rows

    # a rerun verifies and skips every row; a truncated image is made again (and only it). The rerun names the
    # folder as a file:// URI: the pyarrow writer of s3:// and the like, on a local file system
    png = out / "000005.png"
    png.write_bytes(png.read_bytes()[:-100])
    code, stdout, err = run_cli(
        ["eval", "generate", str(manifest), "--out", f"file://{out}", "--steps", STEPS, "--ray"], capsys, monkeypatch
    )
    assert code == 0, err
    assert f"1 generated, {ROWS - 1} already done" in stdout
    assert np.array_equal(_pixels(out, 5), _pixels(single, 5))
    assert sorted(r["key"] for r in _journal(out)) == sorted(list(range(ROWS)) + [5])
    assert _no_temp(out)


def _wait(pred, timeout_s, what):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # 12-step rows to kill a worker mid-run (30-40 s); row skipping is tested fast by the rerun in
# test_eval_generate_on_two_workers_matches_single_process and by
# test_prompts_rerun_takes_rows_an_interrupted_ray_run_finished
def test_killed_worker_rows_retried_once(ray_local, manifest, tmp_path):
    out = tmp_path / "kill_worker"
    proc = _bestshot(
        [
            "eval",
            "generate",
            str(manifest),
            "--out",
            str(out),
            "--steps",
            "12",
            "--num",
            str(KILL_ROWS),
            "--ray",
            "--ray-workers",
            "2",
        ],
        _env(RAY_ADDRESS=ray_local.address),
    )
    try:
        _wait(lambda: len(_journal(out)) >= 2 or proc.poll() is not None, 180, "two rows")
        victim = _journal(out)[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        done_at_kill = len(_journal(out))
        stdout, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert done_at_kill < KILL_ROWS, "the worker was killed after the run had finished: nothing was tested"
    made = _journal(out)
    assert sorted(r["key"] for r in made) == list(range(KILL_ROWS))  # every row made exactly once
    assert not _alive(victim)
    for i in range(KILL_ROWS):
        assert (out / f"{i:06d}.png").is_file()
    assert _no_temp(out)


@pytest.mark.slow  # two driver processes of 12-step rows (30-40 s); fast cover as for the killed worker above
def test_killed_driver_resumes_without_redoing_rows(ray_local, manifest, tmp_path):
    out = tmp_path / "kill_driver"
    args = [
        "eval",
        "generate",
        str(manifest),
        "--out",
        str(out),
        "--steps",
        "12",
        "--num",
        str(KILL_ROWS),
        "--ray",
        "--ray-workers",
        "2",
    ]
    env = _env(RAY_ADDRESS=ray_local.address)
    proc = _bestshot(args, env)
    try:
        _wait(lambda: len(_journal(out)) >= 3 or proc.poll() is not None, 180, "three rows")
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    pids = {r["pid"] for r in _journal(out)}
    _wait(lambda: not any(_alive(p) for p in pids), 60, "the killed driver's workers to end")
    before = {r["key"] for r in _journal(out)}
    assert 3 <= len(before) < KILL_ROWS
    proc = _bestshot(args, env)
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"{KILL_ROWS - len(before)} generated, {len(before)} already done" in stdout
    made = _journal(out)
    assert sorted(r["key"] for r in made) == list(range(KILL_ROWS))  # finished rows were not made again
    from bestshot.evaluate.batch import row_done
    from bestshot.scale.output import Output

    assert all(row_done(Output(out), i, [42 + i]) for i in range(KILL_ROWS))
    assert _no_temp(out)


VOLATILE = ("run_id", "created", "timing_s", "img_path", "candidates")


def test_prompts_file_on_ray_matches_single_process(ray_local, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(CAPTIONS[:4]) + "\n")
    runs = {}
    for name, extra in (("single", []), ("ray", ["--ray", "--ray-workers", "1"])):
        res = tmp_path / f"{name}.jsonl"
        code, stdout, err = run_cli(
            [
                "generate",
                "--prompts-file",
                str(prompts),
                "--results",
                str(res),
                "-n",
                "2",
                "--steps",
                STEPS,
                "--out",
                str(tmp_path / name),
                "--log",
                str(tmp_path / f"{name}_log.jsonl"),
                *extra,
            ],
            capsys,
            monkeypatch,
        )
        assert code == 0, err
        runs[name] = [json.loads(line) for line in res.read_text().splitlines()]
    single, ray = runs["single"], runs["ray"]
    assert [r["line"] for r in ray] == [1, 2, 3, 4]
    assert [list(r) for r in ray] == [list(r) for r in single]  # same fields, same order

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]

    assert strip(ray) == strip(single)
    for a, b in zip(single, ray):
        assert [(c["seed"], c["clip"]) for c in a["candidates"]] == [(c["seed"], c["clip"]) for c in b["candidates"]]
        if a["img_path"]:
            assert np.array_equal(np.asarray(Image.open(a["img_path"])), np.asarray(Image.open(b["img_path"])))
    # a rerun skips every line
    code, stdout, err = run_cli(
        [
            "generate",
            "--prompts-file",
            str(prompts),
            "--results",
            str(tmp_path / "ray.jsonl"),
            "-n",
            "2",
            "--steps",
            STEPS,
            "--out",
            str(tmp_path / "ray"),
            "--ray",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0 and "skipped 4 prompt(s)" in err


def test_stage1_count_on_ray_matches_single_process(ray_local, tmp_path):
    from typer.testing import CliRunner

    from bestshot.cli import app
    from test_curate_workflow import write_config

    images = {}
    configs = {}
    for name, extra in (("single", []), ("ray", ["--ray", "local", "--ray-workers", "1"])):
        folder = tmp_path / name
        folder.mkdir()
        config = configs[name] = write_config(folder, "embedded")
        res = CliRunner().invoke(app, ["stage1", "--count", "3", "--config", str(config), *extra])
        assert res.exit_code == 0, res.output
        meta = [json.loads(p.read_text()) for p in sorted((folder / "outputs" / "metadata").glob("*.json"))]
        assert sorted(m["seed"] for m in meta) == [5, 6, 7]
        images[name] = {
            m["seed"]: np.asarray(Image.open(folder / "outputs" / m["stages"]["stage1"]["file"])) for m in meta
        }
    for seed in (5, 6, 7):
        assert np.array_equal(images["single"][seed], images["ray"][seed])
    # a rerun with the same settings (a driver killed before it said "done") keeps what the workers made:
    # one new image for --count 4, none made twice; the message names the folder that forces a fresh start
    folder = tmp_path / "ray"
    res = CliRunner().invoke(
        app, ["stage1", "--count", "4", "--config", str(configs["ray"]), "--ray", "local", "--ray-workers", "1"]
    )
    assert res.exit_code == 0, res.output
    assert "3 of the 4 image(s) were made by an earlier stage1 --ray run with the same settings" in res.output
    assert "delete" in res.output and "ray_journal" in res.output
    meta = [json.loads(p.read_text()) for p in sorted((folder / "outputs" / "metadata").glob("*.json"))]
    assert sorted(m["seed"] for m in meta) == [5, 6, 7, 8]


def test_without_ray_installed_the_flag_says_how_to_install(manifest, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, stdout, err = run_cli(
        ["eval", "generate", str(manifest), "--out", str(tmp_path / "o"), "--ray"], capsys, monkeypatch
    )
    assert code == 2
    assert "pip install 'bestshot[ray]'" in err and "Traceback" not in err


def test_ray_flags_need_ray(manifest, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(
        ["eval", "generate", str(manifest), "--out", str(tmp_path / "o"), "--ray-workers", "2"], capsys, monkeypatch
    )
    assert code == 2 and "only apply with --ray" in err


def test_bare_ray_flag_before_a_positional():
    from bestshot.scale.flags import normalise_ray_flag

    assert normalise_ray_flag(["--ray", "m.csv"]) == ["--ray", "local", "m.csv"]
    assert normalise_ray_flag(["--ray"]) == ["--ray", "local"]
    assert normalise_ray_flag(["--ray", "--ray-workers", "2"]) == ["--ray", "local", "--ray-workers", "2"]
    for address in ("auto", "10.0.0.5:6379", "ray://head:10001", "head-node:6379"):
        assert normalise_ray_flag(["--ray", address]) == ["--ray", address]


def test_every_ray_command_takes_a_bare_ray():
    """Each command with --ray [ADDRESS] parses a bare --ray as a local Ray (typer alone would refuse it)."""
    from bestshot import cli

    root = typer.main.get_command(cli.app)
    found = []

    def walk(cmd, path):
        if hasattr(cmd, "commands"):  # a group (typer may carry its own click: no isinstance)
            for name, sub in cmd.commands.items():
                walk(sub, path + [name])
        elif any("--ray" in p.opts for p in cmd.params):
            found.append(path)
            ctx = cmd.make_context(
                path[-1],
                ["--ray"] + (["x"] if any(p.param_type_name == "argument" and p.required for p in cmd.params) else []),
                resilient_parsing=True,
            )
            assert ctx.params["ray"] == "local", path

    walk(root, [])
    assert {"generate", "stage1"} <= {p[-1] for p in found} and ["eval", "metrics"] in found, found


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never says a word (what a proxy or a wrong port does)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    conns, stop = [], threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    for c in conns:
        c.close()
    srv.close()


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_unreachable_address_fails_fast(kind, manifest, tmp_path, request):
    port = _free_port() if kind == "refused" else request.getfixturevalue("silent_server")
    t = time.monotonic()
    proc = _bestshot(
        ["eval", "generate", str(manifest), "--out", str(tmp_path / "o"), "--ray", f"127.0.0.1:{port}"],
        _env(BESTSHOT_RAY_CONNECT_TIMEOUT_S="8"),
    )
    stdout, err = proc.communicate(timeout=120)
    took = time.monotonic() - t
    assert proc.returncode == 2, err
    assert f"127.0.0.1:{port}" in err and "Traceback" not in err
    assert ("cannot reach" if kind == "refused" else "no Ray cluster answered") in err
    # not a speed figure: without the 8 s bound Ray waits minutes; the margin covers start-up on a loaded machine
    assert took < 90, f"{took:.1f} s"


def test_prompts_rerun_takes_rows_an_interrupted_ray_run_finished(tmp_path, capsys, monkeypatch):
    """The driver of `generate --prompts-file --ray` died after its workers had finished rows it never logged:
    the rerun with the same settings takes them from the workers' done-markers (no Ray needed to check)
    instead of making them again, and says which folder to delete for a fresh start; a marker whose image is
    gone, or that was made under other settings, is dropped and its line made again."""
    import bestshot.scale.batch as batch

    digests = []
    real = batch.settings_digest
    monkeypatch.setattr(batch, "settings_digest", lambda cfg: digests.append(real(cfg)) or digests[-1])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n")
    results = tmp_path / "prompts.txt.results.jsonl"
    markers = tmp_path / "prompts.txt.results.jsonl.ray" / "done"
    markers.mkdir(parents=True)
    kept = tmp_path / "kept.png"
    Image.new("RGB", (8, 8)).save(kept)
    finished = {"line": 1, "prompt": "a red square", "ok": True, "img_path": str(kept), "run_id": "r1"}
    args = [
        "generate",
        "--prompts-file",
        str(prompts),
        "-n",
        "1",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "out"),
        "--log",
        str(tmp_path / "log.jsonl"),
    ]

    def marker(key, line, prompt, result, settings):
        (markers / f"{key}.json").write_text(
            json.dumps({"row": {"key": key, "line": line, "prompt": prompt, "settings": settings}, "result": result})
        )

    # a marker of a run with other settings (e.g. --steps 30): not taken, its line made now (line 2 is logged)
    marker(0, 1, "a red square", finished, "other-settings")
    results.write_text(json.dumps({**finished, "line": 2, "prompt": "a blue circle"}) + "\n")
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert "took" not in err and not (markers / "0.json").exists()
    made = json.loads(results.read_text().splitlines()[-1])
    assert made["line"] == 1 and made["run_id"] != "r1" and made["img_path"] != str(kept)
    settings = digests[-1]  # what these settings are named in a marker
    results.unlink()  # start again, as a user would

    # the same settings: line 1 taken, line 2 (its image gone) made again
    marker(0, 1, "a red square", finished, settings)
    gone = {"line": 2, "prompt": "a blue circle", "ok": True, "img_path": str(tmp_path / "gone.png")}
    marker(1, 2, "a blue circle", gone, settings)
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    err = err.replace("\n", "")  # rich wraps long lines
    assert "took 1 prompt(s) that an interrupted --ray run with the same settings had finished" in err
    assert f"(to make them again, delete {markers})" in err
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert rows[0] == finished
    assert rows[1]["line"] == 2 and rows[1]["run_id"] and Path(rows[1]["img_path"]).is_file()
    assert not (markers / "1.json").exists()


def test_settings_digest_and_marker_pruning(tmp_path):
    from bestshot.config import ImgCfg
    from bestshot.scale.batch import prune_markers, settings_digest

    assert (
        settings_digest(ImgCfg(steps_base=4))
        == settings_digest(ImgCfg(steps_base=4))
        != settings_digest(ImgCfg(steps_base=5))
    )
    rows = [{"key": k, "settings": "s1"} for k in range(3)]
    (tmp_path / "0.json").write_text(json.dumps({"row": rows[0], "result": {"file": "a", "ok": True}}))
    (tmp_path / "1.json").write_text(json.dumps({"row": {**rows[1], "settings": "s0"}, "result": {"file": "b"}}))
    (tmp_path / "2.json").write_text(json.dumps({"row": rows[2], "result": {"file": "gone"}}))
    assert prune_markers(tmp_path, rows, lambda r: r["file"] != "gone") == [{"file": "a", "ok": True}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.json"]


def test_worker_count_and_fractional_gpus_from_the_cluster():
    from bestshot.errors import BestshotError
    from bestshot.scale.batch import RayJobCfg

    gpu_box = {"CPU": 16.0, "GPU": 8.0}
    assert RayJobCfg().resolved(gpu_box, rows=1000).workers == 8  # one per GPU
    half = RayJobCfg(gpus_per_worker=0.5).resolved({"CPU": 16.0, "GPU": 1.0}, rows=1000)
    assert (half.workers, half.gpus_per_worker) == (2, 0.5)  # two workers share the GPU
    cpu = RayJobCfg(cpus_per_worker=2).resolved({"CPU": 8.0}, rows=1000)
    assert (cpu.workers, cpu.gpus_per_worker) == (4, 0.0)
    assert RayJobCfg().resolved(gpu_box, rows=3).workers == 3  # no idle workers for a short job
    with pytest.raises(BestshotError, match="has 1 GPU"):
        RayJobCfg(gpus_per_worker=2).resolved({"CPU": 4.0, "GPU": 1.0}, rows=10)
    with pytest.raises(BestshotError, match="whole number"):
        RayJobCfg(gpus_per_worker=1.5).validate()
    # more workers than fit: as many as fit, and a note that says so
    two_cpus = {"CPU": 2.0}
    asked = RayJobCfg(workers=4, cpus_per_worker=2)
    assert asked.resolved(two_cpus, rows=10).workers == 1
    assert asked.fit_note(two_cpus) == (
        "--ray-workers 4 with 2 CPU(s) each needs more than the Ray cluster's 2 "
        "CPU(s): running 1 worker(s) — lower --cpus-per-worker / --gpus-per-worker, "
        "or add nodes"
    )
    assert RayJobCfg(workers=2).fit_note(two_cpus) is None and RayJobCfg().fit_note(two_cpus) is None


def test_a_workers_bestshot_error_is_one_line(ray_local, tmp_path, capfd):
    """A row maker that cannot start (here: a model folder that does not exist; offline, the default SDXL
    config) raises a BestshotError in the worker's constructor: Ray reports an ActorDiedError with the whole
    traceback; the driver says the worker's own line, and first why fewer workers run than asked."""
    import functools
    import io

    from rich.console import Console

    from bestshot.config import ImgCfg
    from bestshot.errors import BestshotError
    from bestshot.generation import prompt_row_maker
    from bestshot.scale.batch import RayJobCfg, run_rows

    cfg = ImgCfg(model=str(tmp_path / "no-such-model"), out_dir=str(tmp_path / "o"), log_jsonl=str(tmp_path / "l"))
    console = io.StringIO()
    with pytest.raises(BestshotError) as e:
        run_rows(
            [{"key": 0, "line": 1, "prompt": "x"}],
            functools.partial(prompt_row_maker, cfg),
            RayJobCfg(workers=4, cpus_per_worker=2),
            progress=False,
            console=Console(file=console),
        )
    msg = str(e.value)
    assert "no-such-model' does not exist" in msg and "\n" not in msg and "Traceback" not in msg, msg
    assert "--ray-workers 4 with 2 CPU(s) each" in console.getvalue() and "running 1 worker(s)" in console.getvalue()
    assert "Full stack trace" not in capfd.readouterr().err  # Ray Data's own error log (the 300-line traceback)


@pytest.mark.slow  # a bench (its Ray Data pipeline: ~10 s); the row maker it times is what the --ray tests above run
def test_scaling_bench_runs(ray_local, tmp_path, monkeypatch, capsys):
    """bench/ray_scaling.py keeps working (2 rows, 1 worker, 1 step on the session's Ray)."""
    import runpy

    script = Path(__file__).resolve().parents[1] / "bench" / "ray_scaling.py"
    monkeypatch.setattr(
        sys,
        "argv",
        ["ray_scaling.py", "--rows", "2", "--workers", "1", "--steps", "1", "--json", str(tmp_path / "r.json")],
    )
    runpy.run_path(str(script), run_name="__main__")
    assert "| 1 | 2 |" in capsys.readouterr().out
    (run,) = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert run["rows"] == 2 and run["per_worker"][0]["rows"] == 2
