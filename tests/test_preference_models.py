"""Public preference models as scorers: real classes, tiny random weights, loaded through the real path."""

import pytest
import torch
from PIL import Image

from bestshot.errors import BestshotError
from bestshot.scoring import get_scorer
from bestshot.scoring.clip import CLIPScorer
from bestshot.scoring.preference_models import (
    ImageRewardModel,
    ImageRewardScorer,
    load_preference_model,
    save_image_reward,
)

_g = torch.Generator().manual_seed(0)
IMS = [Image.fromarray(torch.randint(0, 256, (40, 40, 3), generator=_g, dtype=torch.uint8).numpy()) for _ in range(2)]


def test_pickscore_goes_through_the_clip_path(tiny_clip):
    s = get_scorer(f"pickscore@{tiny_clip}")
    assert isinstance(s, CLIPScorer) and s.name == f"pickscore@{tiny_clip}"
    scores = s.score(IMS, "a red square")
    assert len(scores) == 2 and all(-1 <= v <= 1 for v in scores)


def test_pickscore_folder_takes_a_sibling_tokenizer_and_never_waits_on_the_hub(tiny_clip, tmp_path):
    """A PickScore folder without tokenizer files uses the sibling tokenizer/ (a pipeline-style layout); with
    neither, the hub's ViT-H-14 tokenizer is needed, and without it (HF_HUB_OFFLINE in the tests) the error is
    immediate and names it — no retry loop."""
    import shutil

    model = tmp_path / "pick" / "model"
    model.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy(f"{tiny_clip}/{name}", model / name)
    with pytest.raises(BestshotError, match="CLIP-ViT-H-14"):
        get_scorer(f"pickscore@{model}")
    shutil.copytree(tiny_clip, tmp_path / "pick" / "tokenizer")
    s = get_scorer(f"pickscore@{model}")
    assert isinstance(s, CLIPScorer) and len(s.score(IMS, "a red square")) == 2


def test_pickscore_hub_id_without_weights_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for spec in ("pickscore", "yuvalkirstain/PickScore_v1"):
        with pytest.raises(BestshotError, match="PickScore_v1"):
            load_preference_model(spec)


def _tiny_blip_folder(folder):
    from transformers import BertTokenizer, BlipConfig

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "square", "circle", "##s"]
    (folder).mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"))
    cfg = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            encoder_hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=64,
            bos_token_id=2,
            sep_token_id=3,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=32,
            patch_size=8,
            initializer_range=0.02,
        ),
    )
    torch.manual_seed(0)
    model = ImageRewardModel(cfg)
    for layer in model.mlp:  # random weights large enough that the image visibly moves the reward
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=0.5)
    return save_image_reward(model, tok, folder)


def test_image_reward_blip_head_roundtrip(tmp_path):
    folder = _tiny_blip_folder(tmp_path / "ir")
    s = get_scorer(f"imagereward@{folder}")
    assert isinstance(s, ImageRewardScorer)
    a = s.score(IMS, "a red square")
    b = s.score(IMS[::-1], ["a red square", "a red square"])
    assert len(a) == 2 and a == pytest.approx(b[::-1], abs=1e-5)
    assert abs(a[0] - a[1]) > 1e-3  # the image reaches the reward through cross-attention
    # weights of another shape are refused with the reason; missing weights too
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if not k.startswith("mlp.")}, str(folder / "model.safetensors"))
    with pytest.raises(BestshotError, match="does not match the ImageReward architecture"):
        ImageRewardScorer.from_pretrained(str(folder))
    (folder / "model.safetensors").unlink()
    with pytest.raises(BestshotError, match="model.safetensors"):
        ImageRewardScorer.from_pretrained(str(folder))


def test_image_reward_hub_checkpoint_is_a_clear_error():
    with pytest.raises(BestshotError, match="ImageReward"):
        load_preference_model("THUDM/ImageReward")


def test_hpsv2_without_open_clip_or_weights_is_a_clear_error(tmp_path):
    with pytest.raises(BestshotError, match="HPS"):
        load_preference_model("hpsv2")
    with pytest.raises(BestshotError, match="does not exist"):
        load_preference_model(f"hpsv2@{tmp_path / 'HPS_v2_compressed.pt'}")


