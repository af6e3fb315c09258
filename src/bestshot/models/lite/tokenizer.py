"""transformers' fast ``CLIPTokenizer`` on the ``tokenizers`` library alone (the folder's ``tokenizer.json``).

Covers the calls bestshot makes: a string or a list of them, ``padding`` (False / "max_length" / True),
``truncation``, ``max_length``, ``add_special_tokens``, ``return_tensors="pt"``; ``decode``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


class Encoding(dict):
    """``input_ids`` / ``attention_mask`` as keys and attributes (transformers' ``BatchEncoding``)."""

    __getattr__ = dict.__getitem__

    def to(self, device: Any) -> Encoding:
        return Encoding({k: v.to(device) if torch.is_tensor(v) else v for k, v in self.items()})


class LiteTokenizer:
    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.model_max_length = int(cfg.get("model_max_length", 77))
        self.pad_token = cfg.get("pad_token", "<|endoftext|>")
        self.pad_token_id = self._tok.token_to_id(self.pad_token)
        self.bos_token_id = self._tok.token_to_id(cfg.get("bos_token", "<|startoftext|>"))
        self.eos_token_id = self._tok.token_to_id(cfg.get("eos_token", "<|endoftext|>"))

    def __call__(
        self,
        text: str | list[str],
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        return_tensors: str | None = None,
    ) -> Encoding:
        texts = [text] if isinstance(text, str) else list(text)
        self._tok.no_padding()
        if truncation:
            self._tok.enable_truncation(max_length or self.model_max_length)
        else:
            self._tok.no_truncation()
        ids = [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)]
        width = {"max_length": max_length or self.model_max_length, True: max(map(len, ids), default=0)}.get(padding)
        masks = [[1] * len(r) for r in ids]
        if width:
            masks = [m + [0] * (width - len(r)) for r, m in zip(ids, masks)]
            ids = [r + [self.pad_token_id] * (width - len(r)) for r in ids]
        if return_tensors == "pt":
            return Encoding(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(masks))
        if isinstance(text, str):
            return Encoding(input_ids=ids[0], attention_mask=masks[0])
        return Encoding(input_ids=ids, attention_mask=masks)

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
        text = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        return text.replace(self._tok.model.end_of_word_suffix or "</w>", " ").strip()  # as transformers' CLIPTokenizer
