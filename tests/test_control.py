"""ControlNet, IP-Adapter, variation seeds, custom VAE and the image safety check, on tiny random models of the
real diffusers / transformers classes (built here from configs and saved with save_pretrained)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bestshot import generate
from bestshot.errors import BestshotError

SMALL = dict(steps_base=2, height=32, width=32, clip_min=-1.0, style_suffix="", negative_prompt="", exact_best=False)


def _images(r):
    return [np.asarray(im, dtype=np.int16) for im in r["candidate_images"]]


def _run(prompt, model, scorer, out, **kw):
    return generate(prompt, model=model, scorer=scorer, return_candidates_images=True, **{**SMALL, **kw}, **out)


@pytest.fixture(scope="module")
def control_image(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("ctl") / "edges.png"
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(path)
    return str(path)


def _controlnet(unet, folder: Path) -> str:
    """A tiny ControlNetModel shaped on the pipeline's UNet; its zero convolutions get random weights (else every
    scale would add nothing)."""
    from diffusers import ControlNetModel

    torch.manual_seed(3)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    with torch.no_grad():
        for block in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            block.weight.normal_(0, 0.5)
    net.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def sd15_controlnet(tiny_sd15, tmp_path_factory):
    from bestshot.models.loader import load_pipeline

    pipe = load_pipeline(tiny_sd15, device="cpu")
    root = tmp_path_factory.mktemp("cn_models")
    _controlnet(pipe.unet, root / "tiny_canny")
    return root


# ------------------------------------------------------------------------------------------------ ControlNet
def test_controlnet_scale_zero_equals_none_and_above_zero_differs(
    tiny_sd15, tiny_clip, out, control_image, sd15_controlnet
):
    kw = dict(n_images=2, seed_base=5, controlnet_dir=str(sd15_controlnet))
    plain = _run("a cat", tiny_sd15, tiny_clip, out, **kw)
    cn = dict(controlnets=("tiny_canny",), control_images=(control_image,), control_modules=("canny",))
    zero = _run("a cat", tiny_sd15, tiny_clip, out, **kw, **cn, control_scales=(0.0,))
    one = _run("a cat", tiny_sd15, tiny_clip, out, **kw, **cn, control_scales=(1.0,))
    assert all(np.array_equal(a, b) for a, b in zip(_images(plain), _images(zero)))
    assert all(np.abs(a - b).max() > 0 for a, b in zip(_images(plain), _images(one)))
    assert one["settings"]["controlnets"] == ["tiny_canny"]


def test_multicontrolnet_and_guidance_window(tiny_sd15, tiny_clip, out, control_image, sd15_controlnet):
    kw = dict(n_images=1, seed_base=5, controlnet_dir=str(sd15_controlnet))
    cn = dict(controlnets=("tiny_canny", "tiny_canny"), control_images=(control_image, control_image))
    both = _run("a cat", tiny_sd15, tiny_clip, out, **kw, **cn, control_modules=("invert", "lineart_standard"))
    late = _run("a cat", tiny_sd15, tiny_clip, out, **kw, **cn, control_start=(0.5,), control_end=(1.0,))
    assert np.abs(_images(both)[0] - _images(late)[0]).max() > 0
    info = both["candidates"][0]["path"]
    from bestshot.store import read_png_info

    text = read_png_info(info)["parameters"]
    assert 'ControlNet 0: "Module: invert, Model: tiny_canny' in text and "ControlNet 1:" in text


def test_sdxl_controlnet(tiny_sdxl, tiny_clip, out, control_image, tmp_path):
    from bestshot.models.loader import load_pipeline

    folder = _controlnet(load_pipeline(tiny_sdxl, device="cpu").unet, tmp_path / "xl_net")
    kw = dict(n_images=1, seed_base=1, controlnets=(folder,), control_images=(control_image,))
    zero = _run("a dog", tiny_sdxl, tiny_clip, out, **kw, control_scales=(0.0,))
    plain = _run("a dog", tiny_sdxl, tiny_clip, out, n_images=1, seed_base=1)
    one = _run("a dog", tiny_sdxl, tiny_clip, out, **kw, control_scales=(0.8,), control_modules=("canny:50:150",))
    assert np.array_equal(_images(zero)[0], _images(plain)[0])
    assert np.abs(_images(one)[0] - _images(plain)[0]).max() > 0


def test_control_preprocessors_need_no_weights():
    from bestshot.models import control_preprocess as cp

    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 24, 3), dtype=np.uint8))
    for name in cp.MODULES:
        got = cp.run(name, img)
        assert got.size == img.size and got.mode == "RGB"
    assert np.array_equal(np.asarray(cp.run("invert", img)), 255 - np.asarray(img))
    assert set(np.unique(np.asarray(cp.run("canny:10:20", img)))) <= {0, 255}
    with pytest.raises(BestshotError, match="needs detector weights"):
        cp.run("openpose_full", img)
    with pytest.raises(BestshotError, match="unknown ControlNet preprocessor"):
        cp.run("sharpen", img)


def test_controlnet_bad_input_is_one_line(tiny_sd15, tiny_clip, out, tmp_path, control_image, sd15_controlnet):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    kw = dict(n_images=1, controlnet_dir=str(sd15_controlnet))
    with pytest.raises(BestshotError, match=r"control_images\[0\].*not a readable image"):
        _run("a cat", tiny_sd15, tiny_clip, out, **kw, controlnets=("tiny_canny",), control_images=(str(bad),))
    with pytest.raises(BestshotError, match="ControlNet model 'nope' not found.*there: tiny_canny"):
        _run("a cat", tiny_sd15, tiny_clip, out, **kw, controlnets=("nope",), control_images=(control_image,))
    with pytest.raises(BestshotError, match="HF_HUB_OFFLINE"):
        _run(
            "a cat",
            tiny_sd15,
            tiny_clip,
            out,
            **kw,
            controlnets=("lllyasviel/no-such-net",),
            control_images=(control_image,),
        )
    with pytest.raises(BestshotError, match="one control image per ControlNet"):
        _run("a cat", tiny_sd15, tiny_clip, out, **kw, controlnets=("tiny_canny",))


def test_controlnet_cli_refusals_are_one_line(tiny_sd15, tmp_path, capsys, monkeypatch):
    from helpers import run_cli

    code, help_text, _ = run_cli(["generate", "--help"], capsys, monkeypatch)
    assert "--control-image" in help_text  # the flags come from ImgCfg's field metadata
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG not really")
    code, _, err = run_cli(
        [
            "generate",
            "a cat",
            "--model",
            tiny_sd15,
            "--controlnet",
            str(tmp_path / "missing_net"),
            "--control-image",
            str(bad),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
        monkeypatch,
    )
    assert code != 0 and "Traceback" not in err
    assert len([ln for ln in err.strip().splitlines() if ln.strip()]) == 1, err


# ------------------------------------------------------------------------------------------------ IP-Adapter
def _ip_adapter(unet, folder: Path) -> str:
    """A tiny IP-Adapter in the layout load_ip_adapter reads: image_proj + ip_adapter tensors in one safetensors
    file, and a CLIPVisionModelWithProjection in image_encoder/ (diffusers' own test recipe)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor
    from diffusers.models.embeddings import ImageProjection
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(4)
    cross = unet.config.cross_attention_dim
    blocks = unet.config.block_out_channels
    tensors, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        sd = IPAdapterAttnProcessor(hidden_size=hidden, cross_attention_dim=cross, scale=1.0).state_dict()
        tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = sd["to_k_ip.0.weight"] * 20
        tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = sd["to_v_ip.0.weight"] * 20
        key_id += 2
    proj = ImageProjection(cross_attention_dim=cross, image_embed_dim=cross, num_image_text_embeds=4).state_dict()
    tensors.update(
        {
            "image_proj.proj.weight": proj["image_embeds.weight"],
            "image_proj.proj.bias": proj["image_embeds.bias"],
            "image_proj.norm.weight": proj["norm.weight"],
            "image_proj.norm.bias": proj["norm.bias"],
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "ip-adapter_tiny.safetensors"))
    enc = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=cross,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            intermediate_size=37,
        )
    )
    enc.save_pretrained(folder / "image_encoder")
    return str(folder)


