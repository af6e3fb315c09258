"""LoRA on every route, A1111 prompt weighting and long prompts, clip skip, textual-inversion embeddings.

Tiny random SD 1.5 / SDXL pipelines of the real classes; LoRAs made here with peft on their UNet and text encoder,
saved the diffusers way; an embedding is a random vector of the text encoder's width."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bestshot import generate
from bestshot.errors import BestshotError
from bestshot.models import lora as lora_files
from bestshot.models.loader import load_pipeline
from bestshot.prompts import weighting
from bestshot.prompts.attention import parse, plain
from bestshot.prompts.extra_networks import extract

peft = pytest.importorskip("peft")

SMALL = dict(steps_base=2, height=64, width=64, clip_min=-1.0, style_suffix="", negative_prompt="blurry", n_images=1)


def make_lora(model: str, path: Path, seed: int, sdxl: bool = False) -> Path:
    """A rank-4 LoRA on the tiny UNet's attention and the text encoder's projections (non-zero B: it changes
    images), saved with the pipeline's ``save_lora_weights`` as .safetensors."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    pipe = cls.from_pretrained(model)
    torch.manual_seed(seed)
    parts = {"unet_lora_layers": (pipe.unet, ["to_q", "to_k", "to_v", "to_out.0"])}
    parts["text_encoder_lora_layers"] = (pipe.text_encoder, ["q_proj", "k_proj", "v_proj", "out_proj"])
    layers = {}
    for key, (module, targets) in parts.items():
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=targets), module)
        with torch.no_grad():
            for n, p in module.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 1.0)
        layers[key] = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
    path.parent.mkdir(parents=True, exist_ok=True)
    cls.save_lora_weights(path.parent, weight_name=path.name, **layers)
    return path


@pytest.fixture(scope="module")
def lora_root(tiny_sd15, tiny_sdxl, tmp_path_factory):
    """``<root>/models/Lora`` (beside ``<root>/o``, the output folder) with an SD 1.5 LoRA (trigger words in a
    .txt) and an SDXL one; ``<root>/embeddings`` with a 2-vector SD 1.5 embedding."""
    root = tmp_path_factory.mktemp("prompting")
    folder = root / "models" / "Lora"
    make_lora(tiny_sd15, folder / "tinystyle.safetensors", 0)
    (folder / "tinystyle.txt").write_text("tinystyle_token\n")
    make_lora(tiny_sdxl, folder / "xl" / "xlstyle.safetensors", 1, sdxl=True)
    (root / "embeddings").mkdir()
    torch.manual_seed(3)
    save_file({"emb_params": torch.randn(2, 32) * 5}, root / "embeddings" / "shinytex.safetensors")
    return root


def _out(root: Path, tmp_path: Path) -> dict:
    return dict(out_dir=str(root / "o"), log_jsonl=str(tmp_path / "log.jsonl"))


def _img(r: dict) -> np.ndarray:
    return np.asarray(r["candidate_images"][0]).astype(int)


def _gen(prompt, model, scorer, root, tmp_path, **kw):
    return generate(
        prompt, model=model, scorer=scorer, return_candidates_images=True, **SMALL, **_out(root, tmp_path), **kw
    )


