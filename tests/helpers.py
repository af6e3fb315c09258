"""Shared test helpers (plain functions; fixtures live in conftest.py)."""

import sys

from bestshot.cli import main

# captions for the evaluation tests' small manifests
CAPTIONS = ["a red square on a white background", "a blue circle on a gray background",
            "a green triangle above a yellow star", "a small purple cross on a black background",
            "two orange circles next to each other"]


def run_cli(argv, capsys, monkeypatch):
    """Run ``bestshot ARGV`` in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["bestshot", *argv])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    cap = capsys.readouterr()
    return code, cap.out, cap.err
