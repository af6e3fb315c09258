"""Taste: preference rows from curation, the learned head, scorer ensembles."""

import json

import numpy as np
import pytest
from PIL import Image

from bestshot.curate.layout import Layout
from bestshot.curate.preferences import collect_stage1
from bestshot.errors import BestshotError
from bestshot.scoring import get_scorer
from bestshot.scoring.ensemble import DEFAULT_SCALE, MEASURED, EnsembleScorer, Scale, Term, parse_ensemble, scale_of
from bestshot.scoring.taste import (
    EmbeddingCache,
    TasteHead,
    TasteScorer,
    add_preference,
    dataset,
    latest_verdicts,
    read_preferences,
    train_head,
)
from helpers import run_cli


def _curation(root, n=4, size=32):
    """A stage-1 folder as `bestshot stage1` leaves it: PNG + metadata per tag."""
    lay = Layout(root).make()
    tags = []
    for i in range(n):
        tag = f"20261204_1200{i:02d}"
        p = lay.stage1(tag, size, size)
        colour = (255, 0, 0) if i % 2 else (0, 0, 255)
        Image.new("RGB", (size, size), colour).save(p)
        lay.write_metadata(
            tag,
            {
                "tag": tag,
                "prompt": f"prompt {i // 2}",
                "stages": {"stage1": {"file": f"stage1/{p.name}", "size": [size, size]}},
            },
        )
        tags.append((tag, p))
    return lay, tags


def test_a_deletion_becomes_a_row_and_collect_is_idempotent(tmp_path):
    lay, tags = _curation(tmp_path / "outputs")
    tags[1][1].unlink()  # the user deletes one stage-1 image
    added = collect_stage1(lay.root)
    verdicts = {r["tag"]: r["verdict"] for r in added}
    assert verdicts == {tags[0][0]: "keep", tags[1][0]: "delete", tags[2][0]: "keep", tags[3][0]: "keep"}
    row = next(r for r in added if r["verdict"] == "delete")
    assert row["prompt"] == "prompt 0" and row["source"] == "stage1-folder" and row["image"].startswith("stage1/")
    assert collect_stage1(lay.root) == []  # nothing new
    tags[2][1].unlink()  # a later deletion of a kept image
    again = collect_stage1(lay.root)
    assert [(r["tag"], r["verdict"]) for r in again] == [(tags[2][0], "delete")]
    assert len(read_preferences(lay.root)) == 5
    assert latest_verdicts(read_preferences(lay.root))[again[0]["image"]]["verdict"] == "delete"


def test_star_is_not_downgraded_by_collect(tmp_path):
    lay, tags = _curation(tmp_path / "outputs", n=1)
    add_preference(lay.root, "prompt 0", f"stage1/{tags[0][1].name}", "star", source="gallery", tag=tags[0][0])
    assert collect_stage1(lay.root) == []
    with pytest.raises(BestshotError, match="verdict"):
        add_preference(lay.root, "p", "x.png", "maybe", source="gallery")


