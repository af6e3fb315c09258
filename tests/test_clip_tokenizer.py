"""The offline CLIP tokenizer reproduces the real CLIP vocabulary (open_clip's SimpleTokenizer)."""

import gzip

import pytest
from transformers import CLIPTokenizer

from bestshot.models.clip_tokenizer import bpe_vocab_path, build_clip_tokenizer, clip_vocab_and_merges


def test_vocab_size_and_special_ids():
    tok = build_clip_tokenizer()
    assert len(tok) == 49408
    assert tok.convert_tokens_to_ids("<|startoftext|>") == 49406 == tok.bos_token_id
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 49407 == tok.eos_token_id == tok.pad_token_id
    assert tok.model_max_length == 77


def test_known_openai_ids():
    # ids of openai/clip-vit-base-patch32 for this sentence (widely published example)
    tok = build_clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_vocab_order_matches_simple_tokenizer_recipe():
    vocab, merges = clip_vocab_and_merges()
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    assert merges[0] == lines[1] and len(merges) == 49152 - 256 - 2
    assert vocab["!"] == 0 and vocab["!</w>"] == 256  # bytes_to_unicode order, then the </w> copies
    assert vocab["".join(merges[0].split())] == 512  # first merge follows the 512 byte tokens


def test_padding_truncation_and_round_trip(tmp_path):
    tok = build_clip_tokenizer(model_max_length=16)
    ids = tok(["a red circle above a blue square"], padding="max_length", max_length=16, truncation=True).input_ids[0]
    assert len(ids) == 16 and ids[0] == 49406 and ids[-1] == 49407
    long = tok("red " * 40, truncation=True).input_ids
    assert len(long) == 16 and long[-1] == 49407
    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again("a blue square below a red circle").input_ids == tok("a blue square below a red circle").input_ids
    assert again.model_max_length == 16 and again.pad_token_id == 49407


def test_write_tokenizer_files_without_open_clip_reads_a_saved_tokenizer(tmp_path, monkeypatch):
    import json

    from bestshot.errors import BestshotError
    from bestshot.models import clip_tokenizer as ct

    vocab, merges = clip_vocab_and_merges()
    build_clip_tokenizer().save_pretrained(tmp_path)
    for f in ("vocab.json", "merges.txt"):
        (tmp_path / f).unlink(missing_ok=True)

    def no_open_clip():
        raise BestshotError("open_clip is not installed")

    monkeypatch.setattr(ct, "clip_vocab_and_merges", no_open_clip)
    ct.write_tokenizer_files(tmp_path)  # from tokenizer.json: the same files open_clip's vocabulary gives
    assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8")) == vocab
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()[1:] == merges
    with pytest.raises(BestshotError, match="open_clip"):  # and nothing to read from: the clear error stays
        ct.write_tokenizer_files(tmp_path / "empty")
