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


def replay(c, fixture: dict, model: str) -> dict:
    done: dict = {}
    bg = None
    polls = 0
    for step in fixture["steps"]:
        method, path = step["method"], step.get("path")
        if method == "WAIT":
            bg.join(600)
            continue
        body = _subst(step.get("json"), model)
        if step.get("background"):
            bg = threading.Thread(target=lambda p=path, b=body: done.setdefault("gen", c.post(p, json=b)))
            bg.start()
            continue
        if step.get("poll"):  # as the clients do: poll until the job shows progress (or has finished)
            for _ in range(3000):
                r = c.get(path)
                assert r.status_code == 200, (path, r.text)
                polls += 1
                if r.json()["progress"] > 0 or "gen" in done:
                    break
                time.sleep(0.02)
            continue
        r = c.request(method, path, json=body)
        assert r.status_code == 200, (method, path, r.status_code, r.text[:300])
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
        assert info["sampler_name"] == "DPM++ 2M Karras"
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