def test_collect_cli_and_missing_folder(tmp_path, capsys, monkeypatch):
    lay, tags = _curation(tmp_path / "outputs")
    tags[0][1].unlink()
    code, out, err = run_cli(["taste", "collect", "--workflow-dir", str(tmp_path), "--no-embed"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["added"] == {"keep": 3, "delete": 1, "star": 0}
    code, out, err = run_cli(
        ["taste", "collect", "--outputs", str(tmp_path / "nope"), "--no-embed"], capsys, monkeypatch
    )
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def _synthetic(outputs, n_prompts=12, per=4, dim=8, seed=0):
    """Rows + cached embeddings where the user deletes images with a positive first coordinate."""
    rng = np.random.default_rng(seed)
    cache = EmbeddingCache(outputs, "fake")
    for p in range(n_prompts):
        for k in range(per):
            v = rng.normal(size=dim).astype(np.float32)
            v[0] = (1.0 if k % 2 else -1.0) * (0.5 + rng.random())
            img = f"stage1/p{p}_{k}.png"
            cache.vectors[img] = v
            add_preference(outputs, f"prompt {p}", img, "delete" if v[0] > 0 else "keep", source="test")
    cache.save()


@pytest.mark.parametrize("kind", ["logistic", "bt"])
def test_head_learns_cross_validates_saves_and_warm_starts(tmp_path, kind):
    _synthetic(tmp_path)
    ds = dataset(tmp_path, "fake")
    assert ds.x.shape == (48, 8) and ds.y.sum() == 24
    head = train_head(ds, kind=kind, embedder="fake", folds=4)
    assert head.info["rows"] == 48 and head.info["folds"] == 4
    assert head.info["cv_accuracy"] >= 0.9  # the rule is linear in the embedding
    assert head.w[0] < 0  # a positive first coordinate is what gets deleted
    path = head.save(tmp_path / "taste" / "head.json")
    back = TasteHead.load(path)
    assert np.allclose(back.w, head.w) and back.info["rows"] == 48 and back.kind == kind
    again = train_head(ds, kind=kind, embedder="fake", folds=4, warm=back)
    assert again.info["warm_start"] is True
    other = train_head(ds, kind=kind, embedder="other", folds=4, warm=back)  # another embedder: no warm start
    assert other.info["warm_start"] is False


def test_head_needs_both_verdicts(tmp_path):
    cache = EmbeddingCache(tmp_path, "fake")
    cache.vectors["a.png"] = np.ones(4, np.float32)
    cache.save()
    add_preference(tmp_path, "p", "a.png", "keep", source="test")
    add_preference(tmp_path, "p", "b.png", "delete", source="test")  # never embedded
    with pytest.raises(BestshotError, match="1 rows without an embedding"):
        train_head(dataset(tmp_path, "fake"), embedder="fake")
    with pytest.raises(BestshotError, match="taste head"):
        TasteHead.load(tmp_path / "missing.json")


def test_collect_embeds_train_cli_and_taste_scorer(tmp_path, tiny_clip, capsys, monkeypatch):
    lay, tags = _curation(tmp_path / "outputs", n=8)
    args = ["--outputs", str(lay.root), "--scorer", str(tiny_clip)]
    code, out, err = run_cli(["taste", "collect", *args], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["embedded"] == 8
    for _tag, p in tags[1::2]:  # the user deletes every red image
        p.unlink()
    code, out, err = run_cli(["taste", "collect", *args], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["added"]["delete"] == 4 and json.loads(out)["embedded"] == 0
    code, out, err = run_cli(["taste", "train", *args, "--folds", "2"], capsys, monkeypatch)
    assert code == 0, err
    info = json.loads(out)
    assert info["rows"] == 8 and info["deleted"] == 4 and info["cv_accuracy"] is not None
    head_file = lay.root / "taste" / "head.json"
    scorer = get_scorer(f"taste@{head_file}")
    red, blue = Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    s_red, s_blue = scorer.score([red, blue], "anything")
    assert s_blue > s_red
    ens = get_scorer(f"{tiny_clip}+taste@{head_file}:2")
    assert isinstance(ens, EnsembleScorer) and ens.weights == [1.0, 2.0]
    assert len(ens.score([red, blue, red], "a red square")) == 3
    code, out, err = run_cli(["taste", "train", "--outputs", str(tmp_path / "empty")], capsys, monkeypatch)
    assert code == 2 and "kept AND deleted" in err


# ------------------------------------------------------------------------------------------ ensembles
@pytest.mark.parametrize(
    "spec, terms",
    [
        ("embedded", None),
        ("embedded+regions", None),
        ("embedded+spatial", None),
        ("open_clip:ViT-B-32:laion2b_s34b_b79k", None),
        ("clip+taste:0.5", [Term("clip", 1.0), Term("taste", 0.5)]),
        ("embedded+regions:2+taste:-0.5", [Term("embedded+regions", 2.0), Term("taste", -0.5)]),
        ("embedded+regions+taste@h.json:1e-1", [Term("embedded+regions", 1.0), Term("taste@h.json", 0.1)]),
        ("pickscore:1", [Term("pickscore", 1.0)]),
    ],
)
def test_ensemble_grammar(spec, terms):
    assert parse_ensemble(spec) == terms


def test_ensemble_grammar_errors():
    with pytest.raises(BestshotError, match="empty term"):
        parse_ensemble("clip++taste:1")
    with pytest.raises(BestshotError, match="non-zero"):
        parse_ensemble("clip:0+taste:0")


class _Const:
    def __init__(self, name, values, scale=None):
        self.name, self.values = name, values
        if scale is not None:
            self.scale = scale

    def truncate(self, text):
        return text, False

    def score(self, images, text):
        return list(self.values[: len(images)])


def test_ensemble_puts_each_term_on_its_saved_scale():
    a = _Const("a", [0.30, 0.31, 0.32], Scale(0.31, 0.01))  # a cosine: tiny spread
    b = _Const("b", [10.0, -10.0, 0.0], (0.0, 5.0))  # a logit: huge spread (a plain (mean, std) pair works too)
    ens = EnsembleScorer([a, b], [1.0, 0.5])
    ims = [Image.new("RGB", (4, 4))] * 3
    got = ens.score(ims, "t")
    assert np.allclose(got, [(0.30 - 0.31) / 0.01 + 0.5 * 10 / 5, 0 + 0.5 * -10 / 5, (0.32 - 0.31) / 0.01])
    # a weight is "standard deviations of that scorer": one std of a is worth as much as one std of b at weight 1
    even = EnsembleScorer([_Const("a", [0.32], Scale(0.31, 0.01)), _Const("b", [-5.0], Scale(0.0, 5.0))], [1.0, 1.0])
    assert np.allclose(even.score(ims[:1], "t"), [0.0])
    # one image scores what it scores in a set, whatever the text and the other images
    assert np.allclose(ens.score(ims[:1], "other text"), got[:1])
    assert ens.score([], "t") == []


def test_ensemble_missing_or_bad_scale_falls_back_to_the_default(caplog):
    assert scale_of(_Const("nameless", [1.0])) == DEFAULT_SCALE
    assert scale_of(_Const("zero", [1.0], Scale(0.0, 0.0))) == DEFAULT_SCALE
    assert scale_of(_Const("nan", [1.0], (float("nan"), 1.0))) == DEFAULT_SCALE
    assert scale_of(_Const("junk", [1.0], ("x", "y"))) == DEFAULT_SCALE
    assert scale_of(_Const("embedded", [1.0])) == MEASURED["embedded"]  # by name: the measured constants
    with caplog.at_level("WARNING"):
        ens = EnsembleScorer([_Const("raw", [3.0, 1.0]), _Const("b", [1.0, 1.0], Scale(1.0, 2.0))], [2.0, 1.0])
    assert "raw" in caplog.text and "raw score units" in caplog.text
    assert np.allclose(ens.score([Image.new("RGB", (4, 4))] * 2, "t"), [6.0, 2.0])  # raw units times the weight


def test_taste_head_saves_its_logit_scale_and_an_old_head_falls_back(tmp_path):
    _synthetic(tmp_path)
    head = train_head(dataset(tmp_path, "fake"), embedder="fake", folds=0)
    z = dataset(tmp_path, "fake").x @ head.w + head.b
    assert np.isclose(head.info["logit_mean"], z.mean(), atol=1e-5) and np.isclose(
        head.info["logit_std"], z.std(), atol=1e-5
    )
    back = TasteHead.load(head.save(tmp_path / "head.json"))
    sc = TasteScorer(back, embedder=None).scale
    assert sc.valid() and np.isclose(sc.std, head.info["logit_std"])
    old = json.loads((tmp_path / "head.json").read_text())
    del old["logit_mean"], old["logit_std"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    old_scorer = TasteScorer(TasteHead.load(tmp_path / "old.json"), embedder=None)
    assert old_scorer.scale is None and scale_of(old_scorer) == DEFAULT_SCALE


def test_ensemble_through_pipeline_scorer_reuses_the_pipelines_clip(tmp_path):
    from types import SimpleNamespace

    from bestshot.models.registry import EMBEDDED_DIR  # noqa: F401  (the embedded model ships with the package)
    from bestshot.scoring import pipeline_scorer, scorer_from_pipeline

    head = TasteHead("logistic", "embedded", np.zeros(1, np.float32))
    s = get_scorer("embedded")
    dim = s.embed_images([Image.new("RGB", (8, 8))]).shape[1]
    head.w = np.ones(dim, np.float32)
    path = head.save(tmp_path / "head.json")
    pipe = SimpleNamespace(clip=s.model, tokenizer=s.tokenizer)
    family = SimpleNamespace(name="embedded", default_scorer="embedded")
    ens = pipeline_scorer(f"clip+taste@{path}:0.5", pipe, family)
    assert isinstance(ens, EnsembleScorer)
    assert ens.scorers[0].model is s.model and ens.scorers[1].embedder.model is s.model
    assert isinstance(ens.scorers[1], TasteScorer) and scorer_from_pipeline(pipe) is not None


def test_balanced_head_weighs_both_verdicts_and_reports_the_majority_rate():
    """A curation that deletes most images: the plain head leans to "delete"; --balanced does not."""
    import numpy as np

    from bestshot.scoring.taste import Dataset, train_head

    rng = np.random.default_rng(0)
    n_keep, n_del = 10, 90
    x = np.concatenate([rng.normal(0.3, 1.0, (n_keep, 4)), rng.normal(-0.3, 1.0, (n_del, 4))]).astype(np.float32)
    y = np.concatenate([np.ones(n_keep), np.zeros(n_del)]).astype(np.float32)
    ds = Dataset(x, y, np.ones(len(y), np.float32), [f"p{i}" for i in range(len(y))])
    plain = train_head(ds, folds=0)
    bal = train_head(ds, folds=0, balanced=True)
    assert plain.info["majority_rate"] == bal.info["majority_rate"] == 0.9 and bal.info["balanced"]
    kept_plain = float(((x @ plain.w + plain.b) > 0).mean())
    kept_bal = float(((x @ bal.w + bal.b) > 0).mean())
    assert kept_plain < 0.1 < kept_bal  # the plain head says "keep" for almost nothing
