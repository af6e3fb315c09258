"""Issue 24: bad input fails cleanly (one line, exit != 0, nothing written), output is strict JSON,
paths in the log travel with it, and a normal run prints nothing that is not ours."""

import json
import math

import pytest

from bestshot.errors import BestshotError
from helpers import run_cli


def _one_error_line(code, out, err, needle):
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle in lines[0], err
    assert "Traceback" not in err + out


def _refuse(name):
    raise ValueError(f"not JSON: {name}")


def _strict(text):
    """Parse as jq / JavaScript do: NaN, Infinity and -Infinity are errors."""
    return json.loads(text, parse_constant=_refuse)


# ---------------------------------------------------------------------------------------------- NaN / inf


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["generate", "a red circle", "--guidance", "nan"], "--guidance"),
        (["generate", "a red circle", "--guidance", "inf"], "--guidance"),
        (["generate", "a red circle", "--clip-min", "-inf"], "--clip-min"),
        (["eval", "world", "--guidance", "nan"], "--guidance"),
        (["train", "ddpm", "--max-minutes", "nan"], "--max-minutes"),
        (["interrogate", "x.png", "--prior-weight", "inf"], "--prior-weight"),
    ],
)
def test_non_finite_flag_is_one_error_and_writes_nothing(argv, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(argv, capsys, monkeypatch)
    _one_error_line(code, out, err, flag)
    assert "finite" in err
    assert list(tmp_path.iterdir()) == []  # no log, no image folder


@pytest.mark.parametrize(
    "text, key",
    [("guidance: .nan\n", "guidance"), ("clip_min: -.inf\n", "clip_min"), ("refiner_split: .inf\n", "refiner_split")],
)
def test_non_finite_yaml_setting_is_one_error(text, key, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    code, out, err = run_cli(["generate", "a cat", "--config", str(cfg)], capsys, monkeypatch)
    _one_error_line(code, out, err, key)
    assert "finite" in err and not (tmp_path / "images_log.jsonl").exists()


def test_non_finite_fields_refused_by_every_config_loader(tmp_path):
    from bestshot.config import ImgCfg
    from bestshot.curate.config import from_dict as curate_from_dict
    from bestshot.interrogate.captioner import CaptionerConfig
    from bestshot.train.common import load_config
    from bestshot.train.ddpm import DDPMConfig

    with pytest.raises(BestshotError, match="guidance.*finite"):
        ImgCfg(guidance=float("nan")).validate()
    with pytest.raises(BestshotError, match="finite"):
        ImgCfg.from_dict({"prune_at": float("inf")})
    y = tmp_path / "t.yaml"
    y.write_text("lr: .nan\n")
    with pytest.raises(BestshotError, match="lr.*finite"):
        load_config(DDPMConfig, y)
    with pytest.raises(BestshotError, match="finite"):
        CaptionerConfig.from_dict({"weight_decay": float("inf")})
    with pytest.raises(BestshotError, match="finite"):
        curate_from_dict({"model": {"guidance": float("nan")}})


def test_json_writer_never_emits_nan():
    from bestshot import jsonio

    rec = {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -math.inf}, "e": 2.5}
    text = jsonio.dumps(rec)
    assert _strict(text) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 2.5}
    with pytest.raises(ValueError):
        _strict(json.dumps(rec))  # what plain json.dumps writes is not JSON


def test_computed_nan_score_still_writes_strict_json(tiny_sd15, tmp_path):
    """A scorer that returns NaN (a broken image): the log line, index and PNG chunk stay strict JSON."""
    from bestshot import generate
    from bestshot.store import RunIndex, read_png_info

    class NanScorer:
        name = "nan"

        def score(self, images, text):
            return [float("nan")] + [0.5] * (len(images) - 1)

        def truncate(self, text):
            return text, False

    log = tmp_path / "images_log.jsonl"
    r = generate(
        "a cat",
        model=tiny_sd15,
        scorer=NanScorer(),
        n_images=2,
        steps_base=1,
        height=64,
        width=64,
        clip_min=-1.0,
        save_candidates=True,
        out_dir=str(tmp_path / "images_out"),
        log_jsonl=str(log),
    )
    lines = log.read_text().splitlines()
    assert len(lines) == 1
    rec = _strict(lines[0])
    assert rec["candidates"][0]["clip"] is None
    for c in r["candidates"]:
        png = tmp_path / "images_out" / c["path"].rsplit("/", 1)[-1]
        from PIL import Image

        with Image.open(png) as im:
            _strict(im.info["bestshot"])
        assert read_png_info(png)["bestshot"] is not None
    idx = RunIndex(tmp_path / "images_out" / "index.sqlite")
    import sqlite3

    with sqlite3.connect(idx.path) as db:
        for (js,) in db.execute("SELECT record_json FROM runs"):
            _strict(js)


