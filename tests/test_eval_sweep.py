"""`bestshot eval sweep`: a 2×2 grid with 4 samples per cell on tiny models; reports, plots, resume."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from helpers import CAPTIONS, run_cli


@pytest.fixture
def manifest(tmp_path):
    from bestshot.evaluate.manifest import build_folder_manifest

    folder = tmp_path / "real"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, cap in enumerate(CAPTIONS):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
        (folder / f"im{i}.txt").write_text(cap)
    (folder / "im2.png").write_bytes(b"not a png")  # a corrupt row: reported and skipped
    return build_folder_manifest(folder, tmp_path / "m.csv")


def test_sweep_2x2_writes_tables_plots_and_contact_sheet_and_resumes(manifest, tmp_path, tiny_sd15, tiny_clip,
                                                                     capsys, monkeypatch):
    import bestshot.evaluate.batch as B
    import bestshot.evaluate.sweep as S

    calls, evals = [], []
    real_mc, real_eval = B.make_candidates, S.evaluate_folder
    monkeypatch.setattr(B, "make_candidates", lambda *a, **k: calls.append(a[2]) or real_mc(*a, **k))
    monkeypatch.setattr(S, "evaluate_folder", lambda *a, **k: evals.append(a[1]) or real_eval(*a, **k))
    out = tmp_path / "sweep"
    argv = ["eval", "sweep", "--manifest", str(manifest), "--guidance", "1,4.5", "--steps", "1,2", "--num", "4",
            "--out", str(out), "--model", tiny_sd15, "--scorer", tiny_clip, "--clip", tiny_clip, "--size", "32x32",
            "--worst", "6"]
    code, stdout, err = run_cli(argv, capsys, monkeypatch)
    assert code == 0, err
    assert "im2.png: corrupt" in err
    assert len(calls) == 16 and len(evals) == 4

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(float(r["guidance"]), int(r["steps"])) for r in rows} == {(1, 1), (1, 2), (4.5, 1), (4.5, 2)}
    for r in rows:
        assert int(r["n_fake"]) == 4 and int(r["n_real"]) == 4
        assert float(r["fid"]) >= 0 and float(r["sec_per_image"]) > 0 and float(r["cmmd"]) >= 0
        assert "NOT comparable" in r["extractor"] and r["resize"]
        assert len(list((out / r["folder"]).glob("[0-9]*.png"))) == 4
    # different settings give different images, so the cells cannot all score the same
    assert len({r["clip_cosine"] for r in rows}) > 1
    md = (out / "results.md").read_text()
    assert md.count("\n| 1 |") + md.count("\n| 4.5 |") == 4 and "resize:" in md and "4 real images" in md

    plots = sorted(p.name for p in out.glob("plot_*.png"))
    for key in ("fid", "kid_mean", "cmmd", "clip_score", "sec_per_image"):
        assert f"plot_{key}.png" in plots
    assert "plot_is_mean.png" not in plots  # the CLIP extractor has no class logits
    for p in plots:
        with Image.open(out / p) as im:
            assert im.width > 300 and im.height > 150
    with Image.open(out / "worst_clip.png") as sheet:
        assert sheet.width > 4 * 100 and sheet.height > 2 * 100  # 6 thumbnails in rows of 4, captions under
    # the contact sheet shows the lowest per-image cosines of all 16 images
    metas = [json.loads(p.read_text()) for p in out.glob("g*_s*/[0-9]*.json")]
    assert len(metas) == 16

    # resume: nothing regenerated, cached metrics reused, reports rewritten identically
    calls.clear(), evals.clear()
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert code == 0, err
    assert calls == [] and evals == []
    with open(out / "results.csv", newline="") as f:
        again = list(csv.DictReader(f))
    assert all(r["generated_now"] == "0" for r in again)
    drop = lambda rs: [{k: v for k, v in r.items() if k != "generated_now"} for r in rs]  # noqa: E731
    assert drop(again) == drop(rows)

    # one image of one cell deleted: only it is regenerated and only that cell re-measured
    (out / "g4.5_s2" / "000003.png").unlink()
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert code == 0, err
    assert calls == [CAPTIONS[3]] and len(evals) == 1 and evals[0][0].parent.name == "g4.5_s2"


def test_plots_and_contact_sheet_units(tmp_path):
    from bestshot.evaluate.plots import contact_sheet, metric_plots

    rows = [{"guidance": g, "steps": s, "fid": g * s, "clip_score": None} for g in (2.0, 5.0) for s in (10, 20)]
    files = metric_plots(rows, tmp_path)
    assert [f.name for f in files] == ["plot_fid.png"]  # a metric with no values gets no plot
    items = []
    for i in range(5):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
        items.append({"path": tmp_path / f"{i}.png", "caption": "a long caption " * 5, "label": f"#{i}"})
    sheet = contact_sheet(items, tmp_path / "sheet.png", cols=2, thumb=64)
    with Image.open(sheet) as im:
        assert im.width == 2 * 70 + 6 and im.height > 3 * 64
        # thumbnails were enlarged (nearest): the first one's top-left block is the first image's colour
        assert im.getpixel((10, 10)) == (0, 0, 0) and im.getpixel((6 + 70 + 10, 10)) == (40, 0, 0)
