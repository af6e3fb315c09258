"""GenEval: the shipped prompt set, the rules on a deterministic detector over PIL drawings, a tiny random
OWLv2 loaded through the real loader, and the run loop with its JSON / CSV / table outputs."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from bestshot.errors import BestshotError
from bestshot.evaluate import geneval_run
from bestshot.evaluate.detect import Detection, load_detector, select
from bestshot.evaluate.geneval import (
    COLOURS,
    GenevalRules,
    colour_of,
    judge_image,
    load_prompts,
    parse_line,
    relative_position,
)
from bestshot.evaluate.geneval_run import GenevalConfig, evaluate_geneval, rich_table
from helpers import run_cli


class ShapeDetector:
    """A deterministic detector: every blob of non-white pixels is a box; wide ones are cars, tall ones dogs,
    square ones cups. Its score is the blob's darkness-independent constant 0.9, or 0.2 for blobs under 30 px
    (a "faint" detection the counting threshold drops)."""

    name = "shapes"

    def detect(self, image, classes, threshold, nms=0.5, max_objects=16):
        arr = np.asarray(image.convert("RGB")).astype(int)
        labels, n = ndimage.label((255 - arr).sum(-1) > 30)
        found = {c: [] for c in classes}
        for sl in ndimage.find_objects(labels):
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            w, h = x1 - x0, y1 - y0
            cls = "car" if w > 1.3 * h else "dog" if h > 1.3 * w else "cup"
            if cls in found:
                found[cls].append(Detection((x0, y0, x1, y1), 0.9 if w * h >= 30 else 0.2))
        return {c: select(d, threshold, nms, max_objects) for c, d in found.items()}


def draw(*shapes, size=(120, 100)):
    """shapes: (kind, colour name, x, y) — car 30x14, dog 14x30, cup 16x16, dot 4x4; x, y = top left."""
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    dims = {"car": (30, 14), "dog": (14, 30), "cup": (16, 16), "dot": (4, 4)}
    for kind, colour, x, y in shapes:
        w, h = dims[kind]
        d.rectangle((x, y, x + w - 1, y + h - 1), fill=COLOURS[colour])
    return im


def meta(tag, include, exclude=()):
    return parse_line({"tag": tag, "prompt": "p", "include": include, "exclude": list(exclude)}, "test")


RULES = GenevalRules()
DET = ShapeDetector()


def verdict(image, m):
    return judge_image(image, m, DET, RULES)


# ------------------------------------------------------------------------------------------- prompts


def test_the_shipped_prompt_set_is_geneval():
    prompts = load_prompts()
    assert len(prompts) == 553
    assert Counter(p.tag for p in prompts) == {
        "position": 100,
        "color_attr": 100,
        "two_object": 99,
        "colors": 94,
        "single_object": 80,
        "counting": 80,
    }
    two = next(p for p in prompts if p.prompt == "a photo of two backpacks")
    assert two.include[0]["count"] == 2 and two.exclude[0] == {"class": "backpack", "count": 3}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2 is not valid JSON"),
        ('{"tag": "vibes", "prompt": "x", "include": [{"class": "cat"}]}', "tag 'vibes'"),
        ('{"tag": "colors", "prompt": "x", "include": []}', "non-empty 'include'"),
        ('{"tag": "colors", "prompt": "x", "include": [{"class": "cat", "color": "teal"}]}', "colour 'teal'"),
        ('{"tag": "counting", "prompt": "x", "include": [{"class": "cat", "count": 0}]}', r"include\[0\] 'count'"),
        (
            '{"tag": "position", "prompt": "x", "include": [{"class": "cat", "position": ["above", 0]}]}',
            r"line 2 include\[0\] 'position'",
        ),
    ],
)
def test_a_bad_prompt_file_is_one_line_naming_the_line(tmp_path, line, message):
    f = tmp_path / "meta.jsonl"
    f.write_text(
        '{"tag": "single_object", "prompt": "a photo of a cat", "include": [{"class": "cat", "count": 1}]}\n' + line
    )
    with pytest.raises(BestshotError, match=message) as err:
        load_prompts(f)
    assert "\n" not in str(err.value)
    with pytest.raises(BestshotError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")


# ------------------------------------------------------------------------------------------- rules


@pytest.mark.parametrize("name", list(COLOURS))
def test_colour_of_names_each_colour(name):
    im = draw(("car", name, 40, 40))
    assert colour_of(im, (40, 40, 70, 54)) == name


def test_colour_rules():
    red_car = meta("colors", [{"class": "car", "count": 1, "color": "red"}])
    assert verdict(draw(("car", "red", 10, 10)), red_car)["correct"]
    v = verdict(draw(("car", "blue", 10, 10)), red_car)
    assert not v["correct"] and "expected red car>=1, found blue" in v["reason"]
    attr = meta(
        "color_attr", [{"class": "car", "count": 1, "color": "green"}, {"class": "cup", "count": 1, "color": "pink"}]
    )
    assert verdict(draw(("car", "green", 5, 5), ("cup", "pink", 80, 60)), attr)["correct"]
    assert not verdict(draw(("car", "green", 5, 5), ("cup", "yellow", 80, 60)), attr)["correct"]


def test_count_rules_threshold_nms_and_exclude():
    two = meta("counting", [{"class": "cup", "count": 2}], [{"class": "cup", "count": 3}])
    assert verdict(draw(("cup", "red", 5, 5), ("cup", "red", 60, 5)), two)["correct"]
    v = verdict(draw(("cup", "red", 5, 5), ("cup", "red", 60, 5), ("cup", "red", 30, 60)), two)
    assert not v["correct"] and "expected cup<3, found 3" in v["reason"]
    v = verdict(draw(("cup", "red", 5, 5)), two)
    assert not v["correct"] and "expected cup>=2, found 1" in v["reason"]
    # a faint detection (score 0.2) is under the counting threshold 0.3: it does not count
    assert not verdict(
        draw(("cup", "red", 5, 5), ("dot", "red", 60, 60)), meta("counting", [{"class": "cup", "count": 2}])
    )["correct"]
    # NMS: two overlapping boxes of one object count once
    boxes = [Detection((0, 0, 10, 10), 0.9), Detection((1, 0, 11, 10), 0.8), Detection((50, 50, 60, 60), 0.7)]
    assert [d.score for d in select(boxes, 0.3)] == [0.9, 0.7]
    assert len(select(boxes, 0.3, nms=1.0)) == 3 and len(select(boxes, 0.75, nms=1.0)) == 2


def test_position_rules():
    left = meta("position", [{"class": "dog", "count": 1}, {"class": "car", "count": 1, "position": ["left of", 0]}])
    assert verdict(draw(("car", "red", 5, 40), ("dog", "blue", 90, 35)), left)["correct"]
    v = verdict(draw(("car", "red", 80, 40), ("dog", "blue", 10, 35)), left)
    assert not v["correct"] and "expected car left of target, found right of" in v["reason"]
    above = meta("position", [{"class": "cup", "count": 1}, {"class": "car", "count": 1, "position": ["above", 0]}])
    assert verdict(draw(("car", "red", 40, 2), ("cup", "blue", 45, 70)), above)["correct"]
    v = verdict(draw(("dog", "red", 40, 2), ("cup", "blue", 45, 70)), above)  # no car: no target check
    assert not v["correct"] and "expected car>=1, found 0" in v["reason"]
    # GenEval's margin: a small offset relative to the box sizes is no relation at all
    assert relative_position((0, 0, 10, 10), (1, 0, 11, 10)) == set()
    assert relative_position((0, 0, 10, 10), (30, 0, 40, 10)) == {"left of"}
    assert relative_position((0, 0, 10, 10), (20, 20, 30, 30)) == {"left of", "above"}  # a diagonal is both


def test_the_detector_is_asked_for_all_80_classes_and_answers_for_the_prompts():
    asked = []

    class Recorder(ShapeDetector):
        def detect(self, image, classes, *args, **kw):
            asked.append(list(classes))
            return super().detect(image, classes, *args, **kw)

    m = meta("two_object", [{"class": "car", "count": 1}, {"class": "unicorn", "count": 1}])
    out = judge_image(draw(("car", "red", 5, 5), ("cup", "red", 60, 60)), m, Recorder(), RULES)
    assert asked[0][:2] == ["car", "unicorn"] and len(asked[0]) == 81 and "cup" in asked[0]
    assert set(out["detections"]) == {"car"}  # the cup was found but the prompt does not name it
    judge_image(draw(("car", "red", 5, 5)), m, Recorder(), GenevalRules(all_classes=False))
    assert asked[1] == ["car", "unicorn"]


# ------------------------------------------------------------------------------------------- OWLv2


@pytest.fixture(scope="module")
def tiny_owlv2(tmp_path_factory):
    """A tiny random Owlv2ForObjectDetection + processor (small CLIP BPE vocabulary), saved with save_pretrained."""
    import torch
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    folder = tmp_path_factory.mktemp("owlv2")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16, pad_token="<|endoftext|>"
    )
    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1)
    cfg = Owlv2Config(
        text_config=dict(
            vocab_size=len(vocab), max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1, **small
        ),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=32,
    )
    torch.manual_seed(0)
    Owlv2ForObjectDetection(cfg).eval().save_pretrained(folder)
    Owlv2Processor(
        image_processor=Owlv2ImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tok
    ).save_pretrained(folder)
    return str(folder)


def test_tiny_owlv2_through_the_real_loader(tiny_owlv2):
    det = load_detector(tiny_owlv2, "cpu")
    assert det.pads_square and det.name == tiny_owlv2
    image = draw(("car", "red", 10, 10), ("dog", "blue", 70, 40), size=(96, 64))
    raw = det.raw(image, ["car", "dog"])
    assert sum(len(v) for v in raw.values()) <= 16  # one box per 8x8 patch of the 32x32 input
    for d in (d for ds in raw.values() for d in ds):
        assert 0 <= d.box[0] < d.box[2] <= 96 and 0 <= d.box[1] < d.box[3] <= 64 and 0 <= d.score <= 1
    every = det.detect(image, ["car", "dog"], threshold=-1.0, nms=1.0)  # random weights: scores near 0
    assert {k: len(v) for k, v in every.items()} == {k: len(v) for k, v in raw.items()}
    assert all(a.score >= b.score for ds in every.values() for a, b in zip(ds, ds[1:]))
    assert det.detect(image, ["car", "dog"], threshold=1.0) == {"car": [], "dog": []}
    assert det.raw(image, ["car", "dog"]) == raw  # deterministic
    out = judge_image(
        image, meta("two_object", [{"class": "car", "count": 1}, {"class": "dog", "count": 1}]), det, RULES
    )
    assert isinstance(out["correct"], bool)


def test_a_detector_missing_offline_is_one_line(tiny_clip):
    with pytest.raises(BestshotError, match="not available offline") as err:
        load_detector("google/owlv2-base-patch16-ensemble", "cpu")
    assert "\n" not in str(err.value) and "--detector" in str(err.value)
    with pytest.raises(BestshotError, match="give an OWLv2 or OWL-ViT"):
        load_detector(tiny_clip, "cpu")


# ------------------------------------------------------------------------------------------- the run


def _painter(colour):
    """A generation method that draws a car of ``colour`` left of a blue dog (the 'image' of any prompt)."""

    def method(prompt, seed, ctx):
        return draw(("car", colour, 5, 40), ("dog", "blue", 90, 35)), {"seed": seed}

    return method


def test_run_tabulates_methods_and_writes_json_and_csv(tmp_path, monkeypatch):
    prompts = tmp_path / "meta.jsonl"
    lines = [
        {"tag": "colors", "prompt": "a red car", "include": [{"class": "car", "count": 1, "color": "red"}]},
        {"tag": "colors", "prompt": "a green car", "include": [{"class": "car", "count": 1, "color": "green"}]},
        {"tag": "colors", "prompt": "a red car again", "include": [{"class": "car", "count": 1, "color": "red"}]},
        {
            "tag": "position",
            "prompt": "a car left of a dog",
            "include": [{"class": "dog", "count": 1}, {"class": "car", "count": 1, "position": ["left of", 0]}],
        },
    ]
    prompts.write_text("\n".join(json.dumps(x) for x in lines))
    monkeypatch.setitem(geneval_run.METHODS, "red", _painter("red"))
    geneval_run.register_method("green", _painter("green"))
    monkeypatch.setitem(geneval_run.METHODS, "green", geneval_run.METHODS["green"])
    out = tmp_path / "out"
    cfg = GenevalConfig(methods=("red", "green"), prompts=str(prompts), limit=2, samples=2, n=3, out=str(out))
    res = evaluate_geneval(cfg, detector=DET, progress=False)
    assert res["n_prompts"] == 3 and len(res["rows"]) == 3 * 2 * 2  # limit 2 per tag: 2 colors + 1 position
    t = res["table"]
    assert t["red"]["colors"] == {"n": 4, "correct": 2, "pct": 50.0} and t["green"]["colors"]["pct"] == 50.0
    assert t["red"]["position"]["pct"] == 100.0 and t["red"]["overall"]["pct"] == 75.0
    assert [r["seed"] for r in res["rows"] if r["method"] == "red"] == [0, 3, 6, 9, 12, 15]
    saved = json.loads((out / "geneval.json").read_text())
    assert saved["table"] == t and saved["settings"]["detector"] == "shapes"
    rows = list(csv.reader((out / "geneval.csv").open()))
    assert rows[0] == ["category", "red", "green"] and ["colors", "50.0", "50.0"] in rows and rows[-1][0] == "overall"
    assert rich_table(res).row_count == 3
    empty = tmp_path / "cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)  # without --out nothing is written anywhere
    cfg.out = None
    assert evaluate_geneval(cfg, detector=DET, progress=False)["table"] == t and not list(empty.iterdir())


def test_methods_are_checked_before_anything_loads(tmp_path):
    with pytest.raises(BestshotError, match="unknown method 'magic'"):
        evaluate_geneval(GenevalConfig(methods=("magic",), out=None), detector=DET)
    with pytest.raises(BestshotError, match="--methods is empty"):
        evaluate_geneval(GenevalConfig(methods=(), out=None), detector=DET)
    with pytest.raises(BestshotError, match="unknown GenEval tag"):
        evaluate_geneval(GenevalConfig(tags=("shapes",), out=None), detector=DET)
    with pytest.raises(BestshotError, match="--variant srch: unknown setting 'serch'.*did you mean search"):
        evaluate_geneval(GenevalConfig(variants=("srch=serch=true",), out=None), detector=DET)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--variant", "x=nope=1"], "--variant x: unknown setting 'nope'"),
        (["--variant", "x=search=maybe"], "--variant x: search='maybe' is not true or false"),
        (["--variant", "x=n=two"], "--variant x: n='two' is not a whole number"),
        (["--variant", "noequals"], "must look like NAME=SETTINGS"),
        (["--variant", "x=search=true", "--variant", "x=regions=auto"], "--variant x is given twice"),
        (["--variant", "plain=n=2"], "--variant plain has the name of a method"),
        (["--variant", "x=seed=7"], "--variant x: the seeds follow --seed"),
        (["--variant", "x=search=true,search_at=2"], "--variant x:"),
        (["--methods", "plain,plain"], "names a method twice"),
    ],
)
def test_cli_refuses_a_bad_variant_in_one_line_before_anything_loads(argv, message, capsys, monkeypatch, tmp_path):
    """The detector named is not available offline: the variant's line must come first, and nothing is written."""
    out = tmp_path / "out"
    code, stdout, err = run_cli(["eval", "geneval", *argv, "--out", str(out)], capsys, monkeypatch)
    text = stdout + err
    assert code == 2 and message in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert not out.exists()


