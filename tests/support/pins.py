"""The project's pins, read from its files: constraints.txt (the one list) and each part's pyproject.toml."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
PARTS = ("client", "server", "engine_build", "benchmarks")
_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraint_pins(path: Path = REPO / "constraints.txt") -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            pins[_name(match[1])] = match[2]
    return pins


def part_requirements(part: str) -> list[str]:
    """Every requirement a part's pyproject.toml declares (dependencies and extras)."""
    project = tomllib.loads((REPO / part / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project.get("dependencies", []), *(r for extra in project.get("optional-dependencies", {}).values()
                                                for r in extra)]  # fmt: skip


def part_pins(part: str) -> dict[str, str]:
    pins = {}
    for requirement in part_requirements(part):
        match = _PIN.match(requirement)
        if match:
            pins[_name(match[1])] = match[2]
    return pins
