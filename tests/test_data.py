"""Generic datasets: caption folders, CSV manifests, Fashion-MNIST, build_dataset."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bestshot.errors import BestshotError
from bestshot.train.data import FASHION_MNIST_ROOT, CaptionFolderDataset, FashionMNISTDataset, build_dataset
from bestshot.world import WorldDataset


def _img(path: Path, colour, size=(40, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


@pytest.fixture
def folder(tmp_path):
    _img(tmp_path / "red.png", (255, 0, 0))
    (tmp_path / "red.txt").write_text("a red  square\n")
    _img(tmp_path / "sub" / "blue.jpg", (0, 0, 255), size=(20, 50))
    (tmp_path / "sub" / "blue.txt").write_text("a blue thing")
    _img(tmp_path / "clear.png", (0, 255, 0, 0), mode="RGBA")  # fully transparent -> white
    (tmp_path / "clear.txt").write_text("nothing at all")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (tmp_path / "broken.txt").write_text("a corrupt file")
    _img(tmp_path / "nocap.png", (0, 0, 0))
    return tmp_path


def test_caption_folder(folder):
    with pytest.warns(UserWarning) as rec:
        ds = CaptionFolderDataset(folder, size=16)
    messages = " ".join(str(w.message) for w in rec)
    assert "broken.png" in messages and "nocap.png" in messages
    assert len(ds) == 3
    got = {cap: x for x, cap in (ds[i] for i in range(len(ds)))}
    assert set(got) == {"a red square", "a blue thing", "nothing at all"}
    red = got["a red square"]
    assert red.shape == (3, 16, 16) and red.dtype == torch.float32
    assert torch.allclose(red[:, 8, 8], torch.tensor([1.0, -1.0, -1.0]), atol=0.02)
    assert torch.allclose(got["nothing at all"], torch.ones(3, 16, 16), atol=0.02)
    assert got["a blue thing"][2].min() > 0.9  # portrait image centre-cropped, still all blue


def test_csv_manifest(tmp_path):
    _img(tmp_path / "imgs" / "a.png", (10, 20, 30))
    _img(tmp_path / "imgs" / "b.png", (200, 100, 0))
    (tmp_path / "m.csv").write_text(
        'image,caption\nimgs/a.png,"dark, bluish"\nimgs/b.png,orange\nimgs/gone.png,missing\n'
    )
    with pytest.warns(UserWarning, match="gone.png"):
        ds = build_dataset(str(tmp_path / "m.csv"), size=8, seed=0)
    assert [ds[i][1] for i in range(len(ds))] == ["dark, bluish", "orange"]
    assert ds[0][0].shape == (3, 8, 8)
    # a folder holding only a manifest uses it
    with pytest.warns(UserWarning):
        assert len(CaptionFolderDataset(tmp_path, size=8)) == 2
    (tmp_path / "bad.csv").write_text("file,text\na.png,x\n")
    with pytest.raises(BestshotError, match="image,caption"):
        CaptionFolderDataset(tmp_path / "bad.csv")


def test_errors(tmp_path):
    with pytest.raises(BestshotError, match="does not exist"):
        CaptionFolderDataset(tmp_path / "nope")
    with pytest.raises(BestshotError, match="no readable"):
        CaptionFolderDataset(tmp_path)
    for bad in ("imagenet", "world:5", "world:x", str(tmp_path / "nope.txt")):
        with pytest.raises(BestshotError):
            build_dataset(bad, size=32)
    with pytest.raises(BestshotError, match="apt-get install dataset-fashion-mnist"):
        FashionMNISTDataset(root=tmp_path / "missing")


def test_build_world():
    ds = build_dataset("world", size=32, length=10, seed=3)
    assert isinstance(ds, WorldDataset) and len(ds) == 10
    x, cap = ds[0]
    assert x.shape == (3, 32, 32) and isinstance(cap, str)
    assert torch.equal(x, WorldDataset(10, 32, seed=3)[0][0])
    one = build_dataset("world:1", size=32, length=20)
    assert all(len(one.scene(i).objects) == 1 for i in range(20))
    assert build_dataset("world:1-2", size=32, length=5).max_objects == 2


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist():
    ds = FashionMNISTDataset(split="test", size=32)
    assert len(ds) == 10000
    x, cap = ds[0]
    assert x.shape == (3, 32, 32) and -1.0 <= float(x.min()) < float(x.max()) <= 1.0
    assert torch.equal(x[0], x[1])  # grayscale replicated
    assert "ankle boot" in cap  # the first test image is an ankle boot (label 9)
    caps = {ds.caption(i) for i in range(200)}
    assert len(caps) > 20 and all(c == c.lower() for c in caps)
    assert ds.caption(5) == FashionMNISTDataset(split="test", size=32).caption(5)
    assert np.bincount(ds.labels, minlength=10).tolist() == [1000] * 10
    sub = build_dataset("fashion-mnist:test", size=28, length=50)
    assert len(sub) == 50 and sub[3][0].shape == (3, 28, 28)
