"""The three prompt files of the document, and the seeded choice of extra phrases per image.

``manual_prompt.txt`` (always included), ``manual_negative_prompt.txt`` and ``prompt_options.txt``
(one phrase per line, ``#`` comments; 0–5 of them sampled per image). The final prompt is assembled by
:func:`bestshot.prompts.build.build_prompt` (LoRA trigger words first), like every other job.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import BestshotError
from ..prompts.build import BuiltPrompt, build_prompt
from ..store import atomic_write_text

DEFAULTS = {
    "manual_prompt": "a lighthouse on a rocky coast at dusk, dramatic sky, highly detailed\n",
    "manual_negative_prompt": "blurry, low quality, watermark, text, deformed\n",
    "prompt_options": (
        "# one phrase per line; 0-5 of them are added to each image's prompt\n"
        "golden hour\nsoft rim light\nwide angle\nfilm grain\nvolumetric fog\n"
        "shallow depth of field\nmoody colours\n"
    ),
}


@dataclass(frozen=True)
class PromptFiles:
    prompt: Path
    negative: Path
    options: Path

    def ensure(self) -> list[Path]:
        """Write the default file for each one that is missing; returns those written."""
        written = []
        for key, path in (
            ("manual_prompt", self.prompt),
            ("manual_negative_prompt", self.negative),
            ("prompt_options", self.options),
        ):
            if not path.exists():
                atomic_write_text(path, DEFAULTS[key])
                written.append(path)
        return written

    def read(self) -> tuple[str, str, list[str]]:
        return (
            _join(_read(self.prompt, required=True)),
            _join(_read(self.negative)),
            parse_options(_read(self.options)),
        )


def _read(path: Path, required: bool = False) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if required:
            raise BestshotError(f"{path} does not exist — write the base prompt into it") from None
        return ""
    except (OSError, UnicodeDecodeError) as e:
        raise BestshotError(f"cannot read {path}: {e} — it must be a UTF-8 text file") from None
    if required and not _join(text):
        raise BestshotError(f"{path} is empty — write the base prompt into it")
    return text


def _join(text: str) -> str:
    """A prompt file may span several lines; ``#`` lines are comments."""
    return " ".join(parse_options(text))


def parse_options(text: str) -> list[str]:
    """Phrases of ``prompt_options.txt``: one per line (commas inside a line are kept together)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def sample_options(options: list[str], seed: int, max_n: int = 5) -> list[str]:
    """0..max_n distinct phrases, in file order, chosen by ``seed`` alone (same seed, same phrases)."""
    rng = random.Random(f"prompt_options:{seed}")
    k = rng.randint(0, min(max_n, len(options)))
    picked = sorted(rng.sample(range(len(options)), k))
    return [options[i] for i in picked]


def assemble(manual: str, options: list[str], negative: str, trigger_words: list[str]) -> BuiltPrompt:
    """Trigger words + manual prompt + options → the pipeline prompt (via the shared builder)."""
    return build_prompt(", ".join([manual, *options]), negative_prompt=negative, trigger_words=trigger_words)
