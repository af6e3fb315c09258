"""The gallery on the folder `bestshot stage1` really writes (``stage1/{tag}_stage1_WxH.png`` with
``metadata/{tag}.json``), and its verdict rows under concurrent delete / undo."""

from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from bestshot.curate.config import load_config
from bestshot.curate.preferences import collect_stage1
from bestshot.curate.workflow import Workflow
from bestshot.errors import BestshotError
from bestshot.scoring.taste import add_preference, latest_verdicts, read_preferences
from bestshot.server import create_app
from bestshot.server.curation import Curation
from test_curate_workflow import write_config


@pytest.fixture(scope="module")
def stage1_folder(tmp_path_factory):
    """Two 32² images made by the real stage-1 code on the shipped embedded model (2 steps)."""
    folder = tmp_path_factory.mktemp("stage1")
    wf = Workflow(load_config(write_config(folder, "embedded")), say=lambda m: None)
    wf.prompt_files.ensure()
    tags = wf.run("stage1", count=2)
    return wf.layout.root, tags


@pytest.fixture
def outputs(stage1_folder, tmp_path):
    """A fresh copy of the stage-1 outputs folder for each test."""
    import shutil

    root, tags = stage1_folder
    shutil.copytree(root, tmp_path / "outputs")
    return tmp_path / "outputs", tags


def test_gallery_reads_moves_and_records_the_stage1_layout(outputs, tmp_path):
    root, tags = outputs
    meta = {t: json.loads((root / "metadata" / f"{t}.json").read_text()) for t in tags}
    names = {t: (root / meta[t]["stages"]["stage1"]["file"]).name for t in tags}
    assert all(n.startswith(f"{t}_stage1_") for t, n in names.items())  # the layout the gallery must read
    app = create_app(out_dir=str(tmp_path / "images_out"), curate_dir=str(root))
    with TestClient(app, base_url="http://localhost") as c:
        listed = {x["name"]: x for x in c.get("/v1/curate").json()["stage1"]}
        for t in tags:
            assert listed[names[t]]["metadata"]["prompt"] == meta[t]["prompt"] != ""
        t0, t1 = tags
        assert c.post("/v1/curate/keep", json={"name": names[t0]}).status_code == 200
        assert c.post("/v1/curate/delete", json={"name": names[t1]}).status_code == 200
        # the metadata went to trash/ with the image: nothing is left behind in metadata/
        assert not (root / "metadata" / f"{t1}.json").exists() and (root / "trash" / f"{t1}.json").is_file()
        assert (root / "trash" / names[t1]).is_file()
        rows = read_preferences(root)
        assert [(r["image"], r["verdict"], r["prompt"], r["tag"]) for r in rows] == [
            (f"stage1/{names[t0]}", "keep", meta[t0]["prompt"], t0),
            (f"stage1/{names[t1]}", "delete", meta[t1]["prompt"], t1),
        ]
        assert c.post("/v1/curate/undo", json={"name": names[t1]}).status_code == 200
        assert (root / "metadata" / f"{t1}.json").is_file() and not (root / "trash" / f"{t1}.json").exists()
        assert read_preferences(root)[-1]["prompt"] == meta[t1]["prompt"]
        assert {x["name"] for x in c.get("/v1/curate").json()["stage1"] if x["metadata"]} == set(names.values())
    # taste collect agrees with the gallery's rows: only the undone image (its verdict forgotten) is new
    assert [(r["image"], r["verdict"]) for r in collect_stage1(root)] == [(f"stage1/{names[t1]}", "keep")]


def test_collect_repairs_rows_logged_without_a_prompt(outputs):
    root, tags = outputs
    names = [f"stage1/{p.name}" for p in sorted((root / "stage1").iterdir())]
    # what the gallery logged while it looked for metadata/<image stem>.json: the verdict, no prompt
    add_preference(root, "", names[0], "star", source="gallery", tag=tags[0])
    add_preference(root, "", names[1], "keep", source="gallery", tag=tags[1])
    added = collect_stage1(root)
    assert sorted((r["image"], r["verdict"]) for r in added) == [(names[0], "star"), (names[1], "keep")]
    latest = latest_verdicts(read_preferences(root))
    assert all(latest[n]["prompt"] for n in names) and latest[names[0]]["verdict"] == "star"
    assert collect_stage1(root) == []  # repaired once, then idempotent again


def test_delete_and_undo_racing_never_leave_a_contradicting_row(outputs):
    """8 threads alternate delete and undo on one image; after every round the latest row says where it is."""
    root, tags = outputs
    cur = Curation(root)
    # the image of tag 1 exactly: a second tag made in the same second is tag 1 + "_1"
    name = next(p.name for p in (root / "stage1").iterdir() if p.name.startswith(f"{tags[0]}_stage1_"))
    image = f"stage1/{name}"
    bad = []
    for rnd in range(40):
        gate = threading.Barrier(8)

        def act(i: int, rnd: int = rnd, gate: threading.Barrier = gate) -> None:
            gate.wait()
            try:
                (cur.delete if (i + rnd) % 2 else cur.undo)(name)
            except FileNotFoundError:
                pass  # the loser of a race: the image had already moved
            except BestshotError as e:
                if "already exists" not in str(e):
                    bad.append(repr(e))

        threads = [threading.Thread(target=act, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        last = [r for r in read_preferences(root) if r["image"] == image][-1]["verdict"]
        in_trash, in_stage1 = (root / "trash" / name).is_file(), (root / "stage1" / name).is_file()
        assert in_trash != in_stage1
        if (last == "delete") != in_trash:
            bad.append(f"round {rnd}: latest row {last!r} but the image is in {'trash' if in_trash else 'stage1'}/")
        if (root / "trash" / f"{tags[0]}.json").is_file() != in_trash:  # the metadata travels with its image
            bad.append(f"round {rnd}: the metadata is not where the image is")
    assert not bad, bad[:5]


def test_a_full_disk_undoes_the_move_and_says_which_folder(outputs, tmp_path, monkeypatch):
    import errno

    import bestshot.server.curation as C

    root, tags = outputs
    # the image of tag 1 exactly: a second tag made in the same second is tag 1 + "_1"
    name = next(p.name for p in (root / "stage1").iterdir() if p.name.startswith(f"{tags[0]}_stage1_"))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "record_verdict", full)
    app = create_app(out_dir=str(tmp_path / "images_out"), curate_dir=str(root))
    with TestClient(app, base_url="http://localhost") as c:
        r = c.post("/v1/curate/delete", json={"name": name})
        assert r.status_code == 507 and str(root) in r.json()["detail"] and "nothing was changed" in r.json()["detail"]
        # the image and its metadata are where they were, and no row claims otherwise
        assert (root / "stage1" / name).is_file() and (root / "metadata" / f"{tags[0]}.json").is_file()
        assert not (root / "trash" / name).exists() and read_preferences(root) == []
        r = c.post("/v1/curate/keep", json={"name": name})
        assert r.status_code == 507 and c.get("/v1/curate").json()["stage1"][0]["kept"] is False