def test_ip_adapter_scale_zero_equals_none_and_is_unloaded_after(tiny_sd15, tiny_clip, out, control_image, tmp_path):
    from bestshot.models.loader import load_pipeline

    pipe = load_pipeline(tiny_sd15, device="cpu")
    folder = _ip_adapter(pipe.unet, tmp_path / "ip")
    procs = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    kw = dict(n_images=2, seed_base=3)
    before = _run("a cat", tiny_sd15, tiny_clip, out, **kw)
    ip = dict(ip_adapter=folder, ip_image=control_image)
    zero = _run("a cat", tiny_sd15, tiny_clip, out, **kw, **ip, ip_scale=0.0)
    one = _run("a cat", tiny_sd15, tiny_clip, out, **kw, **ip, ip_scale=1.0)
    after = _run("a cat", tiny_sd15, tiny_clip, out, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(_images(before), _images(zero)))
    assert all(np.abs(a - b).max() > 0 for a, b in zip(_images(before), _images(one)))
    assert all(np.array_equal(a, b) for a, b in zip(_images(before), _images(after)))
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == procs
    assert pipe.image_encoder is None and pipe.unet.encoder_hid_proj is None
    assert one["settings"]["ip_adapter"] == folder


def test_ip_adapter_bad_input(tiny_sd15, tiny_clip, out, control_image, tmp_path):
    with pytest.raises(BestshotError, match="no .safetensors/.bin IP-Adapter weights"):
        _run("a cat", tiny_sd15, tiny_clip, out, n_images=1, ip_adapter=str(tmp_path), ip_image=control_image)
    with pytest.raises(BestshotError, match="go together"):
        _run("a cat", tiny_sd15, tiny_clip, out, n_images=1, ip_adapter=str(tmp_path))


