"""Hostile input against bestshot serve: each case answered 500 (or worse) before issue 25; now a 4xx
with a valid JSON body in A1111's error shape."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from bestshot.errors import BestshotError  # noqa: E402
from bestshot.server import create_app  # noqa: E402
from bestshot.server.a1111 import Limits  # noqa: E402
from bestshot.server.app import ServerSettings  # noqa: E402
from bestshot.server.safety import allowed_hosts, host_name  # noqa: E402

SMALL = {"steps": 2, "width": 32, "height": 32}
BASE = "http://localhost"


@pytest.fixture(scope="module")
def c(tiny_sd15, tiny_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    settings = ServerSettings(
        model=tiny_sd15,
        scorer=tiny_clip,
        out_dir=str(root / "images_out"),
        limits=Limits(max_prompt_chars=1000, max_options=8, max_option_bytes=256),
    )
    with TestClient(create_app(settings), base_url=BASE) as client:
        yield client


def _raw(c, path, text):
    return c.post(path, content=text.encode("utf-8"), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("field", ["cfg_scale", "clip_min", "steps"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_422_not_500(c, field, value):
    r = _raw(c, "/sdapi/v1/txt2img", f'{{"prompt": "a red circle", "{field}": {value}}}')
    assert r.status_code == 422, r.text
    body = r.json()  # valid JSON although the refused value is not
    assert set(body) >= {"error", "detail", "body", "errors"} and field in body["errors"]


def test_non_finite_on_the_native_api_too(c):
    r = _raw(c, "/v1/generate", '{"prompt": "a", "guidance": NaN}')
    assert r.status_code == 422 and "guidance" in r.json()["errors"]


@pytest.mark.parametrize(
    "path,body",
    [
        ("/sdapi/v1/txt2img", '{"prompt": "a \\ud800 b"}'),
        ("/sdapi/v1/txt2img", '{"prompt": "a", "negative_prompt": "\\udfff"}'),
        ("/v1/generate", '{"prompt": "\\ud800"}'),
        ("/sdapi/v1/options", '{"some_key": "\\ud800"}'),
    ],
)
def test_lone_surrogates_are_422(c, path, body):
    r = _raw(c, path, body)
    assert r.status_code == 422, r.text
    assert "surrogate" in r.text


def test_plms_with_two_steps_is_422(c):
    r = c.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", **SMALL, "sampler_name": "PLMS"})
    assert r.status_code == 422 and "at least 4 steps" in r.text
    r = c.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", **SMALL, "steps": 4, "sampler_name": "PLMS"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "path,body",
    [
        ("/sdapi/v1/txt2img", {"prompt": "x" * 1001}),
        ("/sdapi/v1/txt2img", {"prompt": "a", "negative_prompt": "x" * 1001}),
        ("/sdapi/v1/img2img", {"prompt": "x" * 1001, "init_images": ["AAAA"]}),
        ("/v1/generate", {"prompt": "x" * 1001}),
    ],
)
def test_prompts_are_capped_on_every_route(c, path, body):
    r = c.post(path, json=body)
    assert r.status_code == 422, r.text
    assert "1000" in r.text and "--max-prompt-chars" in r.text
    assert len(r.content) < 5000  # the refused prompt is not echoed in full


def test_options_store_is_bounded(c):
    assert c.post("/sdapi/v1/options", json={"samples_format": "png", "CLIP_stop_at_last_layers": 2}).status_code == 200
    r = c.post("/sdapi/v1/options", json={f"junk_{i}": i for i in range(30)})
    assert r.status_code == 422 and "options" in r.text
    r = c.post("/sdapi/v1/options", json={"junk_big": "x" * 1000})
    assert r.status_code == 422 and "junk_big" in r.text
    opts = c.get("/sdapi/v1/options").json()
    assert "junk_0" not in opts and opts["CLIP_stop_at_last_layers"] == 2
    for key in ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "samples_format", "bestshot_best_of"):
        assert key in opts
    assert len(json.dumps(opts)) < 20000


def test_host_header_allow_list(c):
    assert c.get("/sdapi/v1/progress", headers={"Host": "evil.example"}).status_code == 400
    assert c.get("/sdapi/v1/progress", headers={"Host": "127.0.0.1:7860"}).status_code == 200
    assert c.get("/sdapi/v1/progress", headers={"Host": "[::1]:7860"}).status_code == 200
    assert allowed_hosts("0.0.0.0", None) == ("*",)
    assert "box.lan" in allowed_hosts("box.lan", None) and allowed_hosts("x", ["a.example"]) == ("a.example",)
    assert host_name("Example.COM:80") == "example.com"


def test_non_ascii_token_matches_as_utf8_bytes(tiny_sd15, tmp_path):
    app = create_app(model=tiny_sd15, out_dir=str(tmp_path / "o"), token="pässwörd-ключ")
    with TestClient(app, base_url=BASE) as c:
        assert c.get("/sdapi/v1/progress").status_code == 401
        ok = c.get("/sdapi/v1/progress", headers={"Authorization": "Bearer pässwörd-ключ".encode()})
        assert ok.status_code == 200, ok.text
        bad = c.get("/sdapi/v1/progress", headers={"Authorization": "Bearer pässwörd-ключx".encode()})
        assert bad.status_code == 401 and set(bad.json()) >= {"error", "detail"}


def test_unwritable_output_folder_fails_at_start_up(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(BestshotError, match="not writable.*--out-dir"):
        create_app(out_dir=str(blocker / "images_out"))
    from typer.testing import CliRunner

    from bestshot.cli import app as cli

    res = CliRunner().invoke(cli, ["serve", "--out-dir", str(blocker / "images_out")])
    assert res.exit_code != 0
    assert "not writable" in (res.output + str(res.exception or ""))