# ---------------------------------------------------------------------------------------------- syntax
def test_a1111_attention_grammar():
    assert parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).") == [
        ("a ", 1.0),
        ("house", pytest.approx(1.573)),
        (" ", 1.1),
        ("on", 1.0),
        (" a ", 1.1),
        ("hill", 0.55),
        (", sun, ", 1.1),
        ("sky", pytest.approx(1.4641)),
        (".", 1.1),
    ]
    assert parse("(unbalanced") == [("unbalanced", 1.1)]
    assert parse(r"\(literal\]") == [("(literal]", 1.0)]
    assert parse("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert plain("a (red:1.5) [blurry] circle") == "a red blurry circle"
    assert extract("a cat, <lora:tiny:0.8>, <LyCo:other>") == ("a cat", ["tiny:0.8", "other:1"])


# ---------------------------------------------------------------------------------------------- LoRA
def test_lora_weight_zero_equals_none_and_nothing_leaks(tiny_sd15, tiny_clip, lora_root, tmp_path):
    before = _img(_gen("a red circle", tiny_sd15, tiny_clip, lora_root, tmp_path))
    zero = _img(
        _gen("a red circle", tiny_sd15, tiny_clip, lora_root, tmp_path, loras=("tinystyle:0",), prompt_weighting=True)
    )
    one = _gen("a red circle", tiny_sd15, tiny_clip, lora_root, tmp_path, loras=("tinystyle:1",))
    after = _img(_gen("a red circle", tiny_sd15, tiny_clip, lora_root, tmp_path))
    assert np.array_equal(after, before)  # unloaded: the next request draws as if the LoRA never came
    assert np.abs(_img(one) - before).max() > 0
    # weight 0 with the trigger word prepended is not the plain prompt: compare against that prompt
    trig = _img(_gen("tinystyle_token, a red circle", tiny_sd15, tiny_clip, lora_root, tmp_path))
    assert np.array_equal(zero, trig)
    assert one["loras"][0]["name"] == "tinystyle" and one["loras"][0]["trigger_words"] == ["tinystyle_token"]
    assert one["sd_prompt"].startswith("tinystyle_token") and one["clip_prompt"] == "a red circle"
    info = Image.open(one["candidates"][0]["path"] or one["img_path"]).info["parameters"]
    assert f'Lora hashes: "tinystyle: {lora_files.short_hash(lora_root / "models/Lora/tinystyle.safetensors")}"' in info
    assert not any(load_pipeline(tiny_sd15).get_list_adapters().values())


def test_prompt_tag_is_parsed_out_and_applied(tiny_sd15, tiny_clip, lora_root, tmp_path, monkeypatch):
    seen = []
    real = weighting.prepared

    def spy(pipe, cfg, prompt, negative, seeds):
        seen.append(prompt)
        return real(pipe, cfg, prompt, negative, seeds)

    monkeypatch.setattr(weighting, "prepared", spy)
    tagged = _gen("a red circle, <lora:tinystyle:0.8>", tiny_sd15, tiny_clip, lora_root, tmp_path)
    flagged = _gen("a red circle", tiny_sd15, tiny_clip, lora_root, tmp_path, loras=("tinystyle:0.8",))
    assert np.array_equal(_img(tagged), _img(flagged))
    assert all("<lora" not in p for p in seen) and "<lora" not in tagged["clip_prompt"]
    assert tagged["settings"]["loras"] == ["tinystyle:0.8"]


def test_lora_errors_are_one_line(tiny_sd15, tiny_clip, lora_root, tmp_path):
    with pytest.raises(BestshotError) as e:
        _gen("a cat <lora:nosuch:1>", tiny_sd15, tiny_clip, lora_root, tmp_path)
    assert "nosuch" in str(e.value) and str(lora_root / "models" / "Lora") in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(BestshotError, match="another base model") as e:  # an SDXL LoRA on SD 1.5: before loading
        _gen("a cat <lora:xlstyle>", tiny_sd15, tiny_clip, lora_root, tmp_path)
    assert "\n" not in str(e.value)
    assert not any(load_pipeline(tiny_sd15).get_list_adapters().values())
    with pytest.raises(BestshotError, match="embedded model takes no LoRAs"):
        generate("a red circle <lora:tinystyle>", model="embedded", **_out(lora_root, tmp_path))


def test_sdxl_lora_and_weighting(tiny_sdxl, tiny_clip, lora_root, tmp_path):
    base = _img(_gen("a red circle", tiny_sdxl, tiny_clip, lora_root, tmp_path))
    with_lora = _img(_gen("a red circle <lora:xlstyle:1>", tiny_sdxl, tiny_clip, lora_root, tmp_path))
    weighted = _img(_gen("a (red:1.8) circle", tiny_sdxl, tiny_clip, lora_root, tmp_path))
    assert np.abs(with_lora - base).max() > 0 and np.abs(weighted - base).max() > 0
    assert np.array_equal(_img(_gen("a red circle", tiny_sdxl, tiny_clip, lora_root, tmp_path)), base)
    emb = tmp_path / "emb"
    emb.mkdir()
    torch.manual_seed(4)
    save_file({"clip_l": torch.randn(1, 32) * 5, "clip_g": torch.randn(1, 32) * 5}, emb / "xltex.safetensors")
    plain_word = _img(_gen("a xltex circle", tiny_sdxl, tiny_clip, lora_root, tmp_path))
    embedded = _img(_gen("a xltex circle", tiny_sdxl, tiny_clip, lora_root, tmp_path, embeddings_dir=str(emb)))
    assert np.abs(embedded - plain_word).max() > 0  # SDXL's clip_l / clip_g vectors, one per text encoder
    pipe = load_pipeline(tiny_sdxl)
    assert "xltex" not in pipe.tokenizer.get_vocab() and "xltex" not in pipe.tokenizer_2.get_vocab()


# ---------------------------------------------------------------------------------------------- weighting
def test_weights_long_prompts_and_clip_skip(tiny_sd15, tiny_clip, lora_root, tmp_path):
    pipe = load_pipeline(tiny_sd15)
    with weighting.prepared(pipe, _cfg(), "a red circle", "blurry", [0]) as kw:
        assert kw == {}  # a plain prompt goes to the pipeline as text: the images of before
    with weighting.prepared(load_pipeline("embedded"), _cfg(), "a red circle above a blue square", "", [0]) as kw:
        assert kw == {}  # the embedded model too (the README command's image keeps its hash: the slow test below)
    base = _img(_gen("a red circle", tiny_sd15, tiny_clip, lora_root, tmp_path))
    same = _img(_gen("a (red circle:1.0)", tiny_sd15, tiny_clip, lora_root, tmp_path))
    assert np.array_equal(same, base)  # built embeds at weight 1 are the pipeline's own encoding
    up = _gen("a (red:1.5) circle", tiny_sd15, tiny_clip, lora_root, tmp_path)
    assert np.abs(_img(up) - base).max() > 0 and up["clip_prompt"] == "a red circle"
    literal = _img(_gen("a (red:1.5) circle", tiny_sd15, tiny_clip, lora_root, tmp_path, prompt_weighting=False))
    assert np.abs(literal - _img(up)).max() > 0
    long = ", ".join(f"a red circle number {i}" for i in range(30))  # ~150 tokens
    assert len(pipe.tokenizer(long).input_ids) > 140
    assert weighting.encode(pipe, "a red circle BREAK on a blue square")[0].shape[1] == 2 * 77  # BREAK: a new chunk
    a = _img(_gen(long + ", on a blue square", tiny_sd15, tiny_clip, lora_root, tmp_path))
    b = _img(_gen(long + ", under a green moon", tiny_sd15, tiny_clip, lora_root, tmp_path))
    assert np.abs(a - b).max() > 0  # the tail past 77 tokens is read, not cut
    skip2 = _gen("a red circle", tiny_sd15, tiny_clip, lora_root, tmp_path, clip_skip=2)
    assert np.abs(_img(skip2) - base).max() > 0
    assert "Clip skip: 2" in Image.open(skip2["img_path"]).info["parameters"]


def _cfg(**kw):
    from bestshot.config import ImgCfg

    return ImgCfg(**kw)


@pytest.mark.slow
def test_readme_command_on_the_embedded_model_is_unchanged(tmp_path):
    """The README's main command: a plain prompt never takes the embeds path, so its image keeps its hash."""
    import hashlib

    r = generate(
        "a red circle above a blue square",
        preset="embedded",
        out_dir=str(tmp_path / "o"),
        log_jsonl=str(tmp_path / "l.jsonl"),
    )
    assert r["best_seed"] == 49
    assert hashlib.sha256(Image.open(r["img_path"]).tobytes()).hexdigest().startswith("37c2f7a35ba1d8dd")


# ---------------------------------------------------------------------------------------------- embeddings
def test_embedding_token_changes_the_image_and_is_unloaded(tiny_sd15, tiny_clip, lora_root, tmp_path):
    pipe = load_pipeline(tiny_sd15)
    vocab = len(pipe.tokenizer)
    before = _img(_gen("a shinytex circle", tiny_sd15, tiny_clip, lora_root, tmp_path, embeddings_dir="/nonexistent"))
    used = _img(_gen("a shinytex circle", tiny_sd15, tiny_clip, lora_root, tmp_path))
    assert np.abs(used - before).max() > 0
    assert len(pipe.tokenizer) == vocab and "shinytex" not in pipe.tokenizer.get_vocab()
    again = _img(_gen("a shinytex circle", tiny_sd15, tiny_clip, lora_root, tmp_path, embeddings_dir="/nonexistent"))
    assert np.array_equal(again, before)


# ---------------------------------------------------------------------------------------------- HTTP
def test_server_lists_loras_embeddings_and_honours_tags(tiny_sd15, tiny_clip, lora_root):
    from fastapi.testclient import TestClient

    from bestshot.server import create_app

    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(lora_root / "o"))
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        items = c.get("/sdapi/v1/loras").json()
        assert {i["name"] for i in items} == {"tinystyle", "xlstyle"}
        assert set(items[0]) == {"name", "alias", "path", "metadata"}
        assert c.post("/sdapi/v1/refresh-loras").status_code == 200
        flags = c.get("/sdapi/v1/cmd-flags").json()
        assert flags["lora_dir"] == str(lora_root / "models" / "Lora")
        assert flags["embeddings_dir"] == str(lora_root / "embeddings")
        emb = c.get("/sdapi/v1/embeddings").json()
        assert emb["loaded"]["shinytex"]["vectors"] == 2 and emb["loaded"]["shinytex"]["shape"] == 32
        body = dict(
            prompt="a red circle <lora:tinystyle:0.8>",
            steps=2,
            width=64,
            height=64,
            seed=7,
            override_settings={"CLIP_stop_at_last_layers": 2},
        )
        r = c.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert 'Lora hashes: "tinystyle: ' in info["infotexts"][0] and "Clip skip: 2" in info["infotexts"][0]
        assert "<lora" not in info["infotexts"][0].split("\n")[0]
        bad = c.post("/sdapi/v1/txt2img", json={**body, "prompt": "a cat <lora:nosuch>"})
        assert bad.status_code == 422 and "prompt" in bad.text and "nosuch" in bad.json()["detail"]
        skip = c.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"CLIP_stop_at_last_layers": 0}})
        assert skip.status_code == 422 and "CLIP_stop_at_last_layers" in skip.text
        native = dict(prompt="a red circle", steps_base=2, width=64, height=64, n_images=1, loras=["tinystyle:0.5"])
        r = c.post("/v1/generate", json=native)
        assert r.status_code == 200, r.text
        assert r.json()["loras"][0]["name"] == "tinystyle" and r.json()["settings"]["loras"] == ["tinystyle:0.5"]
        bad = c.post("/v1/generate", json={**native, "loras": ["nosuch"]})
        assert bad.status_code == 422 and "loras" in bad.text and "nosuch" in bad.text
        init = base64.b64encode(_png(Image.new("RGB", (64, 64), (200, 30, 30)))).decode()
        i2i = c.post("/sdapi/v1/img2img", json={**body, "init_images": [init], "denoising_strength": 0.6})
        assert i2i.status_code == 200, i2i.text
        text = json.loads(i2i.json()["info"])["infotexts"][0]
        assert 'Lora hashes: "tinystyle: ' in text and "<lora" not in text


def _png(im: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_sillytavern_request_with_a_lora_tag(tiny_sd15, tiny_clip, lora_root, tmp_path):
    """tests/fixtures/clients/sillytavern_lora.json replayed: every step answers, the LoRA and clip skip apply."""
    from fastapi.testclient import TestClient

    from bestshot.server import create_app
    from test_server_clients import FIXTURES, replay

    folder = tmp_path / "models" / "Lora"
    folder.mkdir(parents=True)
    (folder / "detail_tweaker.safetensors").write_bytes((lora_root / "models/Lora/tinystyle.safetensors").read_bytes())
    fixture = json.loads((FIXTURES / "sillytavern_lora.json").read_text())
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(tmp_path / "o"))
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        done = replay(c, fixture, tiny_sd15)
    r = done["gen"]
    assert r.status_code == 200, r.text
    assert r.json()["images"] and r.json()["images"][0]
    info = json.loads(r.json()["info"])
    assert 'Lora hashes: "detail_tweaker: ' in info["infotexts"][0] and "Clip skip: 2" in info["infotexts"][0]
