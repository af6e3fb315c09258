"""Does requirements/lock*.txt agree with pyproject.toml?  Usage: python scripts/lock_check.py [--fingerprint]

Each lock file records, in its header, a sha256 of the inputs it was resolved from (pyproject's
requires-python, dependencies and optional-dependencies, plus requirements/*.in and the CUDA exclude list).
The check fails when that fingerprint is stale, when a direct dependency is missing from its lock or pinned
to a version its specifier refuses, when a CPU lock carries a CUDA-only package, or when the runtime lock
and the dev lock pin a package differently.  `scripts/update-lock.sh` regenerates the locks;
tests/test_lock.py runs this check.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REQ = "requirements"
INPUTS = (
    "constraints.in",
    "cuda-only.in",
    "no-deps.in",
    "vendor.in",
)  # under requirements/, hashed with pyproject's tables
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")
FINGERPRINT = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.M)


def fingerprint(root: Path) -> str:
    """sha256 of everything the locks are resolved from (comments in the .in files do not count)."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    data: dict = {key: project.get(key) for key in ("requires-python", "dependencies", "optional-dependencies")}
    for name in INPUTS:
        data[name] = _in_lines(root / REQ / name)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _in_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def read_lock(path: Path) -> dict[str, list[Requirement]]:
    """name → its pinned lines (a universal lock may pin one package twice, under different markers)."""
    pins: dict[str, list[Requirement]] = {}
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        req = Requirement(line.rstrip("\\").strip())
        pins.setdefault(canonicalize_name(req.name), []).append(req)
    return pins


def locks(root: Path) -> dict[str, list[Requirement]]:
    """lock file name → the direct requirements it must pin."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(r) for r in project.get("dependencies", [])]
    extras = {name: [Requirement(r) for r in reqs] for name, reqs in project.get("optional-dependencies", {}).items()}
    out = {
        "lock.txt": runtime,
        "lock-no-deps.txt": [Requirement(r) for r in _in_lines(root / REQ / "no-deps.in")],
        "lock-vendor.txt": [Requirement(r) for r in _in_lines(root / REQ / "vendor.in")],
    }
    for name, reqs in extras.items():
        out[f"lock-{name}.txt"] = runtime + reqs
    return out


def problems(root: Path) -> list[str]:
    root = Path(root)
    found: list[str] = []
    expected = fingerprint(root)
    pinned: dict[str, dict[str, list[Requirement]]] = {}
    for lock_name, direct in locks(root).items():
        path = root / REQ / lock_name
        if not path.is_file():
            found.append(f"{REQ}/{lock_name} is missing — run scripts/update-lock.sh")
            continue
        match = FINGERPRINT.search(path.read_text())
        if not match or match.group(1) != expected:
            found.append(
                f"{REQ}/{lock_name} was not generated from this pyproject.toml/{REQ}/*.in "
                "(inputs-sha256 differs) — run scripts/update-lock.sh"
            )
        pins = pinned[lock_name] = read_lock(path)
        for req in direct:
            lines = pins.get(canonicalize_name(req.name))
            if not lines:
                found.append(f"{REQ}/{lock_name}: {req.name} (pyproject: {req}) is not locked")
                continue
            for line in lines:
                version = _pinned_version(line)
                if version is None:
                    found.append(f"{REQ}/{lock_name}: {line} is not an exact pin (==)")
                elif not req.specifier.contains(version, prereleases=True):
                    found.append(f"{REQ}/{lock_name}: {req.name}=={version} does not satisfy pyproject's {req}")
        if lock_name in ("lock.txt", "lock-dev.txt"):
            found += [
                f"{REQ}/{lock_name}: {name} is CUDA-only; add it to {REQ}/cuda-only.in"
                for name in pins
                if CUDA_ONLY.match(name)
            ]
    if "lock.txt" in pinned and "lock-dev.txt" in pinned:
        dev = pinned["lock-dev.txt"]
        for name, lines in pinned["lock.txt"].items():
            if sorted(map(str, lines)) != sorted(map(str, dev.get(name, []))):
                found.append(f"{REQ}/lock.txt and lock-dev.txt pin {name} differently")
    return found


def _pinned_version(req: Requirement) -> str | None:
    specs = list(req.specifier)
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" else None


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent
    if argv[1:] == ["--fingerprint"]:
        print(fingerprint(root))
        return 0
    found = problems(root)
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
