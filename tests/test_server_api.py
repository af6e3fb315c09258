"""bestshot serve: A1111 routes, native API, auth, queue, path safety, curation (tiny random SD 1.5 + CLIP)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from bestshot.server import create_app  # noqa: E402
from bestshot.server.background import BackgroundServer  # noqa: E402
from bestshot.server.queue import JobQueue, QueueFull  # noqa: E402
from bestshot.store import parse_parameters  # noqa: E402

SMALL = {"steps": 2, "width": 32, "height": 32, "cfg_scale": 5.0}


@pytest.fixture(scope="module")
def env(tiny_sd15, tiny_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    app = create_app(
        model=tiny_sd15,
        scorer=tiny_clip,
        out_dir=str(root / "images_out"),
        curate_dir=str(root / "outputs"),
        max_queue=4,
        interrogate_cache=str(root / "cache"),
    )
    with TestClient(app, base_url="http://localhost") as client:
        yield {"app": app, "client": client, "root": root, "model": tiny_sd15}


def _png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_txt2img_shapes_seeds_and_png_info(env):
    c = env["client"]
    body = {
        "prompt": "a red circle",
        "negative_prompt": "blurry",
        "seed": 7,
        "batch_size": 2,
        "sampler_name": "Euler a",
        **SMALL,
        "alwayson_scripts": {},
        "styles": [],
        "hr_checkpoint_name": None,  # unknown: ignored
        "save_images": True,
    }  # A1111's default is false (sent only)
    r = c.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data) == {"images", "parameters", "info"} and len(data["images"]) == 2
    assert data["parameters"]["prompt"] == "a red circle" and data["parameters"]["seed"] == 7
    info = json.loads(data["info"])
    assert info["all_seeds"] == [7, 8] and info["seed"] == 7 and info["all_prompts"] == ["a red circle"] * 2
    assert info["sampler_name"] == "Euler a" and len(info["infotexts"]) == 2
    for i, b64 in enumerate(data["images"]):
        im = _png(b64)
        assert im.size == (32, 32)
        p = parse_parameters(im.info["parameters"])
        assert (p["prompt"], p["negative_prompt"], p["Seed"], p["Steps"], p["CFG scale"], p["Size-1"], p["Size-2"]) == (
            "a red circle",
            "blurry",
            7 + i,
            2,
            5.0,
            32,
            32,
        )
        assert p["Sampler"] == "Euler a"
    images = info["bestshot"]["images"]
    assert [x["seed"] for x in images] == [7, 8]
    for x in images:  # every returned image is stored and served
        assert (env["root"] / "images_out" / x["file"]).is_file()
        assert c.get(f"/v1/images/{x['file']}").status_code == 200


def test_best_of_picks_one_per_image_with_a1111_seed_blocks(env):
    c = env["client"]
    r = c.post("/sdapi/v1/txt2img", json={"prompt": "a blue square", "seed": 10, "n_iter": 2, "best_of": 2, **SMALL})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 2
    runs = info["bestshot"]["runs"]
    assert [[c_["seed"] for c_ in run["candidates"]] for run in runs] == [[10, 11], [12, 13]]
    for seed, run in zip(info["all_seeds"], runs):
        best = max(run["candidates"], key=lambda c_: c_["clip"])
        assert seed == best["seed"] == run["best_seed"]
    # a gate nobody passes: images is never empty on an A1111 route; info says the best failed the gate
    r = c.post("/sdapi/v1/txt2img", json={"prompt": "a blue square", "seed": 1, "clip_min": 0.999, **SMALL})
    info = json.loads(r.json()["info"])
    assert r.status_code == 200 and len(r.json()["images"]) == 1 and info["bestshot"]["returned_images"] == 1
    assert info["bestshot"]["gate"]["failed_seeds"] == [1] and "failed the gate" in info["bestshot"]["gate"]["note"]
    r = c.post(
        "/sdapi/v1/txt2img", json={"prompt": "a blue square", "seed": 1, "clip_min": 0.999, "best_of": 2, **SMALL}
    )
    gate = json.loads(r.json()["info"])["bestshot"]["gate"]
    assert len(r.json()["images"]) == 1 and gate["passed"] is False


@pytest.mark.parametrize(
    "body,field",
    [
        ({"steps": 0}, "steps"),
        ({"width": 100}, "width"),
        ({"sampler_name": "No Such Sampler"}, "sampler_name"),
        ({"batch_size": 200}, "batch_size"),
        ({"scorer": "/etc"}, "scorer"),
        ({"seed": -5}, "seed"),
        ({"cfg_scale": "lots"}, "cfg_scale"),
        ({"best_of": 64, "batch_size": 2}, "best_of"),
    ],
)
def test_invalid_values_get_422_naming_the_field(env, body, field):
    r = env["client"].post("/sdapi/v1/txt2img", json={"prompt": "a red circle", **SMALL, **body})
    assert r.status_code == 422, r.text
    assert field in r.text


def test_png_info_interrogate_and_extras(env):
    c = env["client"]
    img = c.post("/sdapi/v1/txt2img", json={"prompt": "a green cross", "seed": 3, **SMALL}).json()["images"][0]
    info = c.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + img}).json()
    assert (
        info["parameters"]["Seed"] == "3"
        and info["parameters"]["Prompt"] == "a green cross"
        and info["info"].startswith("a green cross")
    )
    assert json.loads(info["items"]["bestshot"])["seed"] == 3
    cap = c.post("/sdapi/v1/interrogate", json={"image": img, "model": "clip"})
    assert cap.status_code == 200 and isinstance(cap.json()["caption"], str) and cap.json()["caption"]
    assert c.post("/sdapi/v1/interrogate", json={"image": img, "model": "deepdanbooru"}).status_code == 422
    up = c.post("/sdapi/v1/extra-single-image", json={"image": img, "upscaling_resize": 2, "upscaler_1": "Lanczos"})
    assert up.status_code == 200 and _png(up.json()["image"]).size == (64, 64)
    up = c.post(
        "/sdapi/v1/extra-single-image",
        json={"image": img, "resize_mode": 1, "upscaling_resize_w": 96, "upscaling_resize_h": 48, "upscaler_1": "None"},
    )
    assert up.status_code == 200 and _png(up.json()["image"]).size == (96, 48)
    assert c.post("/sdapi/v1/extra-single-image", json={"image": img, "upscaler_1": "Nope"}).status_code == 422
    assert c.post("/sdapi/v1/png-info", json={"image": "bm90IGFuIGltYWdl"}).status_code == 422


def test_img2img_on_sd15(env):
    c = env["client"]
    init = c.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "seed": 1, **SMALL}).json()["images"][0]
    r = c.post(
        "/sdapi/v1/img2img",
        json={
            "prompt": "a blue circle",
            "init_images": [init],
            "seed": 4,
            "steps": 4,
            "width": 32,
            "height": 32,
            "denoising_strength": 0.5,
            "best_of": 2,
        },
    )
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    p = parse_parameters(_png(r.json()["images"][0]).info["parameters"])
    assert p["Denoising strength"] == 0.5 and p["Seed"] in (4, 5) and p["prompt"] == "a blue circle"
    assert info["denoising_strength"] == 0.5
    r = c.post(
        "/sdapi/v1/img2img",
        json={
            "prompt": "x",
            "init_images": [init],
            "steps": 1,
            "denoising_strength": 0.2,
            **{"width": 32, "height": 32},
        },
    )
    assert r.status_code == 422 and "denoising_strength" in r.text


def test_v1_generate_runs_and_pagination(env):
    c = env["client"]
    assert c.post("/sdapi/v1/txt2img", json={"prompt": "an older run", **SMALL}).status_code == 200
    r = c.post(
        "/v1/generate",
        json={
            "prompt": "a purple diamond",
            "n_images": 2,
            "steps_base": 2,
            "width": 32,
            "height": 32,
            "clip_min": -1,
            "seed_base": 5,
            "save_candidates": True,
            "exact_best": False,
        },
    )
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["ok"] and [x["seed"] for x in res["candidates"]] == [5, 6]
    assert res["img_file"] and (env["root"] / "images_out" / res["img_file"]).is_file()
    assert all((env["root"] / "images_out" / x["file"]).is_file() for x in res["candidates"])
    assert c.post("/v1/generate", json={"prompt": "x", "bogus": 1}).status_code == 422  # native API: no typos
    assert c.post("/v1/generate", json={"prompt": "x", "preset": "nope"}).status_code == 422
    runs = c.get("/v1/runs", params={"limit": 2}).json()["runs"]
    assert runs[0]["run_id"] == res["run_id"] and len(runs) == 2
    assert runs[0]["created"] >= runs[1]["created"]
    second = c.get("/v1/runs", params={"limit": 1, "offset": 1}).json()["runs"]
    assert second[0]["run_id"] == runs[1]["run_id"]
    assert c.get(f"/v1/runs/{res['run_id']}").json()["best_seed"] == res["best_seed"]
    assert c.get("/v1/runs", params={"limit": -1}).status_code == 422


def test_models_options_samplers_progress_openapi(env):
    c = env["client"]
    assert [m["title"] for m in c.get("/sdapi/v1/sd-models").json()] == [env["model"]]
    assert "Euler a" in [s["name"] for s in c.get("/sdapi/v1/samplers").json()]
    assert c.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == env["model"]
    assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "other"}).status_code == 422
    assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": env["model"], "foo": 1}).status_code == 200
    assert c.get("/sdapi/v1/options").json()["foo"] == 1
    p = c.get("/sdapi/v1/progress").json()
    assert set(p) >= {"progress", "eta_relative", "state", "current_image", "textinfo"} and p["state"]["job"] == ""
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/sdapi/v1/txt2img", "/v1/generate", "/v1/runs", "/v1/images/{name}"} <= set(paths)


def test_progress_shows_the_running_job(env):
    c, q = env["client"], env["app"].state.jobs
    go = threading.Event()

    def work(job):
        job.on_step(1, 4)
        go.wait(10)
        return "done"

    job = q.submit("test", work, "a test job")
    try:
        for _ in range(200):
            p = c.get("/sdapi/v1/progress").json()
            if p["state"]["sampling_step"] == 1:
                break
            time.sleep(0.01)
        assert p["state"]["job"] == job.id and p["state"]["sampling_steps"] == 4 and p["progress"] == 0.25
        assert p["textinfo"] == "a test job"
    finally:
        go.set()
    assert job.future.result(10) == "done"


def test_queue_full_gives_429_with_retry_after(env):
    c, q = env["client"], env["app"].state.jobs
    go = threading.Event()
    blockers = [q.submit("block", lambda job: go.wait(10)) for _ in range(q.max_queue)]
    try:
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", **SMALL})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        r = c.post("/v1/generate", json={"prompt": "a red circle", "steps_base": 1, "width": 32, "height": 32})
        assert r.status_code == 429
    finally:
        go.set()
    assert all(b.future.result(10) for b in blockers)


def test_job_queue_runs_one_at_a_time_and_survives_cancelled_waiters():
    q = JobQueue(max_queue=3)
    running, peak, lock = [0], [0], threading.Lock()

    def work(job):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return job.id

    async def main():
        jobs = [q.submit("t", work) for _ in range(3)]
        with pytest.raises(QueueFull):
            q.submit("t", work)
        waiter = asyncio.ensure_future(jobs[0].wait())
        await asyncio.sleep(0)
        waiter.cancel()  # the client went away
        return [await j.wait() for j in jobs[1:]], jobs[0]

    rest, first = asyncio.run(main())
    assert first.future.result(5) == first.id  # the abandoned job still ran to the end
    assert rest == [f"job-{i}" for i in (2, 3)] and peak[0] == 1
    q.close(5)
    assert q.submit("t", work).future.result(5) == "job-4"  # a job accepted after close still runs
    q.close(5)


def test_client_disconnect_does_not_kill_the_job(env):
    app = env["app"]
    before = app.state.jobs.completed
    with BackgroundServer(app) as url:
        host, port = url.rsplit("//", 1)[1].split(":")
        body = json.dumps({"prompt": "an orange triangle", "seed": 99, "save_images": True, **SMALL}).encode()
        s = socket.create_connection((host, int(port)))
        s.sendall(
            b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(0.2)
        s.close()  # gone before the answer
        deadline = time.time() + 30
        while app.state.jobs.completed == before and time.time() < deadline:
            time.sleep(0.05)
    runs = env["app"].state.store.index.list(limit=5)
    run = next(r for r in runs if r["sd_prompt"] == "an orange triangle")
    # the index keeps paths relative to the log's folder; the store resolves them
    assert run["best_seed"] == 99 and env["app"].state.store.resolve_path(run["img_path"], run).is_file()
