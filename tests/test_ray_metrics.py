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

pytestmark = pytest.mark.xdist_group("ray")  # one xdist worker owns the session's local Ray (conftest.py)

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
    manifest.write_text(
        "image_path,caption,image_id\n"
        + "".join(
            f"{tmp_path / 'fake' / f'{i:03d}.png'},a {words[i % 6]} thing number {i},{i}\n" for i in range(n_fake)
        )
    )
    return tmp_path / "real", manifest


def test_bare_ray_flag_means_local():
    assert normalise_ray_flag(["eval", "metrics", "--ray"]) == ["eval", "metrics", "--ray", "local"]
    assert normalise_ray_flag(["--ray", "--ray-workers", "2"]) == ["--ray", "local", "--ray-workers", "2"]
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


def test_ray_worker_errors_are_one_line(ray_local, tiny_clip, tmp_path):
    from bestshot.evaluate.features import extract
    from bestshot.evaluate.sweep import build_ray_extractors

    with pytest.raises(BestshotError, match="no CLIP model"):  # the factory fails on a worker: its own message
        build_ray_extractors("clip", None, str(tmp_path / "nothing"), "cpu", "clean", workers=1)
    ext, _ = build_ray_extractors("clip", None, tiny_clip, "cpu", "clean", workers=1)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(BestshotError, match=r"cannot read image .*bad\.png .* remove or replace the file$"):
        extract(ext, [tmp_path / "bad.png"], batch_size=4)


@pytest.mark.slow  # both metric runs again through the CLI (~20 s); test_ray_metrics_equal_single_process checks the
# equality, test_bare_ray_flag_means_local the flag
def test_eval_metrics_cli_bare_ray_equals_without(ray_local, tiny_clip, tmp_path, capsys, monkeypatch):
    real, fake = _sets(tmp_path, n_real=10, n_fake=8)
    base = ["eval", "metrics", "--real", str(real), "--fake", str(fake), "--clip", tiny_clip, "--device", "cpu"]
    code, _, err = run_cli(
        [*base, "--cache-dir", str(tmp_path / "c1"), "--out", str(tmp_path / "one.json")], capsys, monkeypatch
    )
    assert code == 0, err
    code, out, err = run_cli(
        [
            *base,
            "--ray",
            "--cache-dir",
            str(tmp_path / "c2"),
            "--ray-workers",
            "2",
            "--out",
            str(tmp_path / "ray.json"),
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    one, dist = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "ray.json"))
    for key in ("fid", "kid_mean", "cmmd", "clip_score"):
        assert _rel(dist[key], one[key]) <= 1e-6, key
    assert dist["ray"]["workers"] == 2 and dist["ray"]["address"] == "local" and "ray" not in one

    code, _, err = run_cli([*base, "--ray-workers", "2"], capsys, monkeypatch)
    assert code != 0 and "--ray-workers and --gpus-per-worker only apply with --ray" in err and "Traceback" not in err


def test_ray_extractor_with_logits_gives_the_same_inception_score(ray_local, tmp_path):
    """An extractor with class logits (as the FID Inception has): features and logits come back together."""
    from bestshot.evaluate import metrics as M
    from bestshot.scale.features import RayFeatureExtractor

    class MeanColour:  # defined here, so Ray pickles it by value for its workers
        name, resize, batch_size = "mean-colour+logits", "none", 3

        def features_and_logits(self, images):
            f = np.stack([np.asarray(im, dtype=np.float64).reshape(-1, 3).mean(0) for im in images])
            return f, np.concatenate([f / 50.0, -f / 70.0], axis=1)

        def features(self, images):
            return self.features_and_logits(images)[0]

    real, fake = _sets(tmp_path, n_real=9, n_fake=8)
    kw = dict(kid_subsets=5, batch_size=3, is_splits=2)
    single = M.evaluate_sets(real, fake, MeanColour(), **kw)
    dist = M.evaluate_sets(real, fake, RayFeatureExtractor(MeanColour, workers=1), **kw)
    for key in ("fid", "kid_mean", "is_mean", "is_std"):
        assert single[key] is not None and _rel(dist[key], single[key]) <= 1e-6, key