WORLD = "a red circle above a blue square"  # the world grammar lays it out: no LLM asked


def _meta(tmp_path, *lines):
    f = tmp_path / "meta.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines))
    return str(f)


def _log(out, column):
    return [json.loads(line) for line in (out / f"generate_{column}.jsonl").read_text().splitlines()]


def test_regions_search_and_a_variant_are_columns_of_the_generate_path(tmp_path):
    out = tmp_path / "out"
    cfg = GenevalConfig(
        methods=("plain", "best_of_n", "regions", "search"),
        variants=("both=regions=auto,search=true",),
        prompts=_meta(tmp_path, {"tag": "single_object", "prompt": WORLD, "include": [{"class": "cup"}]}),
        n=2,
        steps=2,
        out=str(out),
        device="cpu",
    )
    res = evaluate_geneval(cfg, detector=DET, progress=False)
    names = ["plain", "best_of_n", "regions", "search", "both"]
    assert list(res["table"]) == names and [c["name"] for c in res["columns"]] == names
    assert list(csv.reader((out / "geneval.csv").open()))[0] == ["category", *names]
    assert [c.header for c in rich_table(res).columns] == ["category", *names]
    # a search of 2 finishers starts a pool of 4 and one branch: 5 seeds, so each prompt's sample starts 5 seeds on
    assert res["settings"]["seed_stride"] == 5
    rows = {r["method"]: r for r in res["rows"]}
    laid = rows["regions"]["regions"]
    assert laid["used"] and laid["source"] == "world" and laid["objects"] == ["a red circle", "a blue square"]
    assert "regions" not in rows["best_of_n"] and "search" not in rows["regions"]
    for name in ("search", "both"):
        s = rows[name]["search"]
        assert s["pool"] == 4 and len(s["survivors"]) == 1 and s["branches"] == 1
    assert rows["both"]["regions"]["used"] and rows["plain"]["candidates"] == 1 and rows["both"]["candidates"] == 2
    did = {c["name"]: c["did"] for c in res["columns"]}
    assert did["regions"] == {"runs": 1, "regions_used": 1}
    assert did["search"] == {"runs": 1, "searched": 1, "search_pool": 4}
    assert did["plain"] == {"runs": 1} and res["columns"][4]["settings"] == "regions=auto,search=true"
    # the settings reached generate(): its run records, as bestshot generate writes them
    both = _log(out, "both")[0]
    assert both["settings"]["search"] and both["regions"]["used"] and both["settings"]["n_images"] == 2
    assert _log(out, "regions")[0]["regions"]["used"] and "search" not in _log(out, "regions")[0]["settings"]
    assert "regions" not in _log(out, "best_of_n")[0] and "search" not in _log(out, "best_of_n")[0]["settings"]
    assert json.loads((out / "geneval.json").read_text())["columns"] == res["columns"]
    assert "both: a planned layout steered 1/1 runs; 1/1 runs searched (pool 4)" in rich_table(res).caption