# ------------------------------------------------------------------------------------------------ variation seeds
def test_variation_seeds(tiny_sd15, tiny_clip, out):
    kw = dict(n_images=2, seed_base=11)
    plain = _run("a cat", tiny_sd15, tiny_clip, out, **kw)
    zero = _run("a cat", tiny_sd15, tiny_clip, out, **kw, subseed=99, subseed_strength=0.0)
    half = _run("a cat", tiny_sd15, tiny_clip, out, **kw, subseed=99, subseed_strength=0.5)
    again = _run("a cat", tiny_sd15, tiny_clip, out, **kw, subseed=99, subseed_strength=0.5)
    other = _run("a cat", tiny_sd15, tiny_clip, out, **kw, subseed=7, subseed_strength=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(_images(plain), _images(zero)))
    assert all(np.abs(a - b).max() > 0 for a, b in zip(_images(plain), _images(half)))
    assert all(np.array_equal(a, b) for a, b in zip(_images(half), _images(again)))
    assert all(np.abs(a - b).max() > 0 for a, b in zip(_images(half), _images(other)))
    from bestshot.store import read_png_info

    text = read_png_info(half["candidates"][1]["path"])["parameters"]
    assert "Variation seed: 100, Variation seed strength: 0.5" in text  # candidate 1: seed 12, subseed 99 + 1


def test_variation_latents_follow_a1111():
    from bestshot.models.variation import slerp, variation_latents

    shape = (4, 8, 8)
    full = variation_latents([1], [2], 1.0, shape, torch.float32)
    sub = variation_latents([2], [0], 0.0, shape, torch.float32)
    assert torch.allclose(full, sub, atol=1e-5)  # strength 1 is the variation seed's own noise
    a, b = torch.randn(shape), torch.randn(shape)
    mid = slerp(0.5, a, b)
    assert mid.shape == shape and not torch.allclose(mid, (a + b) / 2)


# ------------------------------------------------------------------------------------------------ custom VAE
def test_custom_vae_changes_the_decode_and_is_restored(tiny_sd15, tiny_clip, out, tmp_path):
    from diffusers import AutoencoderKL

    from bestshot.models.loader import load_pipeline

    pipe = load_pipeline(tiny_sd15, device="cpu")
    own = pipe.vae
    torch.manual_seed(9)
    alt = AutoencoderKL.from_config(own.config)
    alt.save_pretrained(tmp_path / "vaes" / "alt-vae")
    from safetensors.torch import save_file

    save_file(alt.state_dict(), str(tmp_path / "vaes" / "alt.safetensors"))  # one file, as A1111 keeps VAEs
    kw = dict(n_images=1, seed_base=2, vae_dir=str(tmp_path / "vaes"))
    before = _run("a cat", tiny_sd15, tiny_clip, out, **kw)
    custom = _run("a cat", tiny_sd15, tiny_clip, out, **kw, vae="alt-vae")
    after = _run("a cat", tiny_sd15, tiny_clip, out, **kw, vae="Automatic")
    assert np.abs(_images(before)[0] - _images(custom)[0]).max() > 0
    assert np.array_equal(_images(before)[0], _images(after)[0])
    assert pipe.vae is own
    single = _run("a cat", tiny_sd15, tiny_clip, out, **kw, vae="alt.safetensors")
    assert np.array_equal(_images(single)[0], _images(custom)[0])
    from bestshot.store import read_png_info

    assert "VAE: alt-vae" in read_png_info(custom["img_path"])["parameters"]
    with pytest.raises(BestshotError, match="VAE 'missing' not found.*there: alt-vae, alt.safetensors"):
        _run("a cat", tiny_sd15, tiny_clip, out, **kw, vae="missing")
    assert pipe.vae is own


