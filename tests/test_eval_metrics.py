"""Metrics against independent numpy/scipy computations; feature cache; CLIP and Inception extractors."""

import os

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
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2),
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
    manifest.write_text("image_path,caption,image_id\n" + "".join(f"{p},a picture number {i},{i}\n" for i, p in enumerate(fake)))
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


def test_inception_extractor_shapes_with_random_weights(tmp_path, monkeypatch):
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    monkeypatch.setattr(fe.torch, "load", lambda *a, **k: {})
    weights = tmp_path / "random.pth"
    weights.write_bytes(b"unused")
    ext = InceptionExtractor(weights, device="cpu")
    imgs = [Image.new("RGB", (64, 48), (i * 50, 0, 0)) for i in range(2)] + [Image.new("RGB", (32, 32))]
    feats, logits = ext.features_and_logits(imgs)
    assert feats.shape == (3, 2048) and logits.shape == (3, 1008)
