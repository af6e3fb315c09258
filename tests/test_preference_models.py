"""Public preference models as scorers: real classes, tiny random weights, loaded through the real path."""

import pytest
import torch
from PIL import Image

from bestshot.errors import BestshotError
from bestshot.scoring import get_scorer
from bestshot.scoring.clip import CLIPScorer
from bestshot.scoring.preference_models import (ImageRewardModel, ImageRewardScorer, load_preference_model,
                                                save_image_reward)

_g = torch.Generator().manual_seed(0)
IMS = [Image.fromarray(torch.randint(0, 256, (40, 40, 3), generator=_g, dtype=torch.uint8).numpy()) for _ in range(2)]


def test_pickscore_goes_through_the_clip_path(tiny_clip):
    s = get_scorer(f"pickscore@{tiny_clip}")
    assert isinstance(s, CLIPScorer) and s.name == f"pickscore@{tiny_clip}"
    scores = s.score(IMS, "a red square")
    assert len(scores) == 2 and all(-1 <= v <= 1 for v in scores)


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
    cfg = BlipConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, encoder_hidden_size=32,
                                      intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                      max_position_embeddings=64, bos_token_id=2, sep_token_id=3, pad_token_id=0),
                     vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=2, image_size=32, patch_size=8, initializer_range=0.02))
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
