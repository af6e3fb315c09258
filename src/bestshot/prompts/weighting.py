"""A1111 prompt weighting, long prompts and clip skip for Stable Diffusion 1.x/2.x and SDXL pipelines.

:func:`prepared` is the draw's hook: for a prompt with A1111 syntax (:mod:`bestshot.prompts.attention`) or one
longer than the encoder's 75 tokens it yields ``prompt_embeds`` / ``negative_prompt_embeds`` (SDXL: both text
encoders, plus the pooled embeds) built A1111's way; any other prompt goes to the pipeline as text, unchanged,
so plain prompts give the images they always gave. Clip skip (A1111's: 1 = the last layer, 2 = the
penultimate) also goes through the built embeds (diffusers' own ``clip_skip`` counts the layers skipped, A1111's
value − 1, and its SD 1.x path reads ``text_model``, which transformers 5 removed); other pipelines get
diffusers' ``clip_skip`` where they take it.

The embeds are built here rather than through compel: A1111 multiplies each token's
vector by its weight and then restores the chunk's mean, where compel blends or masks down-weighted tokens;
compel has no ``BREAK``; it splits long prompts at sentences where A1111 cuts at the last comma of a chunk;
and it offers clip skip 1 or 2 only. Building A1111's embeds directly is a short loop over the pipeline's
own tokenizers and encoders, and gives what A1111 users' prompts were written for.

How a prompt is encoded (A1111's ``FrozenCLIPEmbedderWithCustomWords``): the weighted fragments are tokenized
without special tokens; tokens fill 75-token chunks; a chunk that is full within 20 tokens of its last comma
moves the words after that comma to the next chunk; ``BREAK`` starts a new chunk; each chunk is padded and
framed by BOS/EOS to 77 tokens and encoded alone; each vector is multiplied by its weight and the chunk's mean
restored; the chunks are concatenated. SDXL's pooled embeds are those of the first chunk. The shorter of the
prompt and the negative prompt is padded with chunks of the empty prompt.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import BestshotError
from .attention import BREAK, has_syntax, parse, plain

CHUNK = 75  # tokens per chunk, BOS and EOS excluded
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack


def _params(pipe: Any) -> set[str]:
    try:
        return set(inspect.signature(pipe.__call__).parameters)
    except (TypeError, ValueError):
        return set()


def _encoders(pipe: Any) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs of a pipeline whose embeds this module builds; [] for any other."""
    if getattr(pipe, "unet", None) is None or getattr(pipe, "text_encoder", None) is None:
        return []
    if "prompt_embeds" not in _params(pipe):
        return []
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        if "pooled_prompt_embeds" not in _params(pipe):
            return []
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def _convert(pipe: Any, text: str, tokenizer: Any) -> str:
    """A textual-inversion token expanded to its vectors' tokens (the pipeline's own ``maybe_convert_prompt``)."""
    fn = getattr(pipe, "maybe_convert_prompt", None)
    return fn(text, tokenizer) if fn is not None and text else text


def _too_long(pipe: Any, text: str) -> bool:
    tok = pipe.tokenizer
    return len(tok(_convert(pipe, text, tok), add_special_tokens=False).input_ids) > CHUNK


def needs_embeds(pipe: Any, prompt: str, negative: str) -> bool:
    """Whether the prompts need built embeds: A1111 syntax in either, or either over 75 tokens."""
    return any(has_syntax(t) for t in (prompt, negative)) or any(_too_long(pipe, t) for t in (prompt, negative) if t)


def chunks(pipe: Any, tokenizer: Any, text: str, literal: bool = False) -> list[tuple[list[int], list[float]]]:
    """``text`` as 77-token chunks: (token ids with BOS/EOS/padding, weight of each); ``literal``: the syntax
    is not read (brackets are words, every weight 1)."""
    comma = tokenizer(",", add_special_tokens=False).input_ids[-1]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    done: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    ws: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, ws, last_comma
        fill = CHUNK - len(ids)  # BOS, tokens, EOS, padding: the pipeline's own layout for a short prompt
        done.append(([bos, *ids, eos, *[pad] * fill], [1.0, *ws, *[1.0] * (fill + 1)]))
        ids, ws, last_comma = [], [], -1

    for text_, weight in [(text, 1.0)] if literal else parse(text):
        if weight == -1.0 and text_ == BREAK:
            close()
            continue
        for t in tokenizer(_convert(pipe, text_, tokenizer), add_special_tokens=False).input_ids:
            if t == comma:
                last_comma = len(ids)
            elif len(ids) == CHUNK and last_comma != -1 and len(ids) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                moved, moved_w = ids[cut:], ws[cut:]
                ids, ws = ids[:cut], ws[:cut]
                close()
                ids, ws = moved, moved_w
            if len(ids) == CHUNK:
                close()
            ids.append(t)
            ws.append(weight)
    if ids or not done:
        close()
    return done


