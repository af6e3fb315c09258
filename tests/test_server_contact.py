"""What real A1111 clients send with their own defaults, and what A1111 does with it: CORS for browser
apps, bodies without a JSON Content-Type, sizes the embedded model cannot draw, A1111's lenient values
(null for defaults, fractional step counts, empty prompts), checkpoints by model_name, /skip, and the
small answers clients read ({} from /interrupt, /options fields, /internal routes)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from bestshot.server import ServerSettings, create_app  # noqa: E402

FAST = {"prompt": "a red circle", "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    app = create_app(out_dir=str(tmp_path_factory.mktemp("contact") / "o"))
    with TestClient(app, base_url="http://localhost:7860") as c:
        yield c


def _info(r) -> dict:
    assert r.status_code == 200, r.text
    return json.loads(r.json()["info"])


# ------------------------------------------------------------------------------------------------ CORS


def test_preflight_and_answers_carry_cors_for_a_local_browser_app(emb):
    pre = emb.options(
        "/sdapi/v1/txt2img",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in pre.headers["access-control-allow-methods"]
    r = emb.get("/sdapi/v1/sd-models", headers={"Origin": "http://127.0.0.1:5173"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"


def test_other_sites_are_not_allowed_by_default(emb):
    pre = emb.options(
        "/sdapi/v1/txt2img", headers={"Origin": "https://example.com", "Access-Control-Request-Method": "POST"}
    )
    assert pre.status_code == 400 and "access-control-allow-origin" not in pre.headers
    r = emb.get("/sdapi/v1/sd-models", headers={"Origin": "https://example.com"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_flags_as_a1111_names_them(tmp_path):
    app = create_app(
        ServerSettings(
            out_dir=str(tmp_path / "o"),
            cors_allow_origins="https://app.example, https://b.example",
            cors_allow_origins_regex=r"https://.*\.tools\.example",
        )
    )
    with TestClient(app, base_url="http://localhost") as c:
        for origin in ("https://app.example", "https://b.example", "https://x.tools.example"):
            r = c.get("/sdapi/v1/options", headers={"Origin": origin})
            assert r.headers.get("access-control-allow-origin") == origin, origin
        assert (
            "access-control-allow-origin"
            not in c.get("/sdapi/v1/options", headers={"Origin": "http://localhost:3000"}).headers
        )


def test_serve_passes_the_cors_flags_on(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from bestshot.server import cli

    seen = {}
    monkeypatch.setattr(cli, "run_uvicorn", lambda application, host, port: seen.setdefault("app", application))
    res = CliRunner().invoke(
        cli.app,
        [
            "--out-dir",
            str(tmp_path / "o"),
            "--cors-allow-origins",
            "https://app.example",
            "--cors-allow-origins-regex",
            r"https://.*\.example",
        ],
    )
    assert res.exit_code == 0, res.output
    settings = seen["app"].state.settings
    assert (settings.cors_allow_origins, settings.cors_allow_origins_regex) == (
        "https://app.example",
        r"https://.*\.example",
    )


def test_a_bad_cors_regex_is_one_clear_error(tmp_path):
    from bestshot.errors import BestshotError

    with pytest.raises(BestshotError, match="cors-allow-origins-regex"):
        create_app(ServerSettings(out_dir=str(tmp_path / "o"), cors_allow_origins_regex="(["))


# ------------------------------------------------------------------------------------ Content-Type


@pytest.mark.parametrize("ctype", [None, "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"])
def test_json_bodies_without_a_json_content_type(emb, ctype):
    headers = {} if ctype is None else {"Content-Type": ctype}
    r = emb.post("/sdapi/v1/options", content=json.dumps({"bestshot_best_of": 1}).encode(), headers=headers)
    assert r.status_code == 200, r.text
    r = emb.post("/sdapi/v1/txt2img", content=json.dumps(FAST).encode(), headers=headers)
    assert _info(r)["prompt"] == "a red circle"
    bad = emb.post("/sdapi/v1/txt2img", content=b"prompt=a+cat", headers=headers)
    assert bad.status_code == 422 and "error" in bad.json()  # not JSON: still a 422 in A1111's shape


# ------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "size,expect",
    [
        ((1024, 1024), (32, 32)),
        ((768, 512), (48, 32)),
        ((512, 768), (32, 48)),
        ((1024, 576), (56, 32)),
        ((512, 512), (32, 32)),
    ],
)
def test_sizes_the_embedded_model_cannot_draw_map_onto_its_native_grid(emb, size, expect):
    r = emb.post("/sdapi/v1/txt2img", json={**FAST, "width": size[0], "height": size[1]})
    info = _info(r)
    assert (info["width"], info["height"]) == expect
    note = info["bestshot"]["size"]
    assert f"{size[0]}x{size[1]}" in note and f"{expect[0]}x{expect[1]}" in note
    assert ("aspect ratio kept" in note) == (size[0] * expect[1] == size[1] * expect[0])


def test_sizes_it_can_draw_are_kept_and_the_budget_still_guards(emb):
    info = _info(emb.post("/sdapi/v1/txt2img", json={**FAST, "width": 64, "height": 48}))
    assert (info["width"], info["height"]) == (64, 48) and "size" not in info["bestshot"]
    r = emb.post(
        "/sdapi/v1/txt2img", json={**FAST, "width": 1024, "height": 1024, "steps": 150, "batch_size": 16, "best_of": 4}
    )
    assert r.status_code == 422 and "budget" in r.text


# ------------------------------------------------------------------------------ A1111's lenient values


def test_nulls_mean_the_defaults_and_fractions_are_truncated(emb):
    body = {
        **FAST,
        "batch_size": None,
        "n_iter": None,
        "denoising_strength": None,
        "enable_hr": True,
        "hr_scale": 2,
        "hr_second_pass_steps": 2.5,
        "cfg_scale": None,
        "seed": None,
        "sampler_name": None,
        "send_images": None,
        "restore_faces": None,
        "width": 16,
        "height": 16,
        "steps": 2.0,
    }
    info = _info(emb.post("/sdapi/v1/txt2img", json=body))
    assert info["bestshot"]["hires"]["steps"] == 2 and info["bestshot"]["hires"]["denoising_strength"] == 0.7
    assert info["batch_size"] == 1 and info["width"] == 32


def test_img2img_null_denoising_strength_is_its_default(emb):
    from PIL import Image

    from bestshot.server.a1111 import encode_image

    init = encode_image(Image.new("RGB", (32, 32), (200, 30, 30)))
    r = emb.post("/sdapi/v1/img2img", json={**FAST, "init_images": [init], "denoising_strength": None, "steps": 4})
    assert _info(r)["denoising_strength"] == 0.75


@pytest.mark.parametrize("prompt", ["", None, "missing"])
def test_an_empty_or_missing_prompt_draws_unconditioned(emb, prompt):
    body = {k: v for k, v in FAST.items() if k != "prompt"}
    if prompt != "missing":
        body["prompt"] = prompt
    r = emb.post("/sdapi/v1/txt2img", json=body)
    info = _info(r)
    assert len(r.json()["images"]) == 1 and info["prompt"] == "" and "empty" in info["bestshot"]["prompt"]


def test_what_a1111_also_refuses_is_still_refused(emb):
    for body in ({**FAST, "steps": "many"}, {**FAST, "batch_size": 0}, {**FAST, "steps": float("inf")}):
        r = emb.post(
            "/sdapi/v1/txt2img", content=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422, body


# ------------------------------------------------------------------------------------ checkpoints


def test_sd_model_checkpoint_by_model_name_title_or_hash_suffix(tmp_path):
    from bestshot.models.registry import EMBEDDED_DIR

    folder = str(EMBEDDED_DIR)
    app = create_app(ServerSettings(model=folder, out_dir=str(tmp_path / "o"), extra_models=("embedded",)))
    with TestClient(app, base_url="http://localhost") as c:
        items = c.get("/sdapi/v1/sd-models").json()
        name = next(m["model_name"] for m in items if m["title"] == folder)
        assert name != folder  # a folder's model_name is its last part, as A1111 lists file names
        for value in ("embedded", name, f"{name} [abcdef1234]", folder):
            r = c.post("/sdapi/v1/options", json={"sd_model_checkpoint": value})
            assert r.status_code == 200 and r.json() == {}, r.text
        assert c.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == folder
        r = c.post("/sdapi/v1/txt2img", json={**FAST, "override_settings": {"sd_model_checkpoint": name}})
        assert r.status_code == 200, r.text
        r = c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope.safetensors"})
        assert r.status_code == 422 and "sd-models" in r.json()["detail"]


# ------------------------------------------------------------------------------------ samplers


@pytest.mark.parametrize(
    "name,schedule,label",
    [
        ("k_euler_a", None, "Euler a"),
        ("k_dpmpp_2m_ka", None, "DPM++ 2M Karras"),
        ("DPM++ 2M", "SGMUniform", "DPM++ 2M SGM Uniform"),
        ("DPM++ 2M SDE Heun", None, "DPM++ 2M SDE Heun"),
        ("DPM fast", None, "DPM fast"),
        ("plms", None, "PLMS"),
    ],
)
def test_a1111_sampler_aliases_and_names(emb, name, schedule, label):
    body = {**FAST, "sampler_name": name, "steps": 4, **({"scheduler": schedule} if schedule else {})}
    assert _info(emb.post("/sdapi/v1/txt2img", json=body))["sampler_name"] == label


@pytest.mark.parametrize("name", ["DPM adaptive", "DDIM CFG++", "k_dpm_ad"])
def test_samplers_bestshot_cannot_run_are_refused_by_name(emb, name):
    r = emb.post("/sdapi/v1/txt2img", json={**FAST, "sampler_name": name})
    assert r.status_code == 422 and name in r.json()["detail"] and "not available" in r.json()["detail"]


def test_samplers_list_a1111_aliases(emb):
    by_name = {s["name"]: s["aliases"] for s in emb.get("/sdapi/v1/samplers").json()}
    assert "k_euler_a" in by_name["Euler a"] and "DPM++ 2M SDE Heun" in by_name and "DPM fast" in by_name
    assert "DPM adaptive" not in by_name


# ------------------------------------------------------------------------------ small answers, ignored fields


def test_control_routes_answer_an_empty_object(emb):
    for path in ("/sdapi/v1/interrupt", "/sdapi/v1/skip"):
        assert emb.post(path).json() == {}
    assert emb.post("/sdapi/v1/options", json={"samples_format": "png"}).json() == {}
    opts = emb.get("/sdapi/v1/options").json()
    assert opts["img2img_color_correction"] is False and opts["inpainting_mask_weight"] == 1.0


def test_save_images_unset_keeps_nothing_as_a1111(emb):
    info = _info(emb.post("/sdapi/v1/txt2img", json=FAST))
    assert info["bestshot"]["saved"] is False and info["bestshot"]["images"][0]["file"] is None
    kept = _info(emb.post("/sdapi/v1/txt2img", json={**FAST, "save_images": True}))["bestshot"]["images"][0]["file"]
    assert emb.get(f"/v1/images/{kept}").status_code == 200


def test_unimplemented_a1111_features_are_named_in_info(emb):
    body = {
        **FAST,
        "subseed": 5,
        "subseed_strength": 0.3,
        "script_name": "x/y/z plot",
        "script_args": [1, 2],
        "alwayson_scripts": {"ADetailer": {"args": [True]}, "controlnet": {"args": [{"enabled": True}]}},
    }
    r = emb.post("/sdapi/v1/txt2img", json=body)
    ignored = _info(r)["bestshot"]["ignored"]
    # the embedded model draws in pixel space: no latent noise to blend (variation seeds work on SD 1.x / SDXL)
    assert {"subseed_strength", "script_name", "alwayson_scripts"} <= set(ignored) and "ADetailer" in ignored[
        "alwayson_scripts"
    ]
    assert r.json()["parameters"]["subseed_strength"] == 0.3
    assert (
        "ignored"
        not in _info(emb.post("/sdapi/v1/txt2img", json={**FAST, "alwayson_scripts": {}, "subseed": 5}))["bestshot"]
    )


def test_internal_routes_clients_read(emb):
    p = emb.post("/internal/progress", json={"id_task": "task(x1)", "id_live_preview": -1})
    assert p.status_code == 200 and {
        "active",
        "queued",
        "completed",
        "progress",
        "eta",
        "live_preview",
        "id_live_preview",
        "textinfo",
    } <= set(p.json())
    assert p.json()["active"] is False
    assert "bestshot" in emb.get("/internal/sysinfo").json()["Version"]
    assert "version" in emb.get("/config").json()


# ------------------------------------------------------------------------------------ /skip, /progress


def test_skip_skips_the_current_batch_and_finishes_the_rest(emb):
    import threading
    import time

    out = {}
    body = {**FAST, "steps": 120, "n_iter": 3, "batch_size": 1}
    th = threading.Thread(target=lambda: out.setdefault("r", emb.post("/sdapi/v1/txt2img", json=body)))
    th.start()
    seen = None
    for _ in range(3000):
        st = emb.get("/sdapi/v1/progress").json()["state"]
        if st["sampling_step"] >= 1:
            seen = st
            break
        time.sleep(0.02)
    assert seen is not None and seen["job_count"] == 3 and seen["job_no"] == 0  # A1111: n_iter, this iteration
    assert emb.post("/sdapi/v1/skip").json() == {}
    job_nos = set()
    while th.is_alive():
        st = emb.get("/sdapi/v1/progress").json()["state"]
        job_nos.add(st["job_no"])
        time.sleep(0.05)
    th.join()
    info = _info(out["r"])
    assert len(out["r"].json()["images"]) == 3 and not info["bestshot"].get("interrupted")  # the rest was drawn
    assert info["all_seeds"] == [3, 4, 5] and job_nos & {1, 2}
    assert emb.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_hires_without_save_images_leaves_no_file(tmp_path):
    app = create_app(out_dir=str(tmp_path / "o"))
    with TestClient(app, base_url="http://localhost") as c:
        info = _info(
            c.post(
                "/sdapi/v1/txt2img",
                json={**FAST, "enable_hr": True, "hr_scale": 2, "width": 16, "height": 16, "steps": 4},
            )
        )
    assert info["bestshot"]["saved"] is False and info["width"] == 32
    assert not list((tmp_path / "o").glob("*.png"))  # neither the first pass nor the hires pass
