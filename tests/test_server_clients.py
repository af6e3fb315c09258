"""Request sequences of real A1111 clients (tests/fixtures/clients/*.json), replayed in their order:
connect → models → options → samplers, schedulers, upscalers, latent-upscale-modes → txt2img → progress
polling (→ interrupt). No step may answer an error; the generation returns at least one image."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from bestshot.server import create_app  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "clients"


def _subst(obj, model):
    if isinstance(obj, str):
        return model if obj == "$MODEL" else obj
    if isinstance(obj, dict):
        return {k: _subst(v, model) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_subst(v, model) for v in obj]
    return obj


def check_reads(data, reads, where) -> None:
    """The response fields a client reads ("[].name": name of every element; "state.job_count"; "images.0")."""
    for field in reads:
        parts = field.split(".")
        items = [data]
        for part in parts:
            if part == "[]":
                assert all(isinstance(x, list) for x in items), (where, field)
                items = [y for x in items for y in x]
            elif part.isdigit():
                assert all(isinstance(x, list) and len(x) > int(part) for x in items), (where, field)
                items = [x[int(part)] for x in items]
            else:
                assert all(isinstance(x, dict) and part in x for x in items), (where, field)
                items = [x[part] for x in items]


def _wait_running(c, done) -> int:
    """Not a client request: poll until the job shows progress (or has finished)."""
    polls = 0
    for _ in range(3000):
        r = c.get("/sdapi/v1/progress")
        assert r.status_code == 200, r.text
        polls += 1
        if r.json()["progress"] > 0 or "gen" in done:
            break
        time.sleep(0.02)
    return polls


def _send(c, method, path, body, headers, step, origin):
    """One client request: JSON (or, with "raw", the JSON text without a Content-Type, as the client sends it);
    a browser client (fixture "origin") sends its CORS preflight first and needs the answer's CORS header."""
    ctype = step.get("content_type")  # a text/plain body is a "simple" request: no preflight
    if origin:
        headers = {**headers, "Origin": origin}
        if not ctype and (method not in ("GET", "HEAD") or set(headers) - {"Origin", "Accept"}):
            pre = c.options(
                path,
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": "content-type,authorization",
                },
            )
            assert pre.status_code == 200 and pre.headers.get("access-control-allow-origin") == origin, (path, pre.text)
    if step.get("raw") or ctype:
        r = c.request(
            method,
            path,
            content=json.dumps(body).encode(),
            headers={**headers, **({"Content-Type": ctype} if ctype else {})},
        )
    else:
        r = c.request(method, path, json=body, headers=headers)
    if origin:
        assert r.headers.get("access-control-allow-origin") == origin, (method, path)
    return r


def replay(c, fixture: dict, model: str) -> dict:
    done: dict = {}
    bg = None
    polls = 0
    options = None  # the last GET /sdapi/v1/options answer, for "$OPTIONS" bodies
    headers = fixture.get("headers", {})
    overrides = fixture.get("replay_overrides", {})
    origin = fixture.get("origin")
    for step in fixture["steps"]:
        method, path = step["method"], step.get("path")
        if method == "WAIT":
            bg.join(600)
            continue
        if method == "WAIT_RUNNING":
            polls += _wait_running(c, done)
            continue
        body = step.get("json")
        if body == "$OPTIONS":
            body = {**options, **step.get("merge", {})}
        body = _subst(body, model)
        if path == "/sdapi/v1/txt2img":
            body = {**body, **overrides}
        if step.get("background"):

            def gen(p=path, b=body, st=step):
                r = _send(c, "POST", p, b, headers, st, origin)
                if r.status_code == 200:
                    check_reads(r.json(), st.get("reads", []), p)
                done["gen"] = r

            bg = threading.Thread(target=gen)
            bg.start()
            continue
        r = _send(c, method, path, body, headers, step, origin)
        assert r.status_code == 200, (method, path, r.status_code, r.text[:300])
        check_reads(r.json(), step.get("reads", []), (method, path))
        if method == "GET" and path == "/sdapi/v1/options":
            options = r.json()
    done["polls"] = polls
    return done


def test_sillytavern_sequence(tiny_sd15, tiny_clip, tmp_path):
    fixture = json.loads((FIXTURES / "sillytavern.json").read_text())
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(tmp_path / "o"))
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        done = replay(c, fixture, tiny_sd15)
        r = done["gen"]
        assert r.status_code == 200, r.text
        images = r.json()["images"]
        assert images and images[0]  # SillyTavern reads images[0]
        info = json.loads(r.json()["info"])
        assert info["sampler_name"] == "DDIM Normal"  # SillyTavern's defaults: sampler DDIM, schedule type "normal"
        assert c.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_openwebui_sequence_on_the_embedded_model(tmp_path):
    fixture = json.loads((FIXTURES / "openwebui.json").read_text())
    app = create_app(out_dir=str(tmp_path / "o"))
    with TestClient(app, base_url="http://localhost:7860") as c:
        done = replay(c, fixture, "embedded")
    r = done["gen"]
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 1 and (info["width"], info["height"]) == (32, 32)  # 512² → native, said so
    assert "native size" in info["bestshot"]["size"]


def _embedded_replay(name, tmp_path, model="embedded"):
    fixture = json.loads((FIXTURES / name).read_text())
    app = create_app(out_dir=str(tmp_path / "o"))
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        done = replay(c, fixture, model)
    r = done["gen"]
    assert r.status_code == 200, r.text
    return r, json.loads(r.json()["info"])


def test_webuiapi_default_request_with_a_relation_prompt(tmp_path):
    r, info = _embedded_replay("webuiapi.json", tmp_path)
    assert info["sampler_name"] == "Euler a" and "native size" in info["bestshot"]["size"]


def test_librechat_stable_diffusion_tool(tmp_path):
    r, info = _embedded_replay("librechat.json", tmp_path)
    assert (info["width"], info["height"]) == (32, 32) and "1024x1024" in info["bestshot"]["size"]
    assert info["infotexts"][0].split("\n")[-1].startswith("Steps:") and info["seed"] >= 0  # what LibreChat keeps


def test_dify_stable_diffusion_tool(tmp_path):
    from bestshot.models.registry import EMBEDDED_DIR

    fixture = json.loads((FIXTURES / "dify.json").read_text())
    folder = str(EMBEDDED_DIR)
    app = create_app(model=folder, out_dir=str(tmp_path / "o"))
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        name = c.get("/sdapi/v1/sd-models").json()[0]["model_name"]  # Dify's model setting: a model_name
        done = replay(c, fixture, name)
    r = done["gen"]
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 1


def test_browser_front_end_from_another_origin(tmp_path):
    r, info = _embedded_replay("browser_app.json", tmp_path)
    assert (info["width"], info["height"]) == (48, 32) and info["sampler_name"] == "Euler a"


def test_browser_front_end_posting_text_plain(tmp_path):
    r, info = _embedded_replay("browser_plain.json", tmp_path)
    assert len(r.json()["images"]) == 2 and info["sampler_name"] == "DPM++ 2M Karras"
