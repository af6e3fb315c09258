"""The CLIP-prefix captioner: learning, freezing, save/load, decoding, and its CLI command."""

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from bestshot import world as W
from bestshot.errors import BestshotError
from bestshot.interrogate.captioner import CaptionerConfig, PrefixCaptioner, load_caption_model, train_captioner
from bestshot.scoring import get_scorer

TINY = dict(
    n_embd=32,
    n_layer=3,
    n_head=2,
    mapper_layers=1,
    mapper_heads=2,
    prefix_len=4,
    image_size=32,
    batch_size=16,
    lr=3e-3,
    warmup=5,
    max_tokens=24,
)


@pytest.fixture(scope="module")
def trained(tiny_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("cap") / "captioner"
    cfg = CaptionerConfig(clip=tiny_clip, dataset="world:1", length=128, steps=40, checkpoint_every=20, **TINY)
    result = train_captioner(cfg, out, scorer=get_scorer(tiny_clip, device="cpu"), log_every=10)
    return out, result


def _batch(n=4, seed=0):
    scenes = [W.sample_scene(random.Random(seed + i), n_objects=1) for i in range(n)]
    return [W.render(s, 32) for s in scenes], [W.prompt_for(W.spec_of(s)) for s in scenes]


def _overfit(model, feats, captions, steps):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(steps):
        loss = model.loss(feats, captions)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_training_lowers_the_loss(trained):
    _, result = trained
    losses = [loss for _, loss in result["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0] - 1.0


def test_save_load_round_trip_and_decoding(trained, tiny_clip):
    out, _ = trained
    assert not list(out.glob(".*"))  # no temp files left behind
    model = PrefixCaptioner.load(out, scorer=get_scorer(tiny_clip, device="cpu"))
    again = PrefixCaptioner.load(out, scorer=get_scorer(tiny_clip, device="cpu"))
    assert model.cfg.n_embd == 32 and model.lm.lm_head.weight.data_ptr() == model.lm.transformer.wte.weight.data_ptr()
    images, captions = _batch()
    emb = model.scorer.embed_images(images)
    with torch.no_grad():
        assert torch.allclose(model.loss(emb, captions), again.loss(emb, captions))
    greedy = model.caption(images)
    beam = model.caption(images, num_beams=3)
    assert len(greedy) == len(beam) == 4 and all(isinstance(t, str) for t in greedy + beam)
    assert greedy == again.caption(images)
    assert load_caption_model(str(out), device="cpu") is load_caption_model(str(out), device="cpu")


def test_overfits_one_caption_and_decodes_it(tiny_clip):
    """A few steps on one pair make greedy decoding write the caption (decode really returns the text)."""
    s = get_scorer(tiny_clip, device="cpu")
    torch.manual_seed(0)
    model = PrefixCaptioner.create(CaptionerConfig(clip=tiny_clip, **TINY), s)
    images, captions = _batch(1, seed=3)
    emb = s.embed_images(images)
    _overfit(model, emb, captions, 80)
    assert model.generate(emb) == captions
    assert model.generate(emb, num_beams=2) == captions
    assert model.caption(images, rerank=1) == captions


def test_rerank_lets_the_clip_pick_among_the_best_beams(tiny_clip):
    """rerank n: the n best beams are proposed and the caption whose CLIP text embedding is closest to the
    image wins, whatever its rank among the beams."""
    s = get_scorer(tiny_clip, device="cpu")
    torch.manual_seed(0)
    model = PrefixCaptioner.create(CaptionerConfig(clip=tiny_clip, **TINY), s)
    assert model.cfg.rerank == 8
    images, captions = _batch(1, seed=3)
    emb = s.embed_images(images)
    _overfit(model, emb, captions, 80)
    beams = model.generate(emb, num_return_sequences=3)
    assert len(beams) == 3 and beams[0] == captions[0] and len(set(beams)) == 3

    class Judge:  # the real CLIP for the image, a text embedding that makes beams[2] the closest
        def embed_images(self, ims):
            return s.embed_images(ims)

        def embed_texts(self, texts):
            return torch.stack([emb[0] if t == beams[2] else -emb[0] for t in texts])

    model.scorer = Judge()
    assert model.caption(images, rerank=3) == [beams[2]]
    assert model.caption(images, rerank=1) == captions


def test_patch_features_learn_save_and_load(tiny_clip, tmp_path):
    """features=patches: the prefix is the vision tower's token grid (pooled 2×2 here); two scenes get their
    own captions after a few steps, and the folder reloads to the same decoder."""
    s = get_scorer(tiny_clip, device="cpu")
    torch.manual_seed(0)
    model = PrefixCaptioner.create(CaptionerConfig(clip=tiny_clip, features="patches", **TINY), s)
    pooled = PrefixCaptioner.create(CaptionerConfig(clip=tiny_clip, features="patches", patch_pool=2, **TINY), s)
    images, captions = _batch(2, seed=5)
    v = s.model.config.vision_config
    g = v.image_size // v.patch_size
    assert model.features(images).shape == (2, g * g + 1, v.hidden_size)
    feats = pooled.features(images)
    assert feats.shape == (2, (g // 2) ** 2 + 1, v.hidden_size)
    assert torch.allclose(
        feats[:, 1], model.features(images)[:, 1:].reshape(2, g, g, -1)[:, :2, :2].mean((1, 2)), atol=1e-5
    )  # a pooled token is the mean of its 2×2 patches
    _overfit(pooled, feats, captions, 100)
    assert pooled.caption(images, rerank=1) == captions  # the top beam (a random CLIP would re-rank at will)
    pooled.save(tmp_path / "cap")
    again = PrefixCaptioner.load(tmp_path / "cap", scorer=s)
    assert again.n_tokens == feats.shape[1] and again.caption(images, rerank=1) == captions
    with pytest.raises(BestshotError, match="features"):
        PrefixCaptioner.create(CaptionerConfig(clip=tiny_clip, features="grid", **TINY), s)
    with pytest.raises(BestshotError, match="patch_pool"):
        PrefixCaptioner.create(CaptionerConfig(clip=tiny_clip, features="patches", patch_pool=3, **TINY), s)


def test_pretrained_lm_freezes_all_but_the_last_two_layers(tiny_clip, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from bestshot.models.clip_tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer()
    lm_dir = tmp_path / "gpt2-tiny"
    GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_positions=64,
            n_embd=32,
            n_layer=4,
            n_head=2,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    ).save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)
    s = get_scorer(tiny_clip, device="cpu")
    model = PrefixCaptioner.create(CaptionerConfig(clip=tiny_clip, lm=str(lm_dir), prefix_len=4, mapper_heads=2), s)
    trainable = {n.split(".")[2] for n, p in model.lm.named_parameters() if p.requires_grad and ".h." in n}
    assert trainable == {"2", "3"}
    assert not model.lm.transformer.wte.weight.requires_grad and model.lm.transformer.ln_f.weight.requires_grad
    assert all(p.requires_grad for p in model.mapper.parameters())
    model.set_trainable(0)
    assert not any(p.requires_grad for p in model.lm.parameters())
    with pytest.raises(BestshotError):
        model.set_trainable(5)


def test_cli_train_captioner(tiny_clip, tmp_path):
    import yaml

    from bestshot.interrogate.cli import app

    cfg = tmp_path / "cap.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "clip": tiny_clip, "dataset": "world:1", "length": 32}))
    res = CliRunner().invoke(
        app, ["train-captioner", "--config", str(cfg), "--steps", "3", "--out", str(tmp_path / "c")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "captioner.json").exists() and (tmp_path / "c" / "model.safetensors").exists()
    res = CliRunner().invoke(
        app,
        [
            "train-captioner",
            "--config",
            str(cfg),
            "--steps",
            "2",
            "--features",
            "patches",
            "--patch-pool",
            "2",
            "--out",
            str(tmp_path / "p"),
        ],
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "p" / "captioner.json").read_text())
    assert meta["config"]["features"] == "patches" and meta["config"]["patch_pool"] == 2 and meta["n_tokens"] == 5
    cfg.write_text("bogus_key: 1\n")
    res = CliRunner().invoke(app, ["train-captioner", "--config", str(cfg), "--out", str(tmp_path / "d")])
    assert isinstance(res.exception, BestshotError)


def test_hf_caption_model_feeds_the_art_interrogator(tiny_clip, tmp_path):
    """Any transformers image-to-text model (here a tiny random BLIP) supplies the caption."""
    from PIL import Image
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    from bestshot.interrogate.interrogator import InterrogateConfig, Interrogator

    d = tmp_path / "blip"
    d.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "red", "circle"] + [f"w{i}" for i in range(20)]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(d / "vocab.txt"), bos_token="[DEC]")
    cfg = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            bos_token_id=5,
            pad_token_id=0,
            sep_token_id=3,
            max_position_embeddings=64,
        ),
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=32,
    )
    BlipForConditionalGeneration(cfg).save_pretrained(d)
    BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tok
    ).save_pretrained(d)
    eng = Interrogator(InterrogateConfig(clip=tiny_clip, domain="art", caption=str(d), cache_dir=str(tmp_path / "c")))
    images = [Image.new("RGB", (48, 48), (200, 30, 30)), Image.new("RGB", (48, 48), (30, 30, 200))]
    for r in eng.interrogate(images, "fast"):
        assert r.caption and r.prompt.startswith(r.caption + ", ")
    with pytest.raises(BestshotError):
        Interrogator(
            InterrogateConfig(clip=tiny_clip, domain="art", caption=str(tmp_path), cache_dir=str(tmp_path / "c"))
        )