def test_not_a_preference_model():
    assert load_preference_model("embedded") is None
    assert load_preference_model("open_clip:ViT-B-32") is None


# ------------------------------------------------------------- the original ImageReward.pt (BLIP code base)
def _to_original_layout(sd):
    """Our ImageRewardModel's state dict in the key layout of the original ImageReward code (the inverse of
    convert_image_reward, written out by hand from the BLIP ViT / med.py names)."""
    import re

    block = {
        "layer_norm1": "norm1",
        "layer_norm2": "norm2",
        "self_attn.qkv": "attn.qkv",
        "self_attn.projection": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    top = {
        "embeddings.class_embedding": "cls_token",
        "embeddings.position_embedding": "pos_embed",
        "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
        "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
        "post_layernorm.weight": "norm.weight",
        "post_layernorm.bias": "norm.bias",
    }
    out = {}
    for k, v in sd.items():
        if k.startswith("mlp."):
            out["mlp.layers." + k[4:]] = v
        elif k.startswith("text."):
            out["blip.text_encoder." + k[5:]] = v
        else:
            rest = k[len("vision.") :]
            m = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", rest)
            out["blip.visual_encoder." + (top[rest] if rest in top else f"blocks.{m[1]}.{block[m[2]]}.{m[3]}")] = v
    # what the original file also carries and ImageReward's score never reads
    out["blip.vision_proj.weight"] = torch.zeros(8, 32)
    out["blip.text_proj.weight"] = torch.zeros(8, 32)
    out["blip.text_encoder.embeddings.position_ids"] = torch.arange(64)[None]
    return out


def test_original_image_reward_checkpoint_converts_and_scores_the_same(tmp_path):
    from transformers import BertTokenizer, BlipConfig

    from bestshot.scoring.preference_models import convert_image_reward

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "square", "circle"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(tmp_path / "vocab.txt"))
    # one head (what the shapes imply below 64 channels) and BLIP's ViT epsilon, as the original code has
    cfg = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            encoder_hidden_size=32,
            intermediate_size=37,
            num_attention_heads=1,
            num_hidden_layers=2,
            max_position_embeddings=64,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=1,
            num_hidden_layers=2,
            image_size=32,
            patch_size=8,
            layer_norm_eps=1e-6,
        ),
    )
    torch.manual_seed(1)
    ours = ImageRewardModel(cfg)
    for layer in ours.mlp:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=0.5)
    original = _to_original_layout(ours.state_dict())
    assert set(convert_image_reward(original)) == set(ours.state_dict())
    pt = tmp_path / "ImageReward.pt"
    torch.save(original, pt)

    s = get_scorer(f"imagereward@{pt}")  # the file itself; its folder (vocab.txt beside it) works too
    assert isinstance(s, ImageRewardScorer)
    reference = ImageRewardScorer(ours, tok, name="ref")
    assert s.score(IMS, "a red square") == pytest.approx(reference.score(IMS, "a red square"), abs=1e-5)
    assert ImageRewardScorer.from_pretrained(str(tmp_path)).score(IMS, "a blue circle") == pytest.approx(
        reference.score(IMS, "a blue circle"), abs=1e-5
    )


def test_unknown_image_reward_layout_is_a_clear_error(tmp_path):
    from bestshot.scoring.preference_models import convert_image_reward

    torch.save({"model.visual.weight": torch.zeros(2)}, tmp_path / "ImageReward.pt")
    with pytest.raises(BestshotError, match="unknown ImageReward checkpoint layout"):
        ImageRewardScorer.from_pretrained(str(tmp_path / "ImageReward.pt"))
    with pytest.raises(BestshotError, match="unknown keys.*blip.visual_encoder.extra"):
        convert_image_reward({"blip.visual_encoder.extra": torch.zeros(1), "mlp.layers.0.weight": torch.zeros(1)})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BestshotError, match="cannot read"):
        ImageRewardScorer.from_pretrained(str(tmp_path / "junk.pt"))