def test_a_regions_row_that_fell_back_to_plain_sampling_says_so(tmp_path, monkeypatch):
    """A prompt the planner cannot lay out (its LLM gives no layout): the regions run is best_of_n's run."""
    from bestshot.layout import Layout
    from bestshot.models.loader import CACHE
    from bestshot.prompts import layout_llm

    monkeypatch.setattr(CACHE, "layouts", {})
    monkeypatch.setattr(layout_llm, "llm_layout", lambda p, **kw: Layout(prompt=p, source="none", reason="no LLM here"))
    prompts = _meta(tmp_path, {"tag": "single_object", "prompt": "a photo of a cup", "include": [{"class": "cup"}]})
    cfg = GenevalConfig(methods=("best_of_n", "regions"), prompts=prompts, n=2, steps=2, out=None, device="cpu")
    res = evaluate_geneval(cfg, detector=DET, progress=False)
    best, steered = res["rows"]
    assert not steered["regions"]["used"] and "plain sampling: no LLM here" in steered["regions"]["note"]
    assert steered["seed"] == best["seed"] and steered["score"] == pytest.approx(best["score"])
    assert res["columns"][1]["did"] == {"runs": 1, "regions_used": 0}
    assert "regions: a planned layout steered 0/1 runs (the others: plain sampling" in rich_table(res).caption