def test_train_on_a_generated_pool(tiny_clip, tiny_world, tmp_path):
    """generated_model: every other training image is a world item redrawn by the model, with its caption."""
    from bestshot.interrogate.captioner import GeneratedWorldCaptions

    out = tmp_path / "cap"
    cfg = CaptionerConfig(
        clip=tiny_clip,
        steps=2,
        checkpoint_every=2,
        generated_model=tiny_world,
        generated_pool=4,
        generated_size=16,
        generated_strength=(0.3, 0.3),
        **{**TINY, "batch_size": 4},
    )
    result = train_captioner(cfg, out, scorer=get_scorer(tiny_clip, device="cpu"))
    assert result["steps"] == 2 and (out / "generated_pool.safetensors").exists()
    pool = torch.zeros((3, 3, 16, 16), dtype=torch.uint8)
    pool[1] = 255
    ds = GeneratedWorldCaptions(pool, seed=9, size=32)
    img, cap = ds[4]  # cycles over the pool: item 4 is pool item 1 with world item 1's caption
    scene, rng = W.scene_for(9, 1)
    assert cap == W.caption(scene, rng) and img.shape == (3, 32, 32) and torch.all(img == 1.0)
    with pytest.raises(BestshotError, match="generated_model needs dataset: world"):
        train_captioner(
            CaptionerConfig(**{**cfg.__dict__, "dataset": "fashion-mnist"}),
            tmp_path / "d",
            scorer=get_scorer(tiny_clip, device="cpu"),
        )
