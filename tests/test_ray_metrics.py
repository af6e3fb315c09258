"""`bestshot eval metrics --ray`: features extracted by Ray Data workers, statistics on the driver, equal to
the single-process metrics (relative difference <= 1e-6), on the session's local Ray (tests/conftest.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from bestshot.errors import BestshotError
from bestshot.scale.flags import looks_like_address, normalise_ray_flag
from helpers import run_cli

METRICS = ("fid", "kid_mean", "kid_std", "cmmd", "clip_score", "clip_cosine")


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def _sets(tmp_path, n_real=21, n_fake=18):
    """Real and fake images of several sizes (so the clean resize works), the fake ones in a captioned manifest."""
    rng = np.random.default_rng(3)
    for folder, n in (("real", n_real), ("fake", n_fake)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            size = (24 + 8 * (i % 3), 32 + 4 * (i % 2))
            arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / folder / f"{i:03d}.png")
    words = ["red", "green", "blue", "round", "square", "small"]
    manifest = tmp_path / "fake.csv"
    manifest.write_text("image_path,caption,image_id\n" + "".join(
        f"{tmp_path / 'fake' / f'{i:03d}.png'},a {words[i % 6]} thing number {i},{i}\n" for i in range(n_fake)))
    return tmp_path / "real", manifest


def test_bare_ray_flag_means_local():
    assert normalise_ray_flag(["eval", "metrics", "--ray"]) == ["eval", "metrics", "--ray", "local"]
    assert normalise_ray_flag(["--ray", "--workers", "2"]) == ["--ray", "local", "--workers", "2"]
    assert normalise_ray_flag(["generate", "--ray", "manifest.csv"]) == ["generate", "--ray", "local", "manifest.csv"]
    for addr in ("auto", "local", "10.0.0.5:6379", "ray://head:10001", "head-node.example:6379", "[::1]:6379"):
        assert looks_like_address(addr) and normalise_ray_flag(["--ray", addr]) == ["--ray", addr]
    assert not looks_like_address("prompts.txt") and not looks_like_address("-x")
    assert normalise_ray_flag(["--", "--ray"]) == ["--", "--ray"]  # after --, words are arguments


def test_ray_metrics_equal_single_process(ray_local, tiny_clip, tmp_path):
    from bestshot.evaluate import metrics as M
    from bestshot.evaluate.features import ClipExtractor
    from bestshot.evaluate.sweep import build_ray_extractors

    real, fake = _sets(tmp_path)
    kw = dict(kid_subsets=7, batch_size=4, seed=1)  # 4-image batches: 6 + 5 Ray rows, spread over 2 workers
    single = M.evaluate_sets(real, fake, ClipExtractor(tiny_clip, device="cpu"), **kw)
    ext, clip = build_ray_extractors("clip", None, tiny_clip, "cpu", "clean", workers=2, num_cpus=1)
    assert ext is clip and ext.name == single["extractor"] and ext.resize == single["resize"]
    dist = M.evaluate_sets(real, fake, ext, clip=clip, **kw)
    for key in METRICS:
        assert single[key] is not None and np.isfinite(single[key]), key
        assert _rel(dist[key], single[key]) <= 1e-6, (key, dist[key], single[key])
    for key in ("extractor", "resize", "n_real", "n_fake", "kid_subset_size", "clip_extractor", "clip_resize"):
        assert dist[key] == single[key], key
    assert ext.last_workers and os.getpid() not in ext.last_workers  # the images were embedded off the driver


def test_ray_features_in_order_and_errors_are_one_line(ray_local, tiny_clip, tmp_path):
    from bestshot.evaluate.features import ClipExtractor, extract
    from bestshot.evaluate.sweep import build_ray_extractors

    real, _ = _sets(tmp_path, n_real=9, n_fake=2)
    paths = sorted(real.iterdir())
    ext, _ = build_ray_extractors("clip", None, tiny_clip, "cpu", "clean", workers=2, num_cpus=1)
    got = extract(ext, paths, batch_size=2)
    want = extract(ClipExtractor(tiny_clip, device="cpu"), paths, batch_size=2)
    assert got.shape == want.shape == (9, 32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # row i is image i's

    (real / "009.png").write_bytes(b"not a png")  # a worker's BestshotError comes back as itself
    with pytest.raises(BestshotError, match="cannot read image .*009.png"):
        extract(ext, [*paths, real / "009.png"], batch_size=4)
    with pytest.raises(BestshotError, match="no CLIP model"):  # the factory fails on the worker: one line
        build_ray_extractors("clip", None, str(tmp_path / "nothing"), "cpu", "clean", workers=1)


def test_eval_metrics_cli_bare_ray_equals_without(ray_local, tiny_clip, tmp_path, capsys, monkeypatch):
    real, fake = _sets(tmp_path, n_real=10, n_fake=8)
    base = ["eval", "metrics", "--real", str(real), "--fake", str(fake), "--clip", tiny_clip, "--device", "cpu"]
    code, _, err = run_cli([*base, "--cache-dir", str(tmp_path / "c1"), "--out", str(tmp_path / "one.json")],
                           capsys, monkeypatch)
    assert code == 0, err
    code, out, err = run_cli([*base, "--ray", "--cache-dir", str(tmp_path / "c2"), "--workers", "2",
                              "--out", str(tmp_path / "ray.json")], capsys, monkeypatch)
    assert code == 0, err
    one, dist = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "ray.json"))
    for key in ("fid", "kid_mean", "cmmd", "clip_score"):
        assert _rel(dist[key], one[key]) <= 1e-6, key
    assert dist["ray"]["workers"] == 2 and dist["ray"]["address"] == "local" and "ray" not in one

    code, _, err = run_cli([*base, "--workers", "2"], capsys, monkeypatch)
    assert code != 0 and "--workers and --gpus-per-worker need --ray" in err and "Traceback" not in err