def test_cli_variant_column_and_a_failing_column_keeps_what_finished(tiny_owlv2, capsys, monkeypatch, tmp_path):
    """Through the CLI with the tiny OWLv2: a variant column and its settings in the run record; then a search
    on a sampler it cannot branch with fails in one line after plain's image, which geneval.json keeps."""
    prompts = _meta(tmp_path, {"tag": "single_object", "prompt": WORLD, "include": [{"class": "cup"}]})
    common = ["eval", "geneval", "--prompts", prompts, "--n", "2", "--steps", "2", "--detector", tiny_owlv2]
    out = tmp_path / "out"
    gated = "gated=gate=true,score_min=0.99"  # a variant whose gate refuses every run: no image kept, a miss
    argv = [*common, "--methods", "plain", "--variant", "srch=search=true,search_pool=3", "--variant", gated]
    code, stdout, err = run_cli([*argv, "--out", str(out), "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert list(json.loads(stdout)) == ["plain", "srch", "gated"]
    assert list(csv.reader((out / "geneval.csv").open()))[0] == ["category", "plain", "srch", "gated"]
    saved = json.loads((out / "geneval.json").read_text())
    refused = saved["rows"][2]
    assert refused["kept"] is False and not refused["correct"] and refused["reason"].startswith("no image kept")
    assert saved["columns"][2]["did"] == {"runs": 1, "kept_none": 1} and saved["table"]["gated"]["overall"]["pct"] == 0
    rec = _log(out, "srch")[0]
    assert rec["settings"]["search"] and rec["settings"]["search_pool"] == 3 and len(rec["search"]["pool"]) == 3
    bad = tmp_path / "bad"
    argv = [*common, "--methods", "plain,search", "--scheduler", "dpmpp_2m", "--out", str(bad)]
    code, stdout, err = run_cli(argv, capsys, monkeypatch)
    text = stdout + err
    assert code == 2 and "--search branches from the predicted clean image" in text and "Traceback" not in text
    saved = json.loads((bad / "geneval.json").read_text())
    assert saved["interrupted"] and "--search" in saved["error"] and [r["method"] for r in saved["rows"]] == ["plain"]


def test_plain_and_best_of_n_run_the_generate_path(tmp_path):
    """The embedded model through bestshot.generation.generate: plain's image is best_of_n's first candidate."""
    prompts = tmp_path / "meta.jsonl"
    prompts.write_text(json.dumps({"tag": "single_object", "prompt": "a red circle", "include": [{"class": "cup"}]}))
    cfg = GenevalConfig(prompts=str(prompts), n=2, steps=2, out=str(tmp_path / "out"), device="cpu")
    res = evaluate_geneval(cfg, detector=DET, progress=False)
    plain, best = res["rows"]
    assert plain["method"] == "plain" and best["method"] == "best_of_n" and plain["seed"] == 0
    assert best["seed"] in (0, 1) and isinstance(plain["correct"], bool)
    assert plain["path"] and (tmp_path / "out" / "images" / "plain").is_dir()
