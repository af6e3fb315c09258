"""Metrics against independent numpy/scipy computations; feature cache; CLIP and Inception extractors."""

import os
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from bestshot.errors import BestshotError
from bestshot.evaluate import metrics as M
from bestshot.evaluate.features import ClipExtractor, InceptionExtractor, cached_features


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    return rng.normal(size=(200, 12)), rng.normal(size=(200, 12)) * 1.3 + 0.4


def test_fid_matches_scipy(feats):
    a, b = feats
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert _rel(M.fid(a, b), ref) < 1e-4
    assert abs(M.fid(a, a)) < 1e-6


def _kid_numpy(x, y, degree=3, coef=1.0):
    gamma = 1.0 / x.shape[1]
    kxx, kyy, kxy = ((u @ v.T * gamma + coef) ** degree for u, v in ((x, x), (y, y), (x, y)))
    m = len(x)
    return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()


def test_kid_matches_numpy(feats):
    a, b = feats
    ref = _kid_numpy(a, b)
    mean, std = M.kid(a, b, subsets=1, subset_size=10_000)  # capped to the set size: the whole set
    assert _rel(mean, ref) < 1e-4 and std == 0
    mean3, std3 = M.kid(a, b, subsets=3, subset_size=len(a))  # MMD does not depend on order
    assert _rel(mean3, ref) < 1e-4 and std3 < 1e-9 * abs(ref)
    m1, _ = M.kid(a, b, subsets=4, subset_size=50, seed=7)
    assert M.kid(a, b, subsets=4, subset_size=50, seed=7)[0] == m1  # seeded


def test_inception_score_is_exp_mean_kl():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(10, 0.3), size=300)
    py = p.mean(0)
    ref = np.exp((p * (np.log(p) - np.log(py))).sum(1).mean())
    mean, std = M.inception_score(probs=p, splits=1)
    assert abs(mean - ref) < 1e-6 and std == 0
    logits = np.log(p) + 3.0  # softmax is shift-invariant
    assert abs(M.inception_score(logits, splits=1)[0] - ref) < 1e-6
    uniform = np.full((20, 5), 0.2)
    assert abs(M.inception_score(probs=uniform, splits=2)[0] - 1.0) < 1e-9
    with pytest.raises(BestshotError):
        M.inception_score(probs=p * 2)


def _cmmd_numpy(x, y, sigma=10.0, scale=1000.0):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    k = lambda u, v: np.exp(-((u[:, None] - v[None]) ** 2).sum(-1) / (2 * sigma**2)).mean()  # noqa: E731
    return scale * (k(x, x) + k(y, y) - 2 * k(x, y))


def test_cmmd_zero_on_itself_and_grows_with_shift():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 24))
    assert abs(M.cmmd(x, x)) < 1e-6
    direction = rng.normal(size=24)
    values = [M.cmmd(x, x + t * direction) for t in (0.05, 0.2, 0.5, 1.0, 3.0)]
    assert all(b > a for a, b in zip(values, values[1:])), values
    y = rng.normal(size=(60, 24)) + 0.5
    assert _rel(M.cmmd(x, y), _cmmd_numpy(x, y)) < 1e-6
    assert _rel(M.cmmd(x, y, sigma=1.0), _cmmd_numpy(x, y, sigma=1.0)) < 1e-6


def test_clip_score_is_100_max_cos_0():
    rng = np.random.default_rng(3)
    img, txt = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    cos = (img * txt).sum(1) / (np.linalg.norm(img, axis=1) * np.linalg.norm(txt, axis=1))
    assert (cos < 0).any() and (cos > 0).any()  # both branches of the max are exercised
    out = M.clip_score(img, txt)
    assert abs(out["clip_score"] - (100 * np.maximum(cos, 0)).mean()) < 1e-9
    assert abs(out["cosine"] - cos.mean()) < 1e-12
    with pytest.raises(BestshotError, match="caption"):
        M.clip_score(img, txt[:5])


class CountingExtractor:
    """Mean colour as a 3-d feature; counts calls to prove the cache is used."""

    resize = "none"

    def __init__(self, name="mean-rgb"):
        self.name, self.calls = name, 0

    def features(self, images):
        self.calls += 1
        return np.stack([np.asarray(im, dtype=np.float64).reshape(-1, 3).mean(0) for im in images])


def _pngs(folder, n, size=(16, 16), offset=0):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i:03d}.png"
        Image.new("RGB", size, ((37 * (i + offset)) % 256, (91 * i) % 256, 128)).save(p)
        paths.append(p)
    return paths


