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


def test_sweep_2x2_writes_tables_plots_and_contact_sheet_and_resumes(
    manifest, tmp_path, tiny_sd15, tiny_clip, capsys, monkeypatch
):
    import bestshot.evaluate.sweep as S
    import bestshot.generation as B  # the best-of-N core's candidate maker, which eval generate runs through

    calls, evals = [], []
    real_mc, real_eval = B.make_candidates, S.evaluate_folder
    monkeypatch.setattr(B, "make_candidates", lambda *a, **k: calls.append(a[2]) or real_mc(*a, **k))
    monkeypatch.setattr(S, "evaluate_folder", lambda *a, **k: evals.append(a[1]) or real_eval(*a, **k))
    out = tmp_path / "sweep"
    argv = [
        "eval",
        "sweep",
        "--manifest",
        str(manifest),
        "--guidance",
        "1,4.5",
        "--steps",
        "1,2",
        "--num",
        "4",
        "--out",
        str(out),
        "--model",
        tiny_sd15,
        "--scorer",
        tiny_clip,
        "--clip",
        tiny_clip,
        "--size",
        "32x32",
        "--worst",
        "6",
    ]
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


def test_sweep_any_imgcfg_fields_with_xyz_grid(manifest, tmp_path, tiny_sd15, tiny_clip, capsys, monkeypatch):
    """--axis scheduler=... --axis steps=...: every point generated with its settings, an image grid per point,
    an X/Y/Z grid, plots over the first axis; the old flags still add their axes."""
    out = tmp_path / "xyz"
    argv = [
        "eval",
        "sweep",
        "--manifest",
        str(manifest),
        "--axis",
        "scheduler=euler,ddim",
        "--axis",
        "steps=1,2",
        "--num",
        "2",
        "--out",
        str(out),
        "--model",
        tiny_sd15,
        "--scorer",
        tiny_clip,
        "--clip",
        tiny_clip,
        "--size",
        "32x32",
        "--worst",
        "2",
    ]
    code, stdout, err = run_cli(argv, capsys, monkeypatch)
    assert code == 0, err
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:2] == ["scheduler", "steps"]
    assert [(r["scheduler"], r["steps"], r["folder"]) for r in rows] == [
        ("euler", "1", "scheduler-euler_steps-1"),
        ("euler", "2", "scheduler-euler_steps-2"),
        ("ddim", "1", "scheduler-ddim_steps-1"),
        ("ddim", "2", "scheduler-ddim_steps-2"),
    ]
    for r in rows:
        meta = json.loads(next((out / r["folder"]).glob("0*.json")).read_text())
        assert meta["scheduler"] == r["scheduler"] and meta["steps"] == int(r["steps"])
        with Image.open(out / r["folder"] / "grid.png") as im:
            assert im.width > 128
    assert "| scheduler | steps |" in (out / "results.md").read_text()
    with Image.open(out / "xyz_grid.png") as im:
        assert im.width > 2 * 128 and im.height > 2 * 128
    assert (out / "plot_fid.png").is_file()
    # three axes: one X/Y grid per value of the third
    argv3 = [a if a != "steps=1,2" else "guidance=1,2" for a in argv] + ["--steps", "1"]
    code, _, err = run_cli(argv3, capsys, monkeypatch)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("xyz_grid_*.png")) == ["xyz_grid_steps-1.png"]


@pytest.mark.parametrize(
    "axis, message",
    [
        ("schedular=euler", "unknown or unsweepable field 'schedular'"),
        ("scheduler=euler,eulr", "unknown scheduler 'eulr'"),
        ("steps=10,ten", "'ten' is not a whole number"),
        ("width=500", "multiple of 8"),
        ("blocklist=a,b", "unknown or unsweepable field 'blocklist'"),
        ("guidance=", "has no values"),
        ("steps", "FIELD=V1,V2"),
        ("refiner=yes,maybe", "'maybe' is not true or false"),
    ],
)
def test_sweep_axis_errors(axis, message, manifest, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(
        ["eval", "sweep", "--manifest", str(manifest), "--axis", axis, "--out", str(tmp_path / "o")],
        capsys,
        monkeypatch,
    )
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_sweep_axis_parsing():
    from bestshot.errors import BestshotError
    from bestshot.evaluate.sweep import Axis, SweepConfig, parse_axis, point_name

    assert parse_axis("refiner_split=0.7,0.8").values == (0.7, 0.8)
    assert parse_axis("scheduler=none,DPM++ 2M").values == (None, "dpmpp_2m")
    assert (
        point_name((parse_axis("scheduler=euler"), parse_axis("steps=10")), ("euler", 10)) == "scheduler-euler_steps-10"
    )
    assert point_name((Axis("guidance", (7.5,)), Axis("steps", (30,))), (7.5, 30)) == "g7.5_s30"
    with pytest.raises(BestshotError, match="same field"):
        SweepConfig("m.csv", "o", axes=(parse_axis("steps=1"), parse_axis("steps_base=2"))).sweep_axes()
