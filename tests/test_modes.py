"""img2img, inpaint and hires fix are modes of the one best-of-N core: N candidates, ranking, the gate, one record
(timings, ``reproduce``) and images + log line written as one unit, through ``bestshot.generate`` and the server."""

from __future__ import annotations

import ast
import base64
import errno
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bestshot import generate
from bestshot.errors import BestshotError, StorageError
from bestshot.store import parse_parameters, read_jsonl, read_png_info
from helpers import run_cli

SRC = Path(__file__).resolve().parents[1] / "src" / "bestshot"
SMALL = dict(steps_base=4, height=32, width=32, gate=False, style_suffix="", negative_prompt="")


@pytest.fixture
def pics(tmp_path):
    init = Image.new("RGB", (32, 32), (200, 30, 30))
    ImageDraw.Draw(init).ellipse((4, 4, 27, 27), fill=(20, 40, 220))
    mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 23, 23), fill=255)
    init.save(tmp_path / "init.png")
    mask.save(tmp_path / "mask.png")
    mask.resize((64, 64), Image.Resampling.NEAREST).save(tmp_path / "mask64.png")
    (tmp_path / "notimage.png").write_text("not a picture")
    return tmp_path


def _px(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _ranked(r: dict, n: int) -> None:
    assert [c["seed"] for c in r["candidates"]] == list(
        range(r["settings"]["seed_base"], r["settings"]["seed_base"] + n)
    )
    assert all(c["score"] is not None for c in r["candidates"])
    if "exact_best" not in r["timing_s"]:  # a re-render alone may round the kept one's score differently
        assert r["best_seed"] == max(r["candidates"], key=lambda c: c["score"])["seed"]
    assert {"load", "gen", "clip", "total"} <= set(r["timing_s"]) and "bit-exact" in r["reproduce"]
    assert r["scorer"] and r["gate"] is not None and r["ok"] is True


def test_img2img_through_generate_gives_n_ranked_candidates_and_one_record(tiny_sd15, tiny_clip, pics, out):
    r = generate(
        "a blue circle", model=tiny_sd15, scorer=tiny_clip, n_images=3, init_image=str(pics / "init.png"),
        strength=0.5, **SMALL, **out,
    )  # fmt: skip
    _ranked(r, 3)
    assert r["kind"] == "img2img" and r["settings"]["strength"] == 0.5
    logged = read_jsonl(out["log_jsonl"])
    assert len(logged) == 1 and logged[0]["run_id"] == r["run_id"] and logged[0]["kind"] == "img2img"
    info = read_png_info(r["img_path"])
    params = parse_parameters(info["parameters"])
    assert params["Denoising strength"] == 0.5 and params["Seed"] == r["best_seed"]


def test_strength_zero_keeps_the_init_image_and_strength_above_zero_repaints(tiny_sd15, tiny_clip, pics, out):
    kw = dict(model=tiny_sd15, scorer=tiny_clip, n_images=2, init_image=str(pics / "init.png"), **SMALL, **out)
    same = generate("a cat", strength=0.0, save_candidates=True, **kw)
    for c in same["candidates"]:
        assert np.array_equal(_px(c["path"]), _px(pics / "init.png"))
    moved = generate("a cat", strength=0.75, **kw)
    assert np.abs(_px(moved["img_path"]) - _px(pics / "init.png")).mean() > 1


@pytest.mark.parametrize("model", ["sd15", "world"])
def test_inpaint_repaints_only_the_masked_part(request, tiny_clip, pics, out, model):
    path = request.getfixturevalue(f"tiny_{model}")
    r = generate(
        "a green square", model=path, scorer=tiny_clip, n_images=2, init_image=str(pics / "init.png"),
        mask=str(pics / "mask.png"), mask_blur=0, strength=1.0, **SMALL, **out,
    )  # fmt: skip
    _ranked(r, 2)
    assert r["kind"] == "inpaint" and r["settings"]["inpainting_fill"] == 1
    got, init = _px(r["img_path"]), _px(pics / "init.png")
    outside = np.asarray(Image.open(pics / "mask.png")) == 0
    assert np.abs(got - init)[outside].max() <= 2  # unmasked pixels unchanged
    assert np.abs(got - init)[~outside].mean() > 1  # the masked part repainted
    text = read_png_info(r["img_path"])["parameters"]
    assert "Mask blur: 0" in text and "Masked content: original" in text and "Denoising strength: 1.0" in text


def test_inpaint_with_a_mask_of_another_size_is_resized_and_says_so(tiny_sd15, tiny_clip, pics, out):
    r = generate(
        "a green square", model=tiny_sd15, scorer=tiny_clip, n_images=1, init_image=str(pics / "init.png"),
        mask=str(pics / "mask64.png"), mask_blur=1, inpaint_full_res=True, inpaint_full_res_padding=2, **SMALL,
        **out,
    )  # fmt: skip
    assert any("mask 64x64 resized" in note for note in r["inputs"])
    far = np.zeros((32, 32), bool)
    far[:3], far[-3:] = True, True  # far from the blurred mask's edge
    assert np.abs(_px(r["img_path"]) - _px(pics / "init.png"))[far].max() <= 2


def test_hires_output_has_the_scaled_size(tiny_sd15, tiny_clip, out):
    r = generate(
        "a red circle", model=tiny_sd15, scorer=tiny_clip, n_images=2, hires_scale=2.0, hires_denoise=0.5,
        **SMALL, **out,
    )  # fmt: skip
    _ranked(r, 2)
    assert Image.open(r["img_path"]).size == (64, 64) and r["settings"]["hires_size"] == "64x64"
    text = read_png_info(r["img_path"])["parameters"]
    assert "Hires upscale: 2.0" in text and "Denoising strength: 0.5" in text and "Size: 32x32" in text


def test_img2img_on_the_embedded_model(pics, out):
    r = generate("a blue circle", n_images=2, init_image=str(pics / "init.png"), strength=0.5, steps_base=4, **out)
    assert r["kind"] == "img2img" and len(r["candidates"]) == 2 and "load" in r["timing_s"]


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(init_image="missing.png"), "init_image: no such file"),
        (dict(init_image="notimage.png"), "init_image: .* is not an image"),
        (dict(init_image="init.png", mask="missing.png"), "mask: no such file"),
        (dict(init_image="init.png", strength=1.5), "strength must be a number between 0 and 1"),
        (dict(mask="mask.png"), "mask needs an init_image"),
        (dict(hires_scale=0.5), "hires_scale must be a number between 1 and 4"),
        (dict(inpainting_fill=7), "inpainting_fill must be 0"),
    ],
)
def test_bad_mode_input_is_one_line_naming_the_field(pics, out, monkeypatch, kw, needle):
    import bestshot.generation as G

    monkeypatch.setattr(G, "load_pipeline", lambda *a, **k: pytest.fail("bad input must be refused before a load"))
    kw = {k: str(pics / v) if k in ("init_image", "mask") else v for k, v in kw.items()}
    with pytest.raises(BestshotError, match=needle) as e:
        generate("a cat", **kw, **out)
    assert "\n" not in str(e.value)


