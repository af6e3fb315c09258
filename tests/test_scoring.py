"""Scorers: CLIP cosine computed in batches equals the direct computation; truncation; config rules."""

import numpy as np
import pytest
import torch
from PIL import Image

from bestshot.config import PRESETS, ImgCfg
from bestshot.errors import BestshotError
from bestshot.models.settings import config_from_yaml, preset_config, resolve_config
from bestshot.scoring import Scorer, clip_score_100, get_scorer


def _images(n, size=40):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


def test_clip_scorer_matches_direct_cosine(tiny_clip):
    from transformers import CLIPModel

    from bestshot.models.loader import ModelCache

    scorer = get_scorer(tiny_clip, device="cpu", cache=ModelCache())
    assert isinstance(scorer, Scorer)
    scorer.batch_size = 2  # force several batches
    imgs = _images(5)
    got = scorer.score(imgs, "a red circle")

    model = CLIPModel.from_pretrained(tiny_clip).eval()
    pix = scorer.processor(images=imgs, return_tensors="pt")["pixel_values"]
    tok = scorer.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=pix)
    direct = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
    assert np.allclose(got, direct.numpy(), atol=1e-5)
    # one text per image
    per = scorer.score(imgs[:2], ["a red circle", "a blue square"])
    assert np.isclose(per[0], got[0], atol=1e-6)
    with pytest.raises(BestshotError, match="one text, or one per image"):
        scorer.score(imgs[:2], ["a", "b", "c"])


def test_truncate_to_77_tokens(tiny_clip):
    scorer = get_scorer(tiny_clip, device="cpu")
    short, cut = scorer.truncate("a red circle")
    assert (short, cut) == ("a red circle", False)
    long_text = " ".join(["lighthouse"] * 120)
    kept, cut = scorer.truncate(long_text)
    assert cut and len(scorer.tokenizer(kept)["input_ids"]) <= 77 and long_text.startswith(kept)


def test_clip_score_100():
    assert clip_score_100(0.31) == pytest.approx(31.0)
    assert clip_score_100(-0.2) == 0.0


def test_missing_scorer_is_a_clear_error(tmp_path):
    with pytest.raises(BestshotError, match="cannot load the CLIP scorer"):
        get_scorer(str(tmp_path / "nothing-here"), device="cpu")


def test_presets_match_design_document():
    assert (preset_config("fast").width, preset_config("fast").n_images, preset_config("fast").refiner) == (
        768,
        2,
        False,
    )
    q1 = preset_config("quality_1min")
    assert (q1.width, q1.height, q1.n_images, q1.refiner) == (1024, 1024, 4, True)
    qm = preset_config("quality_max")
    assert qm.model == "stabilityai/stable-diffusion-3.5-large" and qm.width == 1024 and qm.n_images == 4
    c = ImgCfg()
    assert (c.n_images, c.seed_base, c.steps_base, c.guidance) == (4, 42, 40, 7.5)
    # the design document's clip_min 0.22 is now a CLIP scorer's default gate (score_min unset = the scorer's)
    from bestshot.scoring import CLIPScorer

    assert c.score_min is None and c.clip_min is None and CLIPScorer.default_min == 0.22
    assert set(PRESETS) >= {"fast", "quality_1min", "quality_max", "custom"}


def test_yaml_roundtrip_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: fast\nn_images: 3\nguidance: 5.5\n")
    cfg = config_from_yaml(f)
    assert (cfg.preset, cfg.n_images, cfg.guidance, cfg.width) == ("fast", 3, 5.5, 768)
    cfg = resolve_config(cfg, n_images=6)
    assert cfg.n_images == 6
    with pytest.raises(BestshotError, match="unknown setting"):
        resolve_config(None, preset="custom", colour="red")


def test_an_exported_world_folder_gets_the_embedded_preset(tmp_path):
    """A folder written by `bestshot train export` is the embedded kind: no SDXL style suffix or negative
    prompt is added to its prompts, and its own bestshot_defaults.json fills in the settings; any other
    folder keeps the custom preset."""
    import json

    world, other = tmp_path / "world", tmp_path / "other"
    for folder, cls in ((world, "BestshotWorldPipeline"), (other, "StableDiffusionPipeline")):
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": cls}))
    (world / "bestshot_defaults.json").write_text(json.dumps({"num_inference_steps": 9, "height": 32, "width": 32}))
    cfg = resolve_config(None, model=str(world))
    assert (cfg.preset, cfg.style_suffix, cfg.negative_prompt, cfg.steps_base, cfg.model) == (
        "embedded",
        "",
        "",
        9,
        str(world),
    )
    cfg = resolve_config(None, model=str(other))
    assert cfg.preset == "custom" and cfg.style_suffix == ImgCfg().style_suffix


@pytest.mark.parametrize(
    "ref, family",
    [
        ("stabilityai/stable-diffusion-xl-base-1.0", "sdxl"),
        ("stabilityai/stable-diffusion-3.5-large", "sd3"),
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", "sd15"),
        ("someone/some-model.v2", "generic"),
    ],
)
def test_hub_ids_resolve_without_touching_the_network(ref, family):
    from bestshot.models.registry import resolve_model

    m = resolve_model(ref)
    assert (m.local, m.family.name, m.source) == (False, family, ref)


@pytest.mark.parametrize("ref", ["./missing/model", "/abs/missing", "a/b/c", "model.safetensors"])
def test_missing_paths_are_clear_errors(ref):
    from bestshot.models.registry import resolve_model

    with pytest.raises(BestshotError, match="does not exist"):
        resolve_model(ref)


def test_embedded_clip_scores_non_square_images_as_their_centre_crop():
    """Photos are rarely square: the embedded CLIP (32 px, trained on square images) centre-crops them."""
    from PIL import Image

    from bestshot import world as W
    from bestshot.scoring import get_scorer

    scorer = get_scorer("embedded", device="cpu", half=False)
    square = W.render(W.heldout_scenes(1, n_objects=1)[0][0], 64)
    wide = Image.new("RGB", (96, 64), "black")
    wide.paste(square, (16, 0))  # the square in the middle of a wider photo
    prompt = W.heldout_scenes(1, n_objects=1)[0][1]
    a, b = scorer.score([square, wide], prompt)
    assert abs(a - b) < 2e-3  # the same picture up to resampling at the crop edges
    tall = Image.new("RGB", (48, 80), "white")
    assert len(scorer.score([tall], prompt)) == 1
