"""The torch-only embedded model (bestshot.models.lite) equals the diffusers/transformers classes bit for bit.

Each part is compared with the library class on the same weights: the shipped embedded model and the tiny
random world pipeline (another configuration: 16 px, leading DDIM spacing, one attention level).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bestshot.models.lite.pipeline import LitePipeline, load_lite
from bestshot.models.registry import EMBEDDED_DIR

PROMPTS = ["a red circle above a blue square", "", "a small green cross", "a picture of " + "many " * 60 + "shapes"]


@pytest.fixture(scope="module", params=["embedded", "tiny"])
def pair(request, tiny_world):
    from bestshot.models.loader import dtype_kwargs
    from bestshot.models.world_pipeline import BestshotWorldPipeline

    folder = EMBEDDED_DIR if request.param == "embedded" else Path(tiny_world)
    lib = BestshotWorldPipeline.from_pretrained(folder, **dtype_kwargs(torch.float32))
    lib.set_progress_bar_config(disable=True)
    lite = load_lite(folder)
    assert isinstance(lite, LitePipeline)
    lite.set_progress_bar_config(disable=True)
    return folder, lib, lite


def test_parameters_are_the_library_state_dicts(pair):
    _, lib, lite = pair
    for a, b in ((lib.unet, lite.unet), (lib.clip, lite.clip)):
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) - {k for k in sa if k.endswith("position_ids")} == set(sb) - {
            k for k in sb if k.endswith("position_ids")
        }
        assert all(torch.equal(sa[k], sb[k]) for k in sb)


def test_tokenizer_equals_transformers(pair):
    _, lib, lite = pair
    for kw in (
        dict(padding="max_length", max_length=lib.tokenizer.model_max_length, truncation=True),
        dict(truncation=True),
        dict(padding=True, truncation=True),
        dict(),
    ):
        a = lib.tokenizer(PROMPTS, return_tensors="pt" if kw.get("padding") else None, **kw)
        b = lite.tokenizer(PROMPTS, return_tensors="pt" if kw.get("padding") else None, **kw)
        for key in ("input_ids", "attention_mask"):
            x, y = a[key], b[key]
            assert torch.equal(x, y) if torch.is_tensor(x) else x == y, (kw, key)
    ids = lib.tokenizer(PROMPTS[-1], add_special_tokens=False)["input_ids"]
    assert lite.tokenizer(PROMPTS[-1], add_special_tokens=False)["input_ids"] == ids
    assert lite.tokenizer.decode(ids[:20]) == lib.tokenizer.decode(ids[:20])
    assert lite.tokenizer.model_max_length == lib.tokenizer.model_max_length


def test_clip_towers_equal_transformers(pair):
    from bestshot.models import maskclip

    _, lib, lite = pair
    enc = lib.tokenizer(
        PROMPTS, padding="max_length", max_length=lib.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        a, b = lib.clip.text_model(input_ids=enc.input_ids), lite.clip.text_model(input_ids=enc.input_ids)
        assert torch.equal(a.last_hidden_state, b.last_hidden_state) and torch.equal(a.pooler_output, b.pooler_output)
        args = dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask)  # padding masked (the scorer's call)
        assert torch.equal(lib.clip.get_text_features(**args).pooler_output, lite.clip.get_text_features(**args))
        one = lib.tokenizer(["a blue square"], truncation=True, return_tensors="pt")
        args = dict(input_ids=one.input_ids, attention_mask=one.attention_mask)
        assert torch.equal(lib.clip.get_text_features(**args).pooler_output, lite.clip.get_text_features(**args))
        size = lib.clip.config.vision_config.image_size
        pix = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
        assert torch.equal(
            lib.clip.get_image_features(pixel_values=pix).pooler_output, lite.clip.get_image_features(pixel_values=pix)
        )
        for x, y in zip(maskclip.image_features(lib.clip, pix), maskclip.image_features(lite.clip, pix)):
            assert torch.equal(x, y)
        dense = maskclip.image_features(lite.clip, pix)[1]  # the spatial guidance's: the last layer skipped
        assert torch.equal(maskclip.dense_features(lite.clip, pix), dense)
        assert torch.equal(maskclip.dense_features(lib.clip, pix), dense)
    grads = []
    for features in (
        lambda p: maskclip.image_features(lite.clip, p)[1],
        lambda p: maskclip.dense_features(lite.clip, p),
    ):
        x = pix.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(features(x)[:, :5].sum(), x)[0])  # as the spatial guidance differentiates
    assert torch.equal(*grads)


def test_image_processor_equals_transformers(pair):
    from bestshot.scoring import scorer_from_pipeline

    _, lib, lite = pair
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((32, 32), (48, 64), (40, 20))]
    a = scorer_from_pipeline(lib).processor(images=ims, return_tensors="pt")["pixel_values"]
    b = scorer_from_pipeline(lite).processor(images=ims, return_tensors="pt")["pixel_values"]
    assert a.dtype == b.dtype and torch.equal(a, b)


def test_unet_equals_diffusers(pair):
    _, lib, lite = pair
    g = torch.Generator().manual_seed(1)
    c = lib.unet.config
    x = torch.randn(3, c.in_channels, c.sample_size, c.sample_size, generator=g)
    ctx = torch.randn(3, 7, c.cross_attention_dim, generator=g)
    cls = torch.randn(3, c.projection_class_embeddings_input_dim, generator=g) if c.class_embed_type else None
    with torch.no_grad():
        for t in (torch.tensor(999), torch.tensor(5), 500):
            a = lib.unet(x, t, encoder_hidden_states=ctx, class_labels=cls).sample
            assert torch.equal(a, lite.unet(x, t, encoder_hidden_states=ctx, class_labels=cls).sample)


def test_unet_other_configuration_equals_diffusers():
    """Linear projections, two heads, three levels and a side the UNet does not halve evenly."""
    from diffusers import UNet2DConditionModel

    from bestshot.models.lite.unet import LiteUNet

    torch.manual_seed(0)
    ref = UNet2DConditionModel(
        sample_size=12,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
        use_linear_projection=True,
    ).eval()
    lite = LiteUNet(dict(ref.config))
    lite.load_state_dict(ref.state_dict())
    x, ctx = torch.randn(2, 3, 10, 10), torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.equal(ref(x, 3, encoder_hidden_states=ctx).sample, lite(x, 3, encoder_hidden_states=ctx).sample)


def test_ddim_equals_diffusers(pair):
    from diffusers import DDIMScheduler

    from bestshot.models.lite.ddim import DDIMScheduler as LiteDDIM

    _, lib, lite = pair
    for spacing in ("trailing", "leading", "linspace"):
        a = DDIMScheduler.from_config(lib.scheduler.config, timestep_spacing=spacing)
        b = LiteDDIM.from_config(lite.scheduler.config, timestep_spacing=spacing)
        a.set_timesteps(7)
        b.set_timesteps(7)
        assert torch.equal(a.timesteps, b.timesteps)
        g = torch.Generator().manual_seed(2)
        x = torch.randn(2, 3, 8, 8, generator=g)
        for t in a.timesteps:
            out = torch.randn(2, 3, 8, 8, generator=g)
            sa, sb = a.step(out, t, x), b.step(out, t, x)
            assert torch.equal(sa.prev_sample, sb.prev_sample)
            assert torch.equal(sa.pred_original_sample, sb.pred_original_sample)
            x = sa.prev_sample
        noise = torch.randn(2, 3, 8, 8, generator=g)
        assert torch.equal(a.add_noise(x, noise, a.timesteps[:1]), b.add_noise(x, noise, b.timesteps[:1]))


@pytest.mark.parametrize("kw", [dict(), dict(guidance_scale=3.0, negative_prompt="a cross"), dict(strength=0.6)])
def test_pipeline_images_equal_diffusers(pair, kw):
    """Whole calls, spatial guidance (a relation prompt) and classifier-free guidance and SDEdit included."""
    _, lib, lite = pair
    kw = dict(kw)
    if "strength" in kw:
        kw["init_image"] = Image.new("RGB", (32, 32), (200, 30, 30))
    outs = []
    for pipe in (lib, lite):
        gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
        outs.append(
            pipe(
                PROMPTS[0],
                num_images_per_prompt=2,
                num_inference_steps=4,
                generator=gens,
                output_type="pt",
                spatial_guidance_scale=5.0,
                **kw,
            ).images
        )
    assert torch.equal(outs[0], outs[1])


def test_loader_uses_the_torch_only_pipeline_and_falls_back(tiny_world, monkeypatch):
    from bestshot.models.loader import ModelCache, load_pipeline

    pipe = load_pipeline(tiny_world, device="cpu", cache=ModelCache())
    assert isinstance(pipe, LitePipeline)
    assert type(load_pipeline(tiny_world, device="cpu", scheduler="ddim", cache=ModelCache()).scheduler).__module__ == (
        "bestshot.models.lite.ddim"
    )
    euler = load_pipeline(tiny_world, device="cpu", scheduler="euler", cache=ModelCache())
    assert type(euler.scheduler).__name__ == "EulerDiscreteScheduler"  # another sampler: diffusers', on the same pipe
    monkeypatch.setenv("BESTSHOT_LITE", "0")
    assert type(load_pipeline(tiny_world, device="cpu", cache=ModelCache())).__name__ == "BestshotWorldPipeline"


def test_unsupported_folder_is_left_to_diffusers(tiny_world, tmp_path):
    import shutil

    folder = tmp_path / "world"
    shutil.copytree(tiny_world, folder)
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    cfg["time_embedding_type"] = "fourier"
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    assert load_lite(folder) is None


HEAVY = (
    "transformers",
    "diffusers",
    "scipy",
    "matplotlib",
    "fastapi",
    "ray",
    "peft",
    "accelerate",
    "sentence_transformers",
    "torch._dynamo",
    "huggingface_hub",
)


def _modules_after(code: str) -> set[str]:
    out = (
        subprocess.run(
            [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return {m.split(".")[0] if not m.startswith("torch._dynamo") else "torch._dynamo" for m in json.loads(out)}


def test_import_budget_of_the_generate_path():
    """Importing bestshot's generation path (and the CLI as `bestshot generate` starts it) pulls none of the heavy
    libraries."""
    loaded = _modules_after(
        "import sys; sys.argv[:] = ['bestshot', 'generate']\n"
        "import bestshot.generation, bestshot.cli, bestshot.scoring, bestshot.models.loader"
    )
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_import_budget_of_an_embedded_generate(tmp_path):
    """A whole embedded generate (load, sample with spatial guidance, score, save) imports neither diffusers nor
    transformers, nor scipy (the region scorer's masks are numpy: bestshot.scoring.masks)."""
    code = (
        "from bestshot import generate\n"
        f"r = generate('a red circle above a blue square', n_images=2, steps_base=2, out_dir={str(tmp_path)!r}, "
        f"log_jsonl={str(tmp_path / 'log.jsonl')!r})\n"
        "assert r['best_seed'] is not None"
    )
    loaded = _modules_after(code)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
