"""LoRA discovery, seeded pick, adapter switching and skipping, with a tiny LoRA made here with peft."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from bestshot.curate.config import load_config
from bestshot.curate.lora import Lora, LoraSwitcher, discover, pick
from bestshot.curate.workflow import Workflow
from bestshot.models.loader import CACHE, load_pipeline
from test_curate_workflow import write_config

peft = pytest.importorskip("peft")


@pytest.fixture
def clean_cache():
    CACHE.clear()  # adapters are loaded into cached pipelines: keep them out of other tests
    yield
    CACHE.clear()


def make_lora(model: str, folder: Path, name: str, seed: int) -> Path:
    """A rank-4 LoRA on the tiny UNet's attention projections, with non-zero B so it changes images."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 1.0)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, weight_name=f"{name}.safetensors")
    return folder / f"{name}.safetensors"


@pytest.fixture(scope="module")
def loras(tiny_sd15, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    hero = make_lora(tiny_sd15, root / "character", "hero", 0)
    (root / "character" / "hero.txt").write_text("hero_token, red cape\n")
    ink = make_lora(tiny_sd15, root / "style", "ink", 1)
    ink.rename(ink.with_suffix(".safetensor"))  # the document's other spelling
    (root / "style" / "ink.txt").write_text("inkstyle")
    # wrong shapes: the same keys with a doubled rank dimension → does not fit
    bad = {k: torch.zeros(v.shape[0] * 2, *v.shape[1:]) for k, v in load_file(hero).items()}
    (root / "bad").mkdir()
    save_file(bad, root / "bad" / "wide.safetensors")
    save_file({"foo.bar.weight": torch.zeros(2, 2)}, root / "bad" / "alien.safetensors")  # no key matches
    return root


def test_discovery_triggers_and_seeded_pick(loras):
    found = discover(loras)
    assert [lo.name for lo in found["character"]] == ["hero"] and [lo.name for lo in found["style"]] == ["ink"]
    assert found["character"][0].trigger_words == ("hero_token", "red cape")
    assert found["style"][0].path.suffix == ".safetensor"
    many = {k: found[k] * 1 for k in found}
    many["style"] = [found["style"][0]] + [Lora("style", f"s{i}", Path(f"s{i}.safetensors"), ()) for i in range(5)]
    assert all(pick(many, s) == pick(many, s) for s in range(20))
    assert len({pick(many, s)[1].name for s in range(40)}) > 1
    assert pick({"character": [], "style": []}, 1) == []


def _img(pipe, seed=3):
    out = pipe(
        "a cat",
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images[0]
    return np.asarray(out)


def test_adapters_load_once_switch_and_mismatch_is_skipped(loras, tiny_sd15, clean_cache):
    pipe = load_pipeline(tiny_sd15, memory="gpu")
    plain = _img(pipe)
    found = discover(loras)
    hero, ink = found["character"][0], found["style"][0]
    bad = [Lora("style", p.stem, p, ()) for p in sorted((loras / "bad").iterdir())]
    sw = LoraSwitcher({"character": 1.0, "style": 0.85})
    for b in bad:
        with pytest.warns(UserWarning, match=rf"skipping style LoRA {b.path.name}: it does not fit this model"):
            assert sw.activate(pipe, [b]) == []
    applied = sw.activate(pipe, [hero])
    assert [a["name"] for a in applied] == ["hero"] and applied[0]["strength"] == 1.0
    with_hero = _img(pipe)
    assert not np.allclose(with_hero, plain)
    calls = []
    real_load = pipe.load_lora_weights
    pipe.load_lora_weights = lambda *a, **k: (calls.append(a), real_load(*a, **k))[1]
    applied = sw.activate(pipe, [hero, ink, *bad])  # bad ones are not retried, hero not reloaded
    assert [(a["name"], a["strength"]) for a in applied] == [("hero", 1.0), ("ink", 0.85)]
    assert len(calls) == 1 and sorted(pipe.get_active_adapters()) == ["character_hero", "style_ink"]
    assert not np.allclose(_img(pipe), with_hero)
    sw.activate(pipe, [hero])
    np.testing.assert_allclose(_img(pipe), with_hero, atol=1e-5)  # switching back is exact
    sw.activate(pipe, [])
    np.testing.assert_allclose(_img(pipe), plain, atol=1e-5)  # no LoRA picked: adapters off
    del pipe.load_lora_weights


def test_workflow_records_loras_and_prepends_triggers(loras, tiny_sd15, tmp_path, clean_cache):
    cfg_path = write_config(tmp_path, tiny_sd15)
    data = yaml.safe_load(cfg_path.read_text())
    data["lora"]["dir"] = str(loras)
    data["generation"]["stage3"]["enabled"] = False
    cfg_path.write_text(yaml.safe_dump(data))
    wf = Workflow(load_config(cfg_path), say=lambda m: None)
    wf.prompt_files.ensure()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tag = wf.run("run", count=1)[0]
    assert not [w for w in caught if "skipping" in str(w.message)]  # both LoRAs fit
    meta = wf.layout.read_metadata(tag)
    assert [(lo["kind"], lo["name"], lo["strength"]) for lo in meta["loras"]] == [
        ("character", "hero", 1.0),
        ("style", "ink", 0.85),
    ]
    assert meta["prompt"].startswith("hero_token, red cape, inkstyle, ")
    assert meta["loras_skipped"] == [] and wf.layout.finals(tag)