def _encode(encoder: Any, ids: list[int], weights: list[float], clip_skip: int, sdxl: bool):
    """One chunk through one text encoder: (weighted hidden states (1, 77, d), pooled or None)."""
    x = torch.tensor([ids], device=encoder.device)
    if sdxl:  # diffusers' SDXL: the penultimate layer (clip skip 1), not normalised; pooled from the projection
        out = encoder(x, output_hidden_states=True)
        z, pooled = out.hidden_states[-(clip_skip + 1)], out[0]
    elif clip_skip == 1:
        z, pooled = encoder(x)[0], None
    else:  # A1111's clip skip N: layer -N, through the final layer norm (diffusers' clip_skip = N - 1)
        out = encoder(x, output_hidden_states=True)
        inner = getattr(encoder, "text_model", encoder)  # transformers 5 dropped the text_model wrapper
        z, pooled = inner.final_layer_norm(out.hidden_states[-clip_skip]), None
    if any(w != 1.0 for w in weights):
        mean = z.mean()
        z = z * torch.tensor(weights, device=z.device, dtype=z.dtype)[None, :, None]
        new = z.mean()
        if new != 0:
            z = z * (mean / new)
        if not torch.isfinite(z).all():
            raise BestshotError("a prompt weight is too large to encode — keep (word:WEIGHT) within about ±100")
    return z, pooled


def encode(pipe: Any, text: str, clip_skip: int = 1, literal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``text`` as prompt embeds (1, 77·chunks, d) and, for SDXL, the pooled embeds (1, d2)."""
    pairs = _encoders(pipe)
    sdxl = len(pairs) == 2
    per_encoder, pooled = [], None
    with torch.no_grad():
        for tokenizer, encoder in pairs:
            zs = []
            for k, (ids, ws) in enumerate(chunks(pipe, tokenizer, text, literal)):
                z, p = _encode(encoder, ids, ws, clip_skip, sdxl)
                zs.append(z)
                if k == 0 and p is not None:
                    pooled = p
            per_encoder.append(zs)
    n = max(len(zs) for zs in per_encoder)
    if any(len(zs) != n for zs in per_encoder):  # the two tokenizers cut differently: pad to the longer
        raise RuntimeError("the two text encoders' tokenizers split the prompt differently")
    z = torch.cat([torch.cat(parts, dim=-1) for parts in zip(*per_encoder)], dim=1)
    return z, pooled


def _pad(z: torch.Tensor, empty: torch.Tensor, length: int) -> torch.Tensor:
    if z.shape[1] >= length:
        return z
    return torch.cat([z, empty.repeat(1, (length - z.shape[1]) // empty.shape[1], 1)], dim=1)


def embeds(pipe: Any, prompt: str, negative: str, clip_skip: int = 1, literal: bool = False) -> dict[str, Any]:
    """The pipeline keyword arguments that replace ``prompt`` / ``negative_prompt`` with built embeds."""
    sdxl = len(_encoders(pipe)) == 2
    pos, pooled = encode(pipe, prompt, clip_skip, literal)
    zero_negative = sdxl and not negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False)
    if zero_negative:  # what the SDXL pipeline itself does for an empty negative prompt
        neg, neg_pooled = torch.zeros_like(pos), torch.zeros_like(pooled)
    else:
        neg, neg_pooled = encode(pipe, negative or "", clip_skip, literal)
        length = max(pos.shape[1], neg.shape[1])
        empty, _ = encode(pipe, "", clip_skip)
        pos, neg = _pad(pos, empty, length), _pad(neg, empty, length)
    out: dict[str, Any] = dict(prompt=None, negative_prompt=None, prompt_embeds=pos, negative_prompt_embeds=neg)
    if sdxl:
        out.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=neg_pooled)
    return out


@contextmanager
def prepared(pipe: Any, cfg: Any, prompt: str, negative: str, seeds: Sequence[int]) -> Iterator[dict[str, Any]]:
    """Pipeline keyword arguments for ``prompt`` / ``negative`` under ``cfg.prompt_weighting`` and
    ``cfg.clip_skip``; changes nothing on ``pipe``. Plain prompts within 75 tokens: nothing but clip skip."""
    weighting = getattr(cfg, "prompt_weighting", True)
    clip_skip = int(getattr(cfg, "clip_skip", 1) or 1)
    prompt, negative = prompt or "", negative or ""
    built = _encoders(pipe)
    if built and (clip_skip > 1 or (weighting and needs_embeds(pipe, prompt, negative))):
        # clip skip too: diffusers' SD 1.x clip_skip reads text_model, which transformers 5 removed
        yield embeds(pipe, prompt, negative, clip_skip, literal=not weighting)
        return
    if weighting and any(has_syntax(t) for t in (prompt, negative)):
        warnings.warn(
            f"the {type(pipe).__name__} pipeline takes no prompt embeds: A1111 weights are dropped and the prompt "
            "is read as plain words",
            stacklevel=3,
        )
        prompt, negative = plain(prompt), plain(negative)
        out: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative or None}
    else:
        out = {}
    if clip_skip > 1:
        if "clip_skip" in _params(pipe):
            out["clip_skip"] = clip_skip - 1
        else:
            warnings.warn(f"the {type(pipe).__name__} pipeline has no clip skip: clip_skip {clip_skip} ignored")
    yield out
