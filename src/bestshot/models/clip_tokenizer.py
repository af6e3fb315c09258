"""The real CLIP BPE tokenizer, built offline from open_clip's bundled vocabulary.

No hub access here, so ``CLIPTokenizer.from_pretrained("openai/clip-vit-base-patch32")`` is not an option.
open_clip ships the original ``bpe_simple_vocab_16e6.txt.gz``; we rebuild exactly the vocabulary of its
``SimpleTokenizer`` (which is the one OpenAI's CLIP uses) and hand it to transformers' ``CLIPTokenizer``.
open_clip itself is not imported: it needs torchvision, which does not import beside our torch.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from transformers import CLIPTokenizer

from bestshot.errors import BestshotError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bpe_vocab_path() -> Path:
    """Path of open_clip's bundled BPE merges file (without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise BestshotError(
            "open_clip is not installed — run `pip install --no-deps open_clip_torch` "
            "(only its vocabulary file is used)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise BestshotError(
            f"CLIP vocabulary not found at {path} — reinstall open_clip_torch with "
            "`pip install --no-deps --force-reinstall open_clip_torch`"
        )
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte → printable unicode map (same order as open_clip's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """(token → id, merges) exactly as open_clip's SimpleTokenizer builds them (49,408 tokens)."""
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(p) for p in pairs]
    vocab += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_tokenizer_files(directory: str | os.PathLike) -> Path:
    """Write vocab.json and merges.txt (the CLIPTokenizer file format) into ``directory``.

    The vocabulary comes from open_clip's file; without open_clip, from a ``tokenizer.json`` already in
    ``directory`` (what a saved tokenizer holds), so an export works on a machine with transformers alone."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        vocab, merges = clip_vocab_and_merges()
    except BestshotError:
        if not (directory / "tokenizer.json").is_file():
            raise
        model = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))["model"]
        vocab = model["vocab"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory


def build_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A transformers ``CLIPTokenizer`` with the real CLIP vocabulary; pad token = EOS like openai/clip."""
    with tempfile.TemporaryDirectory(prefix="bestshot-clip-tok-") as tmp:
        write_tokenizer_files(tmp)
        tok = CLIPTokenizer.from_pretrained(
            tmp, model_max_length=model_max_length, bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
        )
    return tok
