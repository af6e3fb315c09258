"""Sliding-window blending: coverage, partition of unity, exact round trips. No model needed."""

import numpy as np
import pytest
from PIL import Image

from bestshot.errors import BestshotError
from bestshot.upscale.tiled import TileBlender, blend_tiles, blend_weights, refine_tiled, tile_grid

# (width, height, tile, overlap): regular, not divisible by the stride, smaller than a tile,
# one axis smaller than a tile, overlap 0, overlap more than half the tile.
CASES = [
    (96, 64, 32, 8),
    (101, 77, 32, 8),
    (20, 13, 32, 8),
    (150, 20, 64, 16),
    (70, 70, 32, 0),
    (90, 61, 40, 24),
    (33, 33, 32, 31),
]


@pytest.mark.parametrize("width,height,tile,overlap", CASES)
def test_grid_covers_every_pixel_inside_the_image(width, height, tile, overlap):
    boxes = tile_grid(width, height, tile, overlap)
    cover = np.zeros((height, width), int)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert x1 - x0 == min(tile, width) and y1 - y0 == min(tile, height)
        cover[y0:y1, x0:x1] += 1
    assert (cover >= 1).all()


@pytest.mark.parametrize("mode", ["cosine", "linear"])
@pytest.mark.parametrize("width,height,tile,overlap", CASES)
def test_weights_positive_and_normalise_to_one(width, height, tile, overlap, mode):
    ones = [(b, np.ones((b[3] - b[1], b[2] - b[0], 1))) for b in tile_grid(width, height, tile, overlap)]
    blender = TileBlender(width, height, 1, overlap, mode)
    for box, arr in ones:
        blender.add(box, arr)
    assert (blender.wsum > 0).all()
    normalised = blender.result()  # sum_i w_i / sum_i w_i per pixel
    np.testing.assert_allclose(normalised, 1.0, atol=1e-6)


def test_regular_overlap_ramps_sum_to_one_before_normalisation():
    """Neighbouring cosine (and linear) ramps are complementary, so a regular grid needs no fix-up."""
    for mode in ("cosine", "linear"):
        blender = TileBlender(56, 56, 1, 8, mode)  # stride 24: tiles at 0 and 24, no shifted tile
        for box in tile_grid(56, 56, 32, 8):
            blender.add(box, np.ones((32, 32, 1)))
        np.testing.assert_allclose(blender.wsum, 1.0, atol=1e-6)


def test_weights_ramp_only_in_the_overlap():
    w = blend_weights(40, 30, 8, "cosine")
    assert w.shape == (30, 40)
    np.testing.assert_array_equal(w[8:-8, 8:-8], 1.0)
    assert (w > 0).all() and (w[:8, 20] < 1).all() and (w[20, -8:] < 1).all()
    assert np.all(np.diff(w[20, :8]) > 0)  # rising into the tile
    flat = blend_weights(40, 30, 8, "linear", edges=(False, False, False, False))
    np.testing.assert_array_equal(flat, 1.0)


@pytest.mark.parametrize("mode", ["cosine", "linear"])
@pytest.mark.parametrize("width,height,tile,overlap", CASES)
def test_constant_image_stays_constant(width, height, tile, overlap, mode):
    value = np.array([0.37, 0.5, 0.91])
    tiles = [
        (b, np.broadcast_to(value, (b[3] - b[1], b[2] - b[0], 3))) for b in tile_grid(width, height, tile, overlap)
    ]
    out = blend_tiles(tiles, width, height, mode)
    assert out.shape == (height, width, 3)
    np.testing.assert_allclose(out, np.broadcast_to(value, out.shape), atol=1e-6)


@pytest.mark.parametrize("width,height,tile,overlap", CASES)
def test_identity_round_trip_random_image(width, height, tile, overlap):
    img = np.random.default_rng(width * height).random((height, width, 3))
    tiles = [((x0, y0, x1, y1), img[y0:y1, x0:x1]) for x0, y0, x1, y1 in tile_grid(width, height, tile, overlap)]
    np.testing.assert_allclose(blend_tiles(tiles, width, height, "cosine"), img, atol=1e-5)


def test_blend_actually_mixes_overlapping_tiles():
    """Two tiles of different constants: the overlap is a strictly monotone mix, outside is pure."""
    boxes = tile_grid(48, 16, 32, 16)
    assert len(boxes) == 2
    out = blend_tiles([(boxes[0], np.zeros((16, 32, 1))), (boxes[1], np.ones((16, 32, 1)))], 48, 16)
    row = out[0, :, 0]
    assert row[:16].max() == 0 and row[32:].min() == 1
    assert np.all(np.diff(row[16:32]) > 0)


def test_refine_tiled_identity_calls_fn_per_tile_and_saves_tiles(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    seen = []

    def identity(tile, box):
        seen.append(box)
        assert tile.size == (box[2] - box[0], box[3] - box[1])
        return tile

    out = refine_tiled(
        image,
        identity,
        tile_size=32,
        overlap=8,
        progress=False,
        tiles_dir=tmp_path / "tiles",
        tile_name="tag_tile_{index:03d}.png",
    )
    assert seen == tile_grid(70, 50, 32, 8)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image))
    saved = sorted(p.name for p in (tmp_path / "tiles").iterdir())
    assert saved == [f"tag_tile_{i:03d}.png" for i in range(len(seen))]


def test_refine_tiled_blends_refined_tiles_and_resizes_wrong_sized_output():
    image = Image.new("RGB", (60, 40), (10, 20, 30))
    out = refine_tiled(
        image,
        lambda tile, box: Image.new("RGB", (16, 16), (200, 100, 50)),
        tile_size=32,
        overlap=8,
        mode="linear",
        progress=False,
    )
    assert out.size == (60, 40)
    assert set(map(tuple, np.asarray(out).reshape(-1, 3))) == {(200, 100, 50)}


def test_bad_settings_are_clear_errors():
    with pytest.raises(BestshotError, match="overlap"):
        tile_grid(100, 100, 32, 32)
    with pytest.raises(BestshotError, match="blend mode"):
        blend_weights(8, 8, 2, "gaussian")
