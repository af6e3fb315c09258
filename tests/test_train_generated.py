"""SDEdit on the world pipeline and the generated-image pool a CLIP can be trained on."""

import pytest
import torch

from bestshot import world as W
from bestshot.errors import BestshotError
from bestshot.train.clip_train import ClipTrainConfig, WorldHardNegatives, train_clip
from bestshot.train.generated import GeneratedWorldHardNegatives, Interleaved, build_pool


def test_sdedit_keeps_the_input_at_zero_strength_and_is_seeded(tiny_world):
    from bestshot.models.loader import load_pipeline

    pipe = load_pipeline(tiny_world, dtype="float32", device="cpu")
    x0 = torch.stack([W.image_to_tensor(W.render(W.scene_for(0, i)[0], 16)) for i in range(2)])
    assert torch.equal(pipe.sdedit(x0, ["a", "b"], 0.01, 10), x0)  # no step runs
    a = pipe.sdedit(x0, ["a red circle", "a blue square"], 0.5, 10, generator=torch.Generator().manual_seed(1))
    b = pipe.sdedit(x0, ["a red circle", "a blue square"], 0.5, 10, generator=torch.Generator().manual_seed(1))
    assert a.shape == x0.shape and torch.equal(a, b) and not torch.allclose(a, x0, atol=1e-2)
    assert a.min() >= -1 and a.max() <= 1


def test_pool_is_cached_and_served_with_its_own_captions(tiny_world, tmp_path):
    cache = tmp_path / "pool.safetensors"
    pool = build_pool(
        tiny_world, seed=5, n=6, size=16, strength=(0.3, 0.5), steps=10, batch_size=4, cache=cache, progress=False
    )
    assert pool.shape == (6, 3, 16, 16) and pool.dtype == torch.uint8 and cache.exists()
    stamp = cache.stat().st_mtime_ns
    again = build_pool(tiny_world, seed=5, n=6, size=16, strength=(0.3, 0.5), steps=10, cache=cache, progress=False)
    assert torch.equal(again, pool) and cache.stat().st_mtime_ns == stamp  # reused, not recomputed
    other = build_pool(tiny_world, seed=6, n=6, size=16, strength=(0.3, 0.5), steps=10, cache=cache, progress=False)
    assert not torch.equal(other, pool)  # another seed: recomputed
    gen = GeneratedWorldHardNegatives(pool, seed=5, k=3)
    renders = WorldHardNegatives(6, 16, 5, 3)
    img, pos, negs = gen[2]
    assert (pos, negs) == renders[2][1:]  # the caption of the world item the image was redrawn from
    assert img.shape == (3, 16, 16) and -1 <= img.min() and img.max() <= 1
    mixed = Interleaved(renders, gen, every=2)
    assert len(mixed) == 6 and torch.equal(mixed[0][0], renders[0][0]) and torch.equal(mixed[1][0], gen[0][0])
    with pytest.raises(BestshotError, match="generated_strength"):
        build_pool(tiny_world, seed=5, n=2, size=16, strength=(0.5, 0.2))


def test_train_clip_on_a_generated_pool(tiny_world, tmp_path):
    cfg = ClipTrainConfig(
        img_size=16,
        patch_size=4,
        vision_hidden=32,
        vision_layers=1,
        vision_heads=2,
        text_hidden=32,
        text_layers=1,
        text_heads=2,
        projection_dim=16,
        max_length=16,
        batch_size=4,
        steps=2,
        hard_negatives=2,
        eval_size=8,
        out_dir=str(tmp_path / "c"),
        generated_model=tiny_world,
        generated_pool=4,
        generated_strength=(0.3, 0.3),
    )
    m = train_clip(cfg)
    assert m["steps"] == 2 and (tmp_path / "c" / "generated_pool.safetensors").exists()
    with pytest.raises(BestshotError, match="generated_model needs dataset: world"):
        train_clip(ClipTrainConfig(**{**cfg.__dict__, "dataset": "fashion-mnist", "out_dir": str(tmp_path / "d")}))