def test_feature_cache_avoids_recomputation(tmp_path):
    paths = _pngs(tmp_path / "real", 5)
    ext = CountingExtractor()
    f1 = cached_features(ext, "real set", paths, tmp_path / "cache", batch_size=2)
    assert ext.calls == 3 and f1.shape == (5, 3)
    f2 = cached_features(ext, "real set", paths, tmp_path / "cache", batch_size=2)
    assert ext.calls == 3 and np.array_equal(f1, f2)
    assert not list((tmp_path / "cache").glob("*.tmp"))
    other = CountingExtractor("other")  # different extractor → own entry
    cached_features(other, "real set", paths, tmp_path / "cache")
    assert other.calls == 1
    Image.new("RGB", (16, 16), (1, 2, 3)).save(paths[0])  # changed file → recompute
    os.utime(paths[0], ns=(1, 1))
    f3 = cached_features(ext, "real set", paths, tmp_path / "cache", batch_size=5)
    assert ext.calls == 4 and not np.array_equal(f1[0], f3[0])
    cached_features(ext, "real set", paths[:4], tmp_path / "cache")  # sample count is part of the key
    assert ext.calls == 5


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    CLIPModel(cfg).save_pretrained(folder)
    return folder


def test_clip_extractor_shapes_and_label(tiny_clip, tmp_path):
    ext = ClipExtractor(tiny_clip, device="cpu", batch_size=3)
    assert "NOT comparable" in ext.name and "32" in ext.resize
    imgs = [Image.new("RGB", (40 + i, 30), (i * 40, 0, 0)) for i in range(5)]
    f = ext.features(imgs)
    assert f.shape == (5, 16) and np.isfinite(f).all()
    t = ext.text_features(["a red square", "a blue circle"])
    assert t.shape == (2, 16) and not np.allclose(t[0], t[1])
    with pytest.raises(BestshotError, match="no CLIP model"):
        ClipExtractor(tmp_path / "nothing")


def test_evaluate_sets_records_extractor_and_counts(tiny_clip, tmp_path):
    _pngs(tmp_path / "real", 6)
    fake = _pngs(tmp_path / "fake", 5, size=(20, 12), offset=3)
    manifest = tmp_path / "fake.csv"
    manifest.write_text(
        "image_path,caption,image_id\n" + "".join(f"{p},a picture number {i},{i}\n" for i, p in enumerate(fake))
    )
    ext = ClipExtractor(tiny_clip, device="cpu")
    with pytest.warns(UserWarning, match="singular"):
        res = M.evaluate_sets(tmp_path / "real", manifest, ext, cache_dir=tmp_path / "cache", kid_subsets=5)
    assert res["extractor"] == ext.name and res["resize"] == ext.resize
    assert (res["n_real"], res["n_fake"], res["kid_subset_size"]) == (6, 5, 5)
    for key in ("fid", "kid_mean", "cmmd", "clip_score", "clip_cosine"):
        assert np.isfinite(res[key]), key
    assert res["is_mean"] is None and any("inception" in n for n in res["notes"])
    assert len(list((tmp_path / "cache").glob("real__*.npz"))) == 1


def test_inception_extractor_needs_weights_file(tmp_path):
    with pytest.raises(BestshotError, match="pt_inception-2015-12-05.*--inception-weights"):
        InceptionExtractor(tmp_path / "missing.pth")
    with pytest.raises(BestshotError, match="--inception-weights"):
        InceptionExtractor(None)