# ------------------------------------------------------------------------------------------------ safety check
def _safety_checker(folder: Path, concept: torch.Tensor | None, threshold: float) -> str:
    """A tiny StableDiffusionSafetyChecker whose one concept (repeated) is ``concept`` with ``threshold``."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessorPil

    torch.manual_seed(5)
    cfg = CLIPConfig(
        text_config=dict(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1, projection_dim=16
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=1,
            projection_dim=16,
        ),
        projection_dim=16,
    )
    checker = StableDiffusionSafetyChecker(cfg)
    with torch.no_grad():
        if concept is not None:
            checker.concept_embeds.copy_(concept.expand_as(checker.concept_embeds))
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(100.0)  # never "special care"
    checker.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def test_safety_checker_ranks_flagged_last_and_counts_them(tiny_sd15, tiny_clip, out, tmp_path):
    from bestshot.scoring import safety_checker as sc

    kw = dict(n_images=3, seed_base=21, save_candidates=True)
    plain = _run("a cat", tiny_sd15, tiny_clip, out, **kw)
    best = [c["seed"] for c in plain["candidates"]].index(plain["best_seed"])
    # the one concept is the plain winner's own image embedding: exactly that candidate is flagged
    probe = _safety_checker(tmp_path / "probe", None, 0.0)
    checker, processor = sc.load(probe, "cpu")
    with torch.no_grad():
        pix = processor(images=plain["candidate_images"], return_tensors="pt").pixel_values
        emb = checker.visual_projection(checker.vision_model(pix)[1])
    flag_best = _safety_checker(tmp_path / "flag_best", emb[best], 0.999)
    r = _run("a cat", tiny_sd15, tiny_clip, out, **kw, safety_checker=flag_best)
    assert r["nsfw_flagged"] == 1 and r["ok"] is True
    assert [c["nsfw"] for c in r["candidates"]] == [k == best for k in range(3)]
    assert r["best_seed"] != plain["best_seed"]
    assert r["candidates"][best]["path"] is None  # a flagged image is never written, even with save_candidates
    assert all(c["path"] for k, c in enumerate(r["candidates"]) if k != best)

    flag_all = _safety_checker(tmp_path / "flag_all", None, -5.0)
    r = _run("a cat", tiny_sd15, tiny_clip, out, **kw, safety_checker=flag_all)
    assert r["ok"] is False and r["reason"] == "nsfw_flagged" and r["nsfw_flagged"] == 3
    assert r["img_path"] is None and not any(c["path"] for c in r["candidates"])
    from bestshot.store import read_jsonl

    assert read_jsonl(out["log_jsonl"])[-1]["nsfw_flagged"] == 3


def test_safety_checker_missing_folder_is_one_line(tiny_sd15, tiny_clip, out, tmp_path):
    with pytest.raises(BestshotError, match="safety checker"):
        _run("a cat", tiny_sd15, tiny_clip, out, n_images=1, safety_checker=str(tmp_path / "none_here"))


def test_controlnet_leaves_the_pipeline_dtypes_alone(tiny_sd15, control_image, sd15_controlnet, tmp_path):
    """from_pipe casts to one dtype (float32 unless told): a half-precision pipeline must stay as it was, its
    float32 VAE included."""
    from bestshot.config import ImgCfg
    from bestshot.models import controlnet
    from bestshot.models.loader import load_pipeline

    pipe = load_pipeline(tiny_sd15, device="cpu", dtype="bfloat16")
    pipe.vae.to(torch.float32)  # as after an fp16 overflow: this VAE stays in float32
    try:
        cfg = ImgCfg(
            controlnets=("tiny_canny",),
            control_images=(control_image,),
            controlnet_dir=str(sd15_controlnet),
            height=32,
            width=32,
            out_dir=str(tmp_path),
        )
        with controlnet.prepared(pipe, cfg, "a cat", "", [1]) as kw:
            assert kw["pipe"].controlnet.dtype == torch.bfloat16 and kw["pipe"].unet is pipe.unet
        assert pipe.unet.dtype == pipe.text_encoder.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    finally:
        pipe.vae.to(torch.bfloat16)
