"""The real `webuiapi` client (PyPI) against `bestshot serve` on a loopback port."""

from __future__ import annotations

import pytest

webuiapi = pytest.importorskip("webuiapi")
pytest.importorskip("uvicorn")

from bestshot.models.registry import EMBEDDED_DIR  # noqa: E402
from bestshot.server import create_app  # noqa: E402
from bestshot.server.background import BackgroundServer  # noqa: E402
from bestshot.store import parse_parameters  # noqa: E402


def _client(url: str, **kw) -> webuiapi.WebUIApi:
    host, port = url.rsplit("//", 1)[1].split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", **kw)


def _check_txt2img(api, prompt: str, seed: int, steps: int, size: int, cfg: float = 5.0):
    res = api.txt2img(
        prompt=prompt,
        seed=seed,
        batch_size=2,
        steps=steps,
        width=size,
        height=size,
        cfg_scale=cfg,
        negative_prompt="blurry",
        save_images=True,
    )  # webuiapi sends save_images=False by default
    assert len(res.images) == 2
    assert res.info["all_seeds"] == [seed, seed + 1]  # webuiapi decodes `info` as JSON
    for i, im in enumerate(res.images):
        p = parse_parameters(im.info["parameters"])  # the PNG's own A1111 chunk reproduces the request
        assert p["prompt"] == prompt and p["negative_prompt"] == "blurry"
        assert (p["Seed"], p["Steps"], p["CFG scale"], p["Size-1"], p["Size-2"]) == (seed + i, steps, cfg, size, size)
        assert p["Sampler"] == "Euler a" and im.size == (size, size)
    return res


def test_webuiapi_client_end_to_end(tiny_sd15, tiny_clip, tmp_path):
    app = create_app(
        model=tiny_sd15,
        scorer=tiny_clip,
        out_dir=str(tmp_path / "images_out"),
        interrogate_cache=str(tmp_path / "cache"),
    )
    with BackgroundServer(app) as url:
        api = _client(url)
        res = _check_txt2img(api, "a red circle left of a blue square", seed=1234, steps=2, size=32)
        stored = res.info["bestshot"]["images"]
        assert all((tmp_path / "images_out" / x["file"]).is_file() for x in stored)

        info = api.png_info(res.images[1])
        assert info.parameters["Seed"] == "1235" and info.parameters["Prompt"] == "a red circle left of a blue square"
        assert info.info.startswith("a red circle")

        up = api.extra_single_image(image=res.images[0], upscaler_1="R-ESRGAN 4x+", upscaling_resize=2)
        assert up.image.size == (64, 64)

        cap = api.interrogate(res.images[0])
        assert isinstance(cap.info, str) and cap.info.strip()

        assert api.get_sd_models()[0]["title"] == tiny_sd15
        assert api.get_options()["sd_model_checkpoint"] == tiny_sd15
        assert "Euler a" in [s["name"] for s in api.get_samplers()]
        assert set(api.get_progress()) >= {"progress", "eta_relative", "state"}


def test_webuiapi_basic_auth(tiny_sd15, tiny_clip, tmp_path):
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(tmp_path / "o"), api_auth="user:pw")
    with BackgroundServer(app) as url:
        with pytest.raises(RuntimeError, match="401"):
            _client(url).txt2img(prompt="a red circle", steps=1, width=32, height=32)
        api = _client(url, username="user", password="pw")
        assert len(api.txt2img(prompt="a red circle", steps=1, width=32, height=32).images) == 1


@pytest.mark.skipif(not (EMBEDDED_DIR / "model_index.json").exists(), reason="the embedded model is not trained yet")
def test_webuiapi_on_the_embedded_model(tmp_path):
    import json

    defaults = (
        json.loads((EMBEDDED_DIR / "bestshot_defaults.json").read_text())
        if (EMBEDDED_DIR / "bestshot_defaults.json").exists()
        else {}
    )
    size = int(defaults.get("width", 64))
    app = create_app(model="embedded", out_dir=str(tmp_path / "images_out"))
    with BackgroundServer(app) as url:
        # sampler "" keeps the model's own scheduler
        api = webuiapi.WebUIApi(host=url.rsplit("//", 1)[1].split(":")[0], port=int(url.rsplit(":", 1)[1]), sampler="")
        res = api.txt2img(prompt="a red circle", seed=7, batch_size=2, steps=4, width=size, height=size, cfg_scale=3.0)
        assert len(res.images) == 2 and res.info["all_seeds"] == [7, 8]
        p = parse_parameters(res.images[0].info["parameters"])
        assert (p["prompt"], p["Seed"], p["Steps"], p["Size-1"]) == ("a red circle", 7, 4, size)
        assert api.png_info(res.images[1]).parameters["Seed"] == "8"
        up = api.extra_single_image(image=res.images[0], upscaler_1="Lanczos", upscaling_resize=2)
        assert up.image.size == (2 * size, 2 * size)
        # (interrogate on the embedded CLIP first embeds the whole world grammar: minutes, once per machine;
        # the tiny-model test above covers the route)


def test_webuiapi_every_wrapped_route(tiny_sd15, tiny_clip, tmp_path):
    """Each webuiapi method whose A1111 route bestshot serves (artist-categories / artists left A1111 long ago)."""
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(tmp_path / "images_out"))
    with BackgroundServer(app) as url:
        api = _client(url)
        for name in (
            "get_samplers",
            "get_sd_vae",
            "get_upscalers",
            "get_latent_upscale_modes",
            "get_loras",
            "get_sd_models",
            "get_hypernetworks",
            "get_face_restorers",
            "get_realesrgan_models",
            "get_prompt_styles",
            "get_scripts",
            "get_embeddings",
            "get_memory",
            "get_schedulers",
            "get_cmd_flags",
            "get_options",
            "get_progress",
            "refresh_checkpoints",
            "interrupt",
            "skip",
        ):
            getattr(api, name)()  # webuiapi raises on a non-JSON or error answer
        assert "karras" in api.util_get_scheduler_names()  # A1111's names; crashed on a 404 before
        assert api.util_get_model_names() == [tiny_sd15]
        api.util_set_model(tiny_sd15)
        api.set_options({"bestshot_best_of": 2})
        assert api.get_options()["bestshot_best_of"] == 2
        res = api.txt2img(
            prompt="a red circle", seed=5, steps=2, width=32, height=32, sampler_name="DPM++ 2M", scheduler="Karras"
        )
        assert res.info["bestshot"]["best_of"] == 2 and res.info["sampler_name"] == "DPM++ 2M Karras"
        batch = api.extra_batch_images(images=[res.image, res.image], upscaler_1="Lanczos", upscaling_resize=2)
        assert [im.size for im in batch.images] == [(64, 64), (64, 64)]
        assert api.png_info(res.image).parameters["Prompt"] == "a red circle"
        img = api.img2img(
            images=[res.image], prompt="a red circle", steps=4, denoising_strength=0.5, width=32, height=32, seed=1
        )
        assert img.image.size == (32, 32)