# ---------------------------------------------------------------------------------------------- input files


def _bad_file(kind, tmp_path):
    p = tmp_path / f"in_{kind}"
    if kind == "missing":
        return p, "does not exist"
    if kind == "folder":
        p.mkdir()
        return p, "is a folder"
    if kind == "not_a_dir":  # a path through a regular file: ENOTDIR, the unreadable case a root user also hits
        p.write_text("x")
        return p / "x.txt", "cannot read"
    if kind == "binary":
        p.write_bytes(b"a cat\x00\x01\x02 PNG")
        return p, "binary"
    if kind == "latin1":
        p.write_bytes("un caf\xe9 cr\xe8me\n".encode("latin-1"))
        return p, "not UTF-8"
    if kind == "empty":
        p.write_text(" \n\n")
        return p, "empty"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "folder", "not_a_dir", "binary", "latin1", "empty"])
@pytest.mark.parametrize("flag", ["--text-file", "--prompts-file", "--config"])
def test_bad_input_file_is_one_error(flag, kind, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, needle = _bad_file(kind, tmp_path)
    argv = ["generate", flag, str(path)] if flag != "--config" else ["generate", "a cat", "--config", str(path)]
    code, out, err = run_cli(argv, capsys, monkeypatch)
    _one_error_line(code, out, err, needle)
    assert str(path.name) in err
    assert not (tmp_path / "images_log.jsonl").exists()


def test_unreadable_file_permissions(tmp_path, capsys, monkeypatch):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    p = tmp_path / "prompts.txt"
    p.write_text("a cat\n")
    p.chmod(0)
    code, out, err = run_cli(["generate", "--prompts-file", str(p)], capsys, monkeypatch)
    _one_error_line(code, out, err, "cannot read")


def test_eval_world_objects_out_of_range(tmp_path, capsys, monkeypatch):
    import bestshot.evaluate.world_eval as we

    def no_model(*a, **k):
        raise AssertionError("the range must be checked before a model is loaded")

    monkeypatch.setattr(we, "load_pipeline", no_model)
    monkeypatch.chdir(tmp_path)
    for bad in ("9", "0,1", "1,4"):
        code, out, err = run_cli(["eval", "world", "--objects", bad, "--prompts", "2"], capsys, monkeypatch)
        _one_error_line(code, out, err, "--objects")
        assert "1-3" in err


# ---------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    from tiny_models import build_train_clip

    return build_train_clip(tmp_path_factory.mktemp("clip"))


def _ddpm_cfg(clip, out, **kw):
    from bestshot.train.ddpm import DDPMConfig

    base = dict(
        clip=str(clip),
        img_size=16,
        block_out_channels=(32, 32),
        attention_levels=(False, True),
        batch_size=4,
        steps=6,
        ckpt_every=100,
        out_dir=str(out),
        warmup_steps=1,
        lr=1e-3,
        log_every=100,
    )
    base.update(kw)
    return DDPMConfig(**base)


def test_ddpm_epochs_count_the_real_dataset(small_clip, tmp_path):
    """epochs: 2 on 8 images at batch 4 is 4 steps, not 2 × dataset_length / 4 = 500,000."""
    from PIL import Image

    from bestshot.train.ddpm import train

    data = tmp_path / "data"
    data.mkdir()
    for i in range(8):
        Image.new("RGB", (16, 16), (30 * i, 0, 0)).save(data / f"im{i}.png")
        (data / f"im{i}.txt").write_text(f"a red square number {i}")
    cfg = _ddpm_cfg(small_clip, tmp_path / "run", epochs=2, dataset=str(data))
    assert cfg.dataset_length == 1_000_000 and cfg.total_steps(8) == 4
    assert _ddpm_cfg(small_clip, tmp_path, epochs=1, batch_size=3).total_steps(8) == 3  # ceil(8/3)
    summary = train(cfg)
    assert summary["total_steps"] == 4 and summary["step"] == 4


def test_sample_ddpm_honours_steps(small_clip, tmp_path, monkeypatch):
    import bestshot.train.sample as S
    from bestshot.train.ddpm import train

    train(_ddpm_cfg(small_clip, tmp_path / "run", steps=1, dataset_length=8, ckpt_every=1))
    pipes = []
    real = S.set_scheduler
    monkeypatch.setattr(S, "set_scheduler", lambda pipe, name: (pipes.append(pipe), real(pipe, name)))
    with pytest.warns(UserWarning, match="20 steps"):
        S.sample(tmp_path / "run", ["a red circle"], tmp_path / "grid.png", n=1, scheduler="ddpm", steps=20)
    assert type(pipes[0].scheduler).__name__ == "DDPMScheduler"
    assert len(pipes[0].scheduler.timesteps) == 20  # the steps asked for, not 100


# ---------------------------------------------------------------------------------------------- offline hub ids


def _hub_argvs(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "img.png")
    (tmp_path / "m.csv").write_text("image_path,caption,image_id\nimg.png,a red circle,1\n")
    return [
        (["interrogate", str(tmp_path / "img.png"), "--caption", "nope/blip"], "caption model 'nope/blip'"),
        (["generate", "a cat", "--model", "nope/x"], "model 'nope/x'"),
        (["generate", "a cat", "--scorer", "nope/x"], "CLIP scorer 'nope/x'"),
        (
            ["eval", "generate", str(tmp_path / "m.csv"), "--out", str(tmp_path / "eo"), "--model", "nope/x"],
            "model 'nope/x'",
        ),
        (
            ["eval", "generate", str(tmp_path / "m.csv"), "--out", str(tmp_path / "eo"), "--scorer", "nope/x"],
            "CLIP scorer 'nope/x'",
        ),
    ]


@pytest.fixture
def no_network(monkeypatch):
    """Every name lookup fails (and is counted): nothing can reach the network, a retry loop shows as many."""
    import socket

    calls = []

    def refuse(host, *a, **k):
        calls.append(host)
        raise socket.gaierror(-2, "no network in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return calls


@pytest.mark.parametrize("offline", [True, False])
def test_uncached_hub_id_fails_fast_with_the_fix(offline, no_network, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for argv, what in _hub_argvs(tmp_path):
        no_network.clear()
        code, out, err = run_cli(argv, capsys, monkeypatch)
        _one_error_line(code, out, err, what)
        assert "huggingface-cli download nope/" in err and "local" in err
        assert ("HF_HUB_OFFLINE is set" if offline else "cannot be reached") in err
        assert len(no_network) == (0 if offline else 1), no_network  # one probe at most, no retry loop
        assert not (tmp_path / "images_log.jsonl").exists()


def test_cached_or_local_model_needs_no_network(tiny_clip, no_network, monkeypatch):
    from bestshot.models.hub import require_hub_model, require_scorer

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    require_hub_model(tiny_clip)  # a local folder
    require_scorer("embedded+regions")
    require_scorer("open_clip:ViT-B-32:laion2b_s34b_b79k")
    assert no_network == []


# ---------------------------------------------------------------------------------------------- output folder


def _tiny_gen(tiny_sd15, tiny_clip, n=3):
    return [
        "--model",
        tiny_sd15,
        "--scorer",
        tiny_clip,
        "-n",
        str(n),
        "--steps",
        "1",
        "--size",
        "64x64",
        "--clip-min",
        "-1",
    ]


def _no_model_load(monkeypatch):
    import bestshot.generation as G

    def refuse(*a, **k):
        raise AssertionError("the output folder must be checked before a model loads")

    monkeypatch.setattr(G, "load_pipeline", refuse)


def test_output_folder_blocked_by_a_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _no_model_load(monkeypatch)
    (tmp_path / "images_out").write_text("not a folder")
    code, out, err = run_cli(["generate", "a cat"], capsys, monkeypatch)
    _one_error_line(code, out, err, "images_out")
    assert not (tmp_path / "images_log.jsonl").exists()


@pytest.mark.parametrize("eno, needle", [(30, "read-only"), (28, "disk space"), (13, "permissions")])
def test_unwritable_output_folder_fails_before_the_model(eno, needle, tmp_path, capsys, monkeypatch):
    """EROFS / ENOSPC / EACCES on the first file created in the folder (simulated: tests may run as root)."""
    import os

    monkeypatch.chdir(tmp_path)
    _no_model_load(monkeypatch)
    real_open = os.open
    blocked = str(tmp_path / "ro")

    def fake_open(path, flags, *a, **k):
        if os.path.abspath(path).startswith(blocked) and flags & os.O_CREAT:
            raise OSError(eno, os.strerror(eno), str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", fake_open)
    (tmp_path / "ro").mkdir()
    code, out, err = run_cli(["generate", "a cat", "--out", "ro"], capsys, monkeypatch)
    _one_error_line(code, out, err, needle)
    assert "'ro'" in err and list((tmp_path / "ro").iterdir()) == []


def test_read_only_folder_for_real(tmp_path, capsys, monkeypatch):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    monkeypatch.chdir(tmp_path)
    _no_model_load(monkeypatch)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    code, out, err = run_cli(["generate", "a cat", "--out", "ro"], capsys, monkeypatch)
    _one_error_line(code, out, err, "ro")


@pytest.mark.parametrize("where", ["encode", "rename"])
def test_disk_full_mid_run_leaves_no_orphan(where, tiny_sd15, tiny_clip, tmp_path, capsys, monkeypatch):
    """ENOSPC at the 3rd of 3 images: no image without its log line, no temp file, one error line."""
    import errno
    import os

    from PIL import Image

    monkeypatch.chdir(tmp_path)
    calls = []
    if where == "encode":
        real_save = Image.Image.save

        def save(self, fp, format=None, **kw):
            if (format or "").upper() == "PNG":
                calls.append(1)
                if len(calls) == 3:
                    raise OSError(errno.ENOSPC, "No space left on device")
            return real_save(self, fp, format, **kw)

        monkeypatch.setattr(Image.Image, "save", save)
    else:
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            if str(dst).endswith(".png"):
                calls.append(1)
                if len(calls) == 3:
                    raise OSError(errno.ENOSPC, "No space left on device")
            return real_replace(src, dst, *a, **k)

        monkeypatch.setattr(os, "replace", replace)
    code, out, err = run_cli(
        ["generate", "a cat", *_tiny_gen(tiny_sd15, tiny_clip), "--save-candidates"], capsys, monkeypatch
    )
    _one_error_line(code, out, err, "No space left on device")
    assert len(calls) == 3
    folder = tmp_path / "images_out"
    left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert [n for n in left if n.endswith(".png") or n.endswith(".tmp")] == [], left
    assert not (tmp_path / "images_log.jsonl").exists() or (tmp_path / "images_log.jsonl").read_text() == ""


def test_stale_tmp_files_are_ignored_and_cleaned(tiny_sd15, tiny_clip, tmp_path, capsys, monkeypatch):
    import os
    import time

    from bestshot.store import Store

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "images_out"
    folder.mkdir()
    stale = folder / ".20261204-000000-000000-abcdef_seed1_clip0.1000.png.1a2b3c4d.tmp"
    fresh = folder / ".other_seed2_clip0.2000.png.5e6f7a8b.tmp"  # a run writing right now: kept
    stale.write_bytes(b"half a png")
    fresh.write_bytes(b"half a png")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    code, out, err = run_cli(["generate", "a cat", *_tiny_gen(tiny_sd15, tiny_clip, 1)], capsys, monkeypatch)
    assert code == 0, err
    assert not stale.exists() and fresh.exists()
    assert not any(p.name.endswith(".tmp") for p in folder.glob("*.png"))  # readers glob *.png: temps never show
    runs = Store(root=folder, log_path=tmp_path / "images_log.jsonl").index.list()
    assert len(runs) == 1


# ---------------------------------------------------------------------------------------------- paths that travel


def test_logged_paths_resolve_from_another_directory(tiny_sd15, tiny_clip, tmp_path, capsys, monkeypatch):
    from bestshot.store import Store, read_jsonl

    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(a)
    code, out, err = run_cli(
        ["generate", "a cat", *_tiny_gen(tiny_sd15, tiny_clip, 2), "--save-candidates", "--log", "logs/run.jsonl"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    monkeypatch.chdir(b)
    store = Store(root=a / "images_out", log_path=a / "logs" / "run.jsonl")
    (rec,) = read_jsonl(store.log_path)
    for c in rec["candidates"]:
        assert store.resolve_path(c["path"], rec).is_file()
    assert store.resolve_path(rec["img_path"], rec).is_file()
    (indexed,) = store.index.list()
    assert store.resolve_path(indexed["img_path"], indexed).is_file()


def test_server_started_elsewhere_finds_cli_runs(tiny_sd15, tiny_clip, tmp_path, capsys, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bestshot.server import create_app

    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(a)
    code, out, err = run_cli(["generate", "a cat", *_tiny_gen(tiny_sd15, tiny_clip, 1)], capsys, monkeypatch)
    assert code == 0, err
    monkeypatch.chdir(b)
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(a / "images_out"))
    with TestClient(app, base_url="http://localhost") as client:  # the Host allow-list's default name
        (run,) = client.get("/v1/runs").json()["runs"]
        assert run["img_file"] and run["img_file"].endswith(".png")  # not "not saved"
        assert client.get(f"/v1/images/{run['img_file']}").status_code == 200


def test_old_logs_with_working_directory_paths_still_resolve(tmp_path, monkeypatch):
    from bestshot.store import Store

    (tmp_path / "images_out").mkdir()
    (tmp_path / "images_out" / "x.png").write_bytes(b"png")
    store = Store(root=tmp_path / "images_out", log_path=tmp_path / "images_log.jsonl")
    old = {"run_id": "r", "img_path": "images_out/x.png"}  # written by an older bestshot in tmp_path
    monkeypatch.chdir(tmp_path)
    assert store.resolve_path(old["img_path"], old) == (tmp_path / "images_out" / "x.png").resolve()
    monkeypatch.chdir(tmp_path.parent)  # read from elsewhere: found beside the log
    assert store.resolve_path(old["img_path"], old) == tmp_path / "images_out" / "x.png"


# ---------------------------------------------------------------------------------------------- quiet runs


def test_generate_prints_only_our_lines(tmp_path):
    """A normal run on the embedded model: no third-party line (torchvision notice, loading bars...)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import bestshot

    src = str(Path(bestshot.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "200"}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "bestshot.cli",
            "generate",
            "a red circle above a blue square",
            "-n",
            "2",
            "--steps",
            "2",
            "--clip-min",
            "-1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith(("warning:", "error:"))] == []
    ours = ("run ", "┏", "┃", "┡", "│", "└", "kept ", "not kept", "prompt:", "images_out/", "1.")
    strange = [ln for ln in p.stdout.splitlines() if ln.strip() and not ln.strip().startswith(ours)]
    assert strange == [], p.stdout
    for noise in ("torchvision", "Loading", "%|", "float32"):
        assert noise not in p.stdout + p.stderr


def test_quiet_filters_are_narrow():
    import logging

    from bestshot import _quiet

    _quiet.apply()
    seen = []

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    for name, msg, dropped in [
        (
            "transformers.utils.import_utils",
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`",
            True,
        ),
        ("transformers.utils.import_utils", "`x` is deprecated", False),
        (
            "diffusers.models.modeling_utils",
            "There are modules in AutoencoderKL that should be kept in float32: ['x']",
            True,
        ),
        ("diffusers.models.modeling_utils", "There are modules in UNet2DModel that should be kept in float32", False),
        ("bestshot.generation", "our own warning", False),
    ]:
        log = logging.getLogger(name)
        h = Catch()
        log.addHandler(h)
        seen.clear()
        log.warning(msg)
        log.removeHandler(h)
        assert (seen == []) is dropped, (name, msg)


def test_quiet_c_output_swallows_fd_prints(capfd):
    import os

    from bestshot._quiet import quiet_c_output

    with quiet_c_output():
        os.write(2, b"0.00%\n")
        os.write(1, b"noise\n")
    os.write(1, b"ours\n")
    out, err = capfd.readouterr()
    assert out == "ours\n" and err == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "world", "--objects", "1", "--prompts", "1", "--out", "{blocked}/w"],
        ["eval", "generate", "{manifest}", "--out", "{blocked}/g"],
        ["stage1", "--count", "1", "--config", "{curate}"],
    ],
)
def test_other_jobs_check_their_output_folder_first(argv, tmp_path, capsys, monkeypatch):
    """A file in the way of the output folder: one error before any model loads."""
    from PIL import Image

    import bestshot.models.loader as L

    def refuse(*a, **k):
        raise AssertionError("the output folder must be checked before a model loads")

    monkeypatch.setattr(L, "load_pipeline", refuse)
    import bestshot.evaluate.batch as B
    import bestshot.evaluate.world_eval as WE

    monkeypatch.setattr(B, "load_pipeline", refuse)
    monkeypatch.setattr(WE, "load_pipeline", refuse)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocked").write_text("a file, not a folder")
    Image.new("RGB", (32, 32)).save(tmp_path / "img.png")
    (tmp_path / "m.csv").write_text("image_path,caption,image_id\nimg.png,a red circle,1\n")
    (tmp_path / "c.yaml").write_text("paths:\n  outputs: blocked/out\nmodel:\n  base: embedded\n")
    argv = [
        a.format(blocked="blocked", manifest=str(tmp_path / "m.csv"), curate=str(tmp_path / "c.yaml")) for a in argv
    ]
    code, out, err = run_cli(argv, capsys, monkeypatch)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    # (stage1 first says which default prompt files it wrote: ours, and wanted)
    assert code == 2 and lines[-1].startswith("error:") and "blocked" in lines[-1], err
    assert "Traceback" not in out + err


def test_disk_full_at_a_batch_results_line_is_one_error_and_the_rerun_is_consistent(
    tiny_sd15, tiny_clip, tmp_path, capsys, monkeypatch
):
    """ENOSPC while appending the 2nd prompt's results line (its images and log line made it): one error line
    naming the results file, rc 2; the rerun takes that row from the log instead of making it again, so the
    log, the results file and the run index agree (one run per prompt)."""
    import errno
    import json

    import bestshot.store as st
    from bestshot.store import Store, read_jsonl

    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na fox\n")
    results = tmp_path / "prompts.txt.results.jsonl"
    real = st.append_jsonl
    seen = []

    def full(path, record):
        if str(path) == str(results):
            seen.append(1)
            if len(seen) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, record)

    monkeypatch.setattr(st, "append_jsonl", full)
    code, out, err = run_cli(
        ["generate", "--prompts-file", str(prompts), *_tiny_gen(tiny_sd15, tiny_clip, 2), "--json"], capsys, monkeypatch
    )
    _one_error_line(code, out, err, "No space left on device")
    assert "results.jsonl" in err and "rerunning the same command" in err
    log = tmp_path / "images_log.jsonl"
    assert len(read_jsonl(log)) == 2 and len(read_jsonl(results)) == 1
    monkeypatch.setattr(st, "append_jsonl", real)  # space is back
    code, out, err = run_cli(
        ["generate", "--prompts-file", str(prompts), *_tiny_gen(tiny_sd15, tiny_clip, 2), "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    assert "already in the run log" in err
    assert [json.loads(ln)["line"] for ln in out.strip().splitlines()] == [3]  # only the fox is made
    runs, rows = read_jsonl(log), read_jsonl(results)
    assert len(runs) == 3 and sorted(r["line"] for r in rows) == [1, 2, 3]
    assert {r["run_id"] for r in runs} == {r["run_id"] for r in rows}
    index = Store(root=tmp_path / "images_out", log_path=log).index.list()
    assert {r["run_id"] for r in index} == {r["run_id"] for r in runs}
    for r in rows:  # the recovered row points at its image like the others
        assert r["img_path"] and (tmp_path / r["img_path"]).is_file()
