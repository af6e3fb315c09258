"""Curation workflow without models: config loading/validation, prompt sampling, tags and layout."""

import json
import threading

import pytest
import yaml

from bestshot.curate.config import SDXL_BUCKETS, CurateCfg, default_config_text, ensure_config, from_dict, load_config
from bestshot.curate.layout import Layout
from bestshot.curate.prompts import PromptFiles, assemble, sample_options
from bestshot.errors import BestshotError


def test_shipped_default_yaml_matches_the_dataclass_defaults():
    from_yaml = from_dict(yaml.safe_load(default_config_text()))
    assert from_yaml.to_dict() == CurateCfg().to_dict()
    g = from_yaml.generation
    assert (g.base_width, g.base_height) == (768, 1344) and (768, 1344) in SDXL_BUCKETS.values()
    assert (g.stage2.scale, g.stage2.strength, g.stage3.scale, g.stage3.strength) == (2, 0.25, 4, 0.4)
    assert (g.stage3.tile_size, g.stage3.tile_overlap, g.stage3.blend_mode) == (2048, 256, "cosine")
    assert from_yaml.memory.strategy == "model_offload" and from_yaml.performance.compile_unet is False


def test_aspect_picks_the_sdxl_bucket():
    cfg = from_dict({"generation": {"aspect": "16:9"}})
    assert cfg.base_size == (1344, 768)
    assert from_dict({"generation": {"base_width": 832, "base_height": 1216}}).base_size == (832, 1216)


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"generation": {"stage3": {"blend_mode": "gauss"}}}, "generation.stage3.blend_mode"),
        ({"generation": {"stage3": {"tile_overlap": 2048}}}, "generation.stage3.tile_overlap"),
        ({"generation": {"stage3": {"tile_size": 100}}}, "generation.stage3.tile_size"),
        ({"generation": {"stage2": {"strength": 1.5}}}, "generation.stage2.strength"),
        ({"generation": {"stage2": {"scale": "2x"}}}, "generation.stage2.scale"),
        ({"generation": {"base_width": 770}}, "generation.base_width"),
        ({"generation": {"aspect": "4:3"}}, "generation.aspect"),
        ({"memory": {"strategy": "cloud"}}, "memory.strategy"),
        ({"performance": {"dtype": "int8"}}, "performance.dtype"),
        ({"performance": {"compile_unet": "yes"}}, "performance.compile_unet"),
        ({"model": {"scheduler": "nope"}}, "model.scheduler"),
        ({"generation": {"stage3": {"tile_sise": 512}}}, "generation.stage3.tile_sise"),
        ({"modle": {}}, "modle"),
        ({"generation": {"stage2": {"scale": 4}, "stage3": {"scale": 2}}}, "generation.stage3.scale"),
    ],
)
def test_bad_settings_name_the_key(data, needle):
    with pytest.raises(BestshotError) as e:
        from_dict(data)
    assert needle in str(e.value)


def test_bad_choice_lists_allowed_values():
    with pytest.raises(BestshotError, match="cosine, linear"):
        from_dict({"generation": {"stage3": {"blend_mode": "gauss"}}})
    with pytest.raises(BestshotError, match="gpu, model_offload, sequential_offload"):
        from_dict({"memory": {"strategy": "x"}})


def test_load_config_errors_and_relative_paths(tmp_path):
    with pytest.raises(BestshotError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(BestshotError, match="not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("generation:\n  stage3:\n    blend_mode: box\n")
    with pytest.raises(BestshotError, match=r"wrong\.yaml.*generation\.stage3\.blend_mode"):
        load_config(wrong)
    ok = tmp_path / "sub" / "config.yaml"
    ok.parent.mkdir()
    ok.write_text("paths:\n  outputs: out\n")
    cfg = load_config(ok)
    assert cfg.path(cfg.paths.outputs) == ok.parent.resolve() / "out"


def test_ensure_config_writes_the_default_once(tmp_path):
    p = tmp_path / "config.yaml"
    cfg, written = ensure_config(p)
    assert written and p.read_text() == default_config_text() and cfg.to_dict() == CurateCfg().to_dict()
    p.write_text("generation:\n  aspect: '1:1'\n")
    cfg, written = ensure_config(p)
    assert not written and cfg.base_size == (1024, 1024)


def test_prompt_options_sampling_is_seeded():
    opts = [f"phrase {i}" for i in range(12)]
    for seed in range(50):
        a, b = sample_options(opts, seed), sample_options(opts, seed)
        assert a == b and len(a) <= 5 and len(set(a)) == len(a)
        assert a == [o for o in opts if o in a]  # file order
    counts = {len(sample_options(opts, s)) for s in range(300)}
    assert counts == {0, 1, 2, 3, 4, 5}
    assert len({tuple(sample_options(opts, s)) for s in range(50)}) > 10
    assert sample_options(opts, 3, max_n=0) == []
    assert len(sample_options(opts[:2], 1)) <= 2


def test_prompt_files_defaults_and_assembly(tmp_path):
    pf = PromptFiles(tmp_path / "p.txt", tmp_path / "n.txt", tmp_path / "o.txt")
    assert len(pf.ensure()) == 3 and pf.ensure() == []
    (tmp_path / "p.txt").write_text("# comment\na castle\non a hill\n")
    (tmp_path / "o.txt").write_text("# c\nfog, mist\n\nsunset\n")
    manual, neg, opts = pf.read()
    assert manual == "a castle on a hill" and opts == ["fog, mist", "sunset"] and neg
    built = assemble(manual, ["sunset"], neg, ["chr_token", "style tok"])
    assert built.sd_prompt == "chr_token, style tok, a castle on a hill, sunset" and built.negative_prompt == neg
    (tmp_path / "p.txt").write_text("# only a comment\n")
    with pytest.raises(BestshotError, match="empty"):
        pf.read()


def test_tags_unique_within_one_second(tmp_path):
    lay = Layout(tmp_path / "outputs").make()
    now = 1_790_000_000.0
    tags = [lay.claim_tag({"seed": i}, now=now) for i in range(3)]
    assert tags[1] == tags[0] + "_1" and tags[2] == tags[0] + "_2"
    assert [lay.read_metadata(t)["seed"] for t in tags] == [0, 1, 2]
    assert all(lay.read_metadata(t)["tag"] == t for t in tags)
    # several threads racing for the same second still get distinct tags, each with its own record
    out: list[str] = []
    threads = [
        threading.Thread(target=lambda i=i: out.append(lay.claim_tag({"seed": 100 + i}, now=now + 1))) for i in range(8)
    ]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(out)) == 8
    assert sorted(lay.read_metadata(t)["seed"] for t in out) == list(range(100, 108))
    assert not list((tmp_path / "outputs").rglob("*.tmp"))


def test_survivors_need_image_and_metadata(tmp_path):
    lay = Layout(tmp_path / "outputs").make()
    a = lay.claim_tag({}, now=1_790_000_000.0)
    b = lay.claim_tag({}, now=1_790_000_000.0)
    c = lay.claim_tag({}, now=1_790_000_005.0)
    for t in (a, b):
        lay.stage1(t, 8, 8).write_bytes(b"x")
    lay.stage1("20990101_000000", 8, 8).write_bytes(b"x")  # no metadata: not a survivor
    (lay.root / "stage1" / "notes.png").write_bytes(b"x")
    assert [t for t, _ in lay.survivors()] == [a, b]
    lay.final(a, 32, 32).write_bytes(b"x")
    assert lay.finals(a) and not lay.finals(b) and not lay.finals(c)
    assert json.loads(lay.metadata(c).read_text())["tag"] == c
