"""The command line's structure: settings flags made from dataclass field metadata, sub-commands imported
only when used, ``bestshot --help`` listing them all, cli.py kept short."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from bestshot.config import ImgCfg
from bestshot.config_flags import field_options, flag_fields, option

SRC = Path(__file__).resolve().parents[1] / "src" / "bestshot"


@dataclass
class Small:
    count: int = field(default=2, metadata={"help": "How many.", "flag": "--count", "short": "-c", "min": 1, "max": 9})
    ratio: float | None = field(default=None, metadata={"help": "A ratio.", "flag": "--ratio", "aliases": ("--old",)})
    name: str = field(default="x", metadata={"help": "A name.", "flag": "--name", "choices": ("x", "y")})
    loud: bool = field(default=False, metadata={"help": "Shout.", "flag": "--loud"})
    kept: bool = field(default=False, metadata={"help": "Keep all.", "flag": "--keep-all/--keep-best"})
    tags: tuple[str, ...] = field(default=(), metadata={"help": "A tag.", "flag": "--tag", "repeatable": True})
    hidden: int = 3  # no metadata: no flag


def _small_app(seen: dict[str, Any]) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @field_options(Small)
    def cmd(word: str = typer.Argument(...), extra: int = typer.Option(0, "--extra"), **settings: Any) -> None:
        seen.update(settings, word=word, extra=extra)

    @app.command()
    def other() -> None:  # a second command: typer then keeps sub-command names
        pass

    return app


def test_a_field_with_metadata_becomes_a_flag():
    seen: dict[str, Any] = {}
    app = _small_app(seen)
    argv = ["cmd", "w", "-c", "3", "--old", "0.5", "--name", "y", "--loud", "--keep-best", "--tag", "a", "--tag", "b"]
    res = CliRunner().invoke(app, [*argv, "--extra", "1"])
    assert res.exit_code == 0, res.output
    assert seen == dict(word="w", extra=1, count=3, ratio=0.5, name="y", loud=True, kept=False, tags=("a", "b"))

    seen.clear()
    assert CliRunner().invoke(app, ["cmd", "w"]).exit_code == 0
    # nothing given: every setting None (the command's own defaults decide), the field without metadata absent
    assert seen == dict(word="w", extra=0, count=None, ratio=None, name=None, loud=None, kept=None, tags=None)

    help_text = CliRunner().invoke(app, ["cmd", "--help"], env={"COLUMNS": "200"}).output
    for text in ("--count", "-c", "How many.", "--ratio", "--old", "--no-loud", "--keep-all", "--keep-best", "--tag"):
        assert text in help_text
    assert "--hidden" not in help_text


@pytest.mark.parametrize(
    "argv, wrong",
    [(["-c", "0"], "--count"), (["-c", "10"], "--count"), (["--name", "z"], "--name"), (["--ratio", "x"], "--ratio")],
)
def test_ranges_choices_and_types_from_the_metadata_are_enforced(argv, wrong):
    seen: dict[str, Any] = {}
    res = CliRunner().invoke(_small_app(seen), ["cmd", "w", *argv])
    assert res.exit_code == 2 and wrong in res.output and not seen


def test_bad_metadata_is_named():
    @dataclass
    class Bad:
        a: int = field(default=1, metadata={"help": "A.", "flag": "--a", "maximum": 3})
        b: dict = field(default_factory=dict, metadata={"help": "B.", "flag": "--b"})
        c: int = field(default=1, metadata={"help": "C."})

    with pytest.raises(TypeError, match="unknown flag metadata.*maximum"):
        option(Bad, "a")
    with pytest.raises(TypeError, match="Bad.b: no command-line type"):
        option(Bad, "b")
    with pytest.raises(TypeError, match="needs a 'flag'"):
        option(Bad, "c")


def test_a_new_imgcfg_field_with_metadata_is_a_generate_flag_with_no_other_edit():
    meta = {"help": "How much of the init image to keep.", "flag": "--strength", "min": 0.0, "max": 1.0}
    Ext = dataclasses.make_dataclass("Ext", [("strength", float, field(default=0.75, metadata=meta))], bases=(ImgCfg,))
    seen: dict[str, Any] = {}
    app = typer.Typer()

    @app.command()
    @field_options(Ext)
    def gen(**settings: Any) -> None:
        seen.update(settings)

    res = CliRunner().invoke(app, ["--strength", "0.5", "-n", "2", "--clip-min", "0.3"])
    assert res.exit_code == 0, res.output
    assert (seen["strength"], seen["n_images"], seen["score_min"]) == (0.5, 2, 0.3)
    assert CliRunner().invoke(app, ["--strength", "1.5"]).exit_code == 2


def test_every_imgcfg_flag_field_is_an_option_of_generate_and_no_flag_is_taken_twice():
    from bestshot import cli

    cmd = typer.main.get_group(cli.app).commands["generate"]
    opts = [o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")]
    assert len(opts) == len(set(opts)), sorted(o for o in opts if opts.count(o) > 1)
    by_name = {p.name: p for p in cmd.params}
    for f in flag_fields(ImgCfg):
        assert f.metadata["flag"].split("/")[0] in by_name[f.name].opts, f.name
    # today's names and aliases, kept
    for flag in ("-n", "-s", "-g", "-p", "-m", "--clip-min", "--score-min", "--best-only", "--no-refiner", "--log"):
        assert flag in opts


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(out.stdout.split())


HEAVY = {"bestshot.train", "bestshot.server", "bestshot.evaluate", "bestshot.curate", "fastapi", "ray", "torch"}


@pytest.mark.parametrize("argv0", ["-c", "bestshot"])  # as a library, and as the `bestshot generate` command
def test_importing_the_cli_imports_no_job(argv0):
    loaded = _modules_after(f"sys.argv[:] = [{argv0!r}, 'generate']; import bestshot.cli")
    assert "bestshot.cli" in loaded and not loaded & HEAVY, sorted(loaded & HEAVY)


def test_a_sub_command_is_imported_when_it_runs_and_only_it():
    code = (
        "from typer.testing import CliRunner; from bestshot.cli import app; "
        "r = CliRunner().invoke(app, ['presets']); assert r.exit_code == 0, r.output; "
        "assert 'bestshot.server' not in sys.modules; "
        "r = CliRunner().invoke(app, ['serve', '--help']); assert r.exit_code == 0, r.output"
    )
    loaded = _modules_after(code)
    assert "bestshot.server.cli" in loaded and not loaded & {"bestshot.train", "bestshot.evaluate"}


def test_help_lists_every_sub_command():
    from bestshot import cli

    res = CliRunner().invoke(cli.app, ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    names = ["generate", "presets", "png-info", *cli.Commands.lazy]
    assert len(names) == 13
    listed = [ln.split()[1] for ln in res.output.splitlines() if ln.startswith("│ ") and len(ln.split()) > 2]
    assert [n for n in listed if n in names] == names
    # and the groups list theirs, the captioner's trainer among train's
    for group, sub in (("train", "captioner"), ("eval", "metrics"), ("taste", "collect")):
        res = CliRunner().invoke(cli.app, [group, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0 and f"│ {sub} " in res.output, res.output


def test_a_lazy_sub_command_refuses_non_finite_numbers():
    from bestshot import cli

    res = CliRunner().invoke(cli.app, ["eval", "generate", "m.csv", "--out", "x", "--guidance", "nan"])
    assert res.exit_code == 1 and "--guidance must be a finite number" in str(res.exception)


def test_cli_module_stays_short():
    lines = (SRC / "cli.py").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
