"""``bestshot train embed`` on uncaptioned image folders, with a CLIP of another resolution than the images."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bestshot.errors import BestshotError
from bestshot.models.clip_preprocess import ClipPreprocess, clip_preprocess
from bestshot.train.data import CaptionFolderDataset, build_dataset
from bestshot.train.ddpm import encode_images, load_clip
from bestshot.train.embed import build_cache, load_cache
from helpers import run_cli
from tiny_models import build_clip


def _img(path, colour, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture(scope="module")
def clip64(tmp_path_factory):
    """A tiny CLIP of the real class whose vision tower takes 64-px images (as ViT-B/32 takes 224)."""
    return build_clip(tmp_path_factory.mktemp("clip64"), image_size=64)


@pytest.fixture
def tiny_imagenet(tmp_path):
    """Tiny ImageNet's layout: train/<wnid>/images/*.JPEG (no captions), words.txt at the root."""
    root = tmp_path / "tiny-imagenet-200"
    colours = {"n01443537": (200, 120, 0), "n01629819": (0, 90, 200)}
    for wnid, c in colours.items():
        for k in range(3):
            _img(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", tuple(min(255, v + 20 * k) for v in c))
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\t0\t0\t1\t1\n")
    (root / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n")
    return root / "train"


def test_preprocess_matches_the_clip_image_processor(clip64):
    """Resize 32 → 64 px, crop, normalise as the folder's CLIPImageProcessor does (PIL vs torch bicubic)."""
    from transformers import CLIPImageProcessor

    rng = np.random.default_rng(0)
    arr = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    arr = np.kron(arr[::4, ::4], np.ones((4, 4, 1), dtype=np.uint8))  # smooth enough for two bicubics to agree
    want = CLIPImageProcessor.from_pretrained(clip64)(images=Image.fromarray(arr), return_tensors="pt").pixel_values
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1
    clip, _ = load_clip(clip64)
    got = clip_preprocess(clip64, clip)(x)
    assert got.shape == want.shape == (1, 3, 64, 64)
    assert (got - want).abs().mean() < 0.05


def test_preprocess_config_fields():
    pre = ClipPreprocess.from_config(
        {
            "size": {"shortest_edge": 8},
            "crop_size": {"height": 8, "width": 6},
            "image_mean": [0.5] * 3,
            "image_std": [0.5] * 3,
        }
    )
    x = torch.zeros(2, 3, 4, 8)  # landscape: short side 4 → 8, long side 16, then an 8×6 centre crop
    assert pre(x).shape == (2, 3, 8, 6) and pre(x).abs().max() < 1e-5
    with pytest.raises(BestshotError, match="image_std"):
        ClipPreprocess.from_config({"image_mean": [0.5] * 3, "image_std": [0, 1, 1]})


def test_image_folder_without_captions(tiny_imagenet):
    with pytest.raises(BestshotError, match="class_caption"):
        CaptionFolderDataset(tiny_imagenet, size=16)
    ds = build_dataset(str(tiny_imagenet), size=16, captions="optional")
    assert len(ds) == 6 and {ds[i][1] for i in range(6)} == {""} and ds[0][0].shape == (3, 16, 16)
    named = build_dataset(str(tiny_imagenet), size=16, class_caption="a photo of a {class}")
    assert sorted({named[i][1] for i in range(6)}) == ["a photo of a European fire salamander", "a photo of a goldfish"]


def test_flat_folder_and_path_only_manifest(tmp_path):
    _img(tmp_path / "flat" / "a.png", (1, 2, 3))
    _img(tmp_path / "flat" / "b.jpg", (200, 2, 3), size=(40, 24))
    assert len(build_dataset(str(tmp_path / "flat"), size=8, captions="optional")) == 2
    (tmp_path / "flat" / "list.csv").write_text("path\nb.jpg\n")
    ds = build_dataset(str(tmp_path / "flat" / "list.csv"), size=8, captions="optional")
    assert len(ds) == 1 and ds[0][1] == ""
    with pytest.raises(BestshotError, match="image,caption"):
        build_dataset(str(tmp_path / "flat" / "list.csv"), size=8)  # captions required: the column is missing
    (tmp_path / "empty").mkdir()
    with pytest.raises(BestshotError, match="no readable images"):
        build_dataset(str(tmp_path / "empty"), size=8, captions="optional")


def test_embed_cli_32px_images_64px_clip(tiny_imagenet, clip64, tmp_path, capsys, monkeypatch):
    """Issue 24: images of another size than the CLIP's crashed encode_images with a ValueError traceback."""
    out = tmp_path / "cache.safetensors"
    code, stdout, err = run_cli(
        [
            "train",
            "embed",
            "--dataset",
            str(tiny_imagenet),
            "--clip",
            str(clip64),
            "--out",
            str(out),
            "--img-size",
            "32",
            "--length",
            "100",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert "Traceback" not in err
    emb = load_file(str(out))["image_embeds"]
    assert emb.shape == (6, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(6), atol=1e-5)
    # the same embeddings as the CLIP's own processor gives the 32-px images (up to PIL vs torch resizing)
    from transformers import CLIPImageProcessor

    clip, _ = load_clip(clip64)
    ds = build_dataset(str(tiny_imagenet), size=32, captions="optional")
    pil = [Image.open(p).convert("RGB") for p, _ in ds.items]
    pv = CLIPImageProcessor.from_pretrained(clip64)(images=pil, return_tensors="pt").pixel_values
    from bestshot.train.clip_train import image_features

    ref = torch.nn.functional.normalize(image_features(clip, pv), dim=-1)
    assert torch.nn.functional.cosine_similarity(ref, emb).min() > 0.98
    assert torch.equal(load_cache(out, str(tiny_imagenet), 32, clip64, length=6), emb)
    with pytest.raises(BestshotError, match="holds 6 images"):
        load_cache(out, str(tiny_imagenet), 32, clip64, length=5)
    # with text: class captions make the uncaptioned folder usable
    code, _, err = run_cli(
        [
            "train",
            "embed",
            "--dataset",
            str(tiny_imagenet),
            "--clip",
            str(clip64),
            "--out",
            str(tmp_path / "t.safetensors"),
            "--text",
            "--class-caption",
            "a photo of a {class}",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert load_file(str(tmp_path / "t.safetensors"))["text_embeds"].shape == (6, 32)
    code, _, err = run_cli(
        [
            "train",
            "embed",
            "--dataset",
            str(tiny_imagenet),
            "--clip",
            str(clip64),
            "--out",
            str(tmp_path / "u.safetensors"),
            "--text",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "error:" in err and "class_caption" in err and "Traceback" not in err


def test_encode_images_any_size(clip64):
    clip, _ = load_clip(clip64)
    for size in (16, 32, 64, 96):
        assert encode_images(clip, torch.zeros(2, 3, size, size)).shape == (2, 32)


def test_ddpm_trains_on_image_embeddings_of_an_uncaptioned_folder(tiny_imagenet, clip64, tmp_path):
    """Seed 002's recipe: embed a folder without captions once, train on the cached image embeddings."""
    from bestshot.train.ddpm import DDPMConfig, train

    cache = build_cache(str(tiny_imagenet), clip64, tmp_path / "c.safetensors", img_size=16, length=6)
    cfg = DDPMConfig(
        dataset=str(tiny_imagenet),
        dataset_length=6,
        img_size=16,
        clip=str(clip64),
        cond="image_embed",
        embed_cache=str(cache),
        block_out_channels=(32, 32),
        attention_levels=(False, True),
        batch_size=3,
        steps=2,
        ckpt_every=2,
        warmup_steps=1,
        log_every=100,
        out_dir=str(tmp_path / "run"),
    )
    assert train(cfg)["step"] == 2


def test_open_clip_preprocess_config(tmp_path):
    """open_clip hub folders (open_clip_config.json): size, mean/std and resize mode are read the same way."""
    conf = {
        "model_cfg": {"vision_cfg": {"image_size": 48}},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "resize_mode": "shortest"},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(conf))
    pre = ClipPreprocess.from_folder(tmp_path)
    assert (pre.shortest_edge, pre.crop_hw, pre.mean) == (48, (48, 48), (0.5, 0.5, 0.5))
    x = torch.zeros(1, 3, 16, 32)  # mid-grey: 0 after (0.5 - 0.5) / 0.25
    assert pre(x).shape == (1, 3, 48, 48) and pre(x).abs().max() < 1e-5
    squash = ClipPreprocess.from_open_clip_config({**conf, "preprocess_cfg": {"resize_mode": "squash"}})
    assert squash(x).shape == (1, 3, 48, 48)
    longest = ClipPreprocess.from_open_clip_config({**conf, "preprocess_cfg": {"resize_mode": "longest"}})
    out = longest(torch.ones(1, 3, 16, 32))  # 16x32 → 24x48, padded to 48x48 with black
    assert out.shape == (1, 3, 48, 48)
    with pytest.raises(BestshotError, match="resize_mode"):
        ClipPreprocess.from_open_clip_config({"preprocess_cfg": {"resize_mode": "zoom"}})