def _fail_second_image(monkeypatch):
    import bestshot.store as S

    real, calls = S.png_bytes, []

    def png_bytes(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(S, "png_bytes", png_bytes)
    return calls


def _no_files(folder: Path) -> None:
    assert not folder.exists() or [p.name for p in folder.rglob("*") if p.suffix in (".png", ".tmp")] == []


def test_img2img_disk_full_keeps_no_log_line_and_no_orphan_files(tiny_sd15, tiny_clip, pics, out, monkeypatch):
    calls = _fail_second_image(monkeypatch)
    with pytest.raises(StorageError, match="disk space") as e:
        generate(
            "a cat", model=tiny_sd15, scorer=tiny_clip, n_images=3, save_candidates=True,
            init_image=str(pics / "init.png"), strength=0.5, **SMALL, **out,
        )  # fmt: skip
    assert len(calls) == 2 and out["out_dir"] in str(e.value) and "\n" not in str(e.value)
    _no_files(Path(out["out_dir"]))
    assert not Path(out["log_jsonl"]).exists() or read_jsonl(out["log_jsonl"]) == []


def test_cli_img2img_disk_full_is_one_line(tiny_sd15, tiny_clip, pics, out, capsys, monkeypatch):
    _fail_second_image(monkeypatch)
    argv = ["generate", "a cat", "--model", tiny_sd15, "--scorer", tiny_clip, "-n", "3", "--save-candidates",
            "--init-image", str(pics / "init.png"), "--strength", "0.5", "--steps", "4", "--size", "32x32",
            "--out", out["out_dir"], "--log", out["log_jsonl"]]  # fmt: skip
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert code != 0 and "disk space" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    _no_files(Path(out["out_dir"]))


# ------------------------------------------------------------------------------ the server's routes


def _b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def srv(tiny_sd15, tiny_clip, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bestshot.server import create_app

    out = tmp_path / "images_out"
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(out), max_queue=4)
    with TestClient(app, base_url="http://localhost") as client:
        client.out, client.log = out, tmp_path / "images_log.jsonl"
        yield client


BASE = {"prompt": "a red circle", "steps": 4, "width": 32, "height": 32, "seed": 5, "save_images": True}
INIT = Image.new("RGB", (32, 32), (200, 30, 30))
MASK = Image.new("L", (32, 32), 0)
ImageDraw.Draw(MASK).rectangle((8, 8, 23, 23), fill=255)


@pytest.mark.parametrize(
    "route, body, kind",
    [
        ("img2img", dict(BASE, init_images=[_b64(INIT)], denoising_strength=0.5, best_of=3), "img2img"),
        (
            "img2img",
            dict(BASE, init_images=[_b64(INIT)], mask=_b64(MASK), denoising_strength=0.8, best_of=3),
            "inpaint",
        ),
        ("txt2img", dict(BASE, best_of=3, enable_hr=True, hr_scale=2, denoising_strength=0.5), "img2img"),
    ],
)
def test_server_routes_run_the_core(srv, route, body, kind):
    r = srv.post(f"/sdapi/v1/{route}", json=body)
    assert r.status_code == 200, r.text
    runs = read_jsonl(srv.log)
    last = runs[-1]  # the run whose image is returned (hires: the repaint of the best of 3)
    assert last.get("kind") == kind and {"load", "gen", "clip", "total"} <= set(last["timing_s"])
    assert "bit-exact" in last["reproduce"]
    ranked = [rec for rec in runs if len(rec["candidates"]) == 3]
    assert ranked and all(c["score"] is not None for c in ranked[0]["candidates"])
    if "exact_best" not in ranked[0]["timing_s"]:
        assert ranked[0]["best_seed"] == max(ranked[0]["candidates"], key=lambda c: c["score"])["seed"]
    size = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size
    assert size == ((64, 64) if route == "txt2img" else (32, 32))


def test_server_img2img_disk_full_is_a_507_with_no_log_line_and_no_files(srv, monkeypatch):
    _fail_second_image(monkeypatch)
    body = dict(BASE, init_images=[_b64(INIT)], denoising_strength=0.5, batch_size=3)  # three images, one run
    r = srv.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 507, r.text
    assert r.json()["error"] == "StorageError" and str(srv.out) in r.json()["detail"]
    _no_files(srv.out)
    assert not srv.log.exists() or read_jsonl(srv.log) == []


# ------------------------------------------------------------------------------ one core


def _calls(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            f = node.func
            names.add("." + f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
            names.add(f.attr if isinstance(f, ast.Attribute) else "")
    return names


def test_rank_gate_draw_and_save_are_defined_once_in_the_core():
    """Only bestshot.generation (the core) draws candidates, ranks and gates them and writes a run; every other
    module (the server's jobs, eval generate, curate's stage 1) goes through generate() / best_of_n()."""
    core_only = {".pick", "make_candidates", "_call_pipeline", "needs_solo_render", "save_run", "resolve_gate"}
    # the server validates a requested score_min before queueing; eval world --variant before its first run
    allowed = {"resolve_gate": {"a1111.py", "world_variants.py"}}
    offenders = {}
    for path in SRC.rglob("*.py"):
        if path.name in ("generation.py", "store.py") or "scoring" in path.parts:
            continue
        hits = {n for n in _calls(path) & core_only if path.name not in allowed.get(n, ())}
        if hits:
            offenders[str(path.relative_to(SRC))] = sorted(hits)
    assert offenders == {}
    for caller in ("server/jobs.py", "evaluate/batch.py", "curate/stages.py"):
        assert _calls(SRC / caller) & {"generate", "best_of_n"}, caller


def test_docs_mention_every_mode():
    text = (SRC.parents[1] / "docs" / "generate.md").read_text(encoding="utf-8")
    for flag in ("--init-image", "--mask", "--hires-scale"):
        assert flag in text