def test_inception_without_torch_fidelity_says_how_to_install(tmp_path, monkeypatch):
    import importlib.util

    from bestshot.evaluate import features

    monkeypatch.delitem(sys.modules, "torch_fidelity", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(BestshotError, match="scripts/install.sh.*--extractor clip"):
        features._fidelity_inception_class(tmp_path)


def test_inception_extractor_shapes_with_random_weights(tmp_path, monkeypatch):
    """The real torch-fidelity architecture with random weights, saved to a file and loaded through the
    extractor's own (strict) path. Runs wherever scripts/install.sh ran (its private torch-fidelity copy, no
    torchvision), so in CI."""
    import sys

    from bestshot.evaluate.features import _fidelity_inception_class

    fe = sys.modules[_fidelity_inception_class().__module__]
    with monkeypatch.context() as m:  # build once without downloading: keep the random initialisation
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    weights = tmp_path / "random-inception.pth"
    torch.save(net.state_dict(), weights)
    imgs = [Image.new("RGB", (64, 48), (i * 50, 0, 0)) for i in range(2)] + [Image.new("RGB", (32, 32))]
    clean = InceptionExtractor(weights, device="cpu")
    assert clean.resize.startswith("clean:")
    feats, logits = clean.features_and_logits(imgs)
    assert feats.shape == (3, 2048) and logits.shape == (3, 1008) and np.isfinite(feats).all()
    legacy = InceptionExtractor(weights, device="cpu", resize="legacy")
    assert legacy.resize.startswith("legacy:")
    rng = np.random.default_rng(0)
    at299 = [Image.fromarray(rng.integers(0, 255, (299, 299, 3), dtype=np.uint8))]
    np.testing.assert_allclose(clean.features(at299), legacy.features(at299), rtol=1e-4, atol=1e-5)  # no resize
    noisy = [Image.fromarray(rng.integers(0, 255, (97, 131, 3), dtype=np.uint8))]
    assert not np.allclose(clean.features(noisy), legacy.features(noisy))  # the two resizes differ
    (tmp_path / "other.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BestshotError, match="not the FID Inception"):
        InceptionExtractor(tmp_path / "other.pth")


def test_clean_resize_is_pil_bicubic_with_antialias_in_float():
    from bestshot.evaluate.features import clean_resize

    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    img = Image.fromarray(np.stack([board] * 3, -1))
    small = clean_resize(img, (8, 8))
    assert small.dtype == np.float32 and small.shape == (8, 8, 3)
    assert abs(small.mean() - 127.5) < 2 and small.std() < 5  # antialiased: a grey, not an aliased pattern
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(arr).resize((15, 20), Image.BICUBIC), dtype=np.float32)  # PIL, 8-bit
    diff = np.abs(clean_resize(Image.fromarray(arr), (15, 20)) - want)
    assert diff.max() <= 1.5 and diff.mean() < 0.5  # the same filter, without 8-bit fixed point and rounding
    assert np.array_equal(clean_resize(Image.fromarray(arr), (30, 40)), arr.astype(np.float32))


def test_fid_statistics_round_trip_and_formats(feats, tmp_path):
    from bestshot.evaluate.features import fid_stats, load_fid_stats, save_fid_stats

    real, fake = feats
    path = save_fid_stats(tmp_path / "ref.npz", real, extractor="x", resize="clean: y")
    st = load_fid_stats(path)
    assert (st["extractor"], st["resize"], st["n"]) == ("x", "clean: y", len(real))
    mu, sigma = fid_stats(fake)
    direct = M.fid(real, fake)
    assert M.fid_from_stats(st["mu"], st["sigma"], mu, sigma) == pytest.approx(direct, rel=1e-6, abs=1e-6)
    # pytorch-fid / clean-fid files: only mu and sigma
    np.savez(tmp_path / "pytorch_fid.npz", mu=st["mu"], sigma=st["sigma"])
    other = load_fid_stats(tmp_path / "pytorch_fid.npz")
    assert other["extractor"] is None and np.array_equal(other["sigma"], st["sigma"])
    np.savez(tmp_path / "bad.npz", mean=st["mu"])
    with pytest.raises(BestshotError, match="mu and sigma"):
        load_fid_stats(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(BestshotError, match="cannot read FID statistics"):
        load_fid_stats(tmp_path / "junk.npz")


def test_evaluate_against_saved_reference_statistics(tiny_clip, tmp_path):
    real = tmp_path / "real"
    _pngs(real, 6)
    fake = tmp_path / "fake"
    _pngs(fake, 5, size=(20, 12), offset=3)
    ext = ClipExtractor(tiny_clip, device="cpu")
    with pytest.warns(UserWarning, match="singular"):
        full = M.evaluate_sets(real, fake, ext, kid_subsets=5, save_real_stats=tmp_path / "ref.npz")
    again = M.evaluate_sets(None, fake, ext, real_stats=tmp_path / "ref.npz")
    assert again["fid"] == pytest.approx(full["fid"], rel=1e-6, abs=1e-6)
    assert again["kid_mean"] is None and any("statistics" in n for n in again["notes"])
    legacy = ClipExtractor(tiny_clip, device="cpu", resize="legacy")
    with pytest.raises(BestshotError, match="resize"):
        M.evaluate_sets(None, fake, legacy, real_stats=tmp_path / "ref.npz")
