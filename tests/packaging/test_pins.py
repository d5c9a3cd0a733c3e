"""One pin list: every version a part's pyproject.toml pins is the one constraints.txt pins, and the parts
depend on each other at the version they carry."""

from __future__ import annotations

import pytest
import tomllib

from tests.support.pins import PARTS, REPO, constraint_pins, part_pins

OUR_DISTRIBUTIONS = {"mentallama", "mentallama-server", "mentallama-build", "mentallama-bench"}


@pytest.mark.parametrize("part", PARTS)
def test_a_parts_pins_are_the_constraints(part: str) -> None:
    pins = {name: version for name, version in part_pins(part).items() if name not in OUR_DISTRIBUTIONS}
    shared = constraint_pins()
    assert pins, part
    assert {name: (version, shared.get(name)) for name, version in pins.items() if shared.get(name) != version} == {}


def test_the_test_tools_are_pinned_as_in_the_constraints() -> None:
    tools = constraint_pins(REPO / "tests" / "requirements.txt")
    assert {"pytest", "ruff", "openai"} <= set(tools)
    assert {name: version for name, version in tools.items() if constraint_pins().get(name) != version} == {}


def test_the_parts_depend_on_each_other_at_their_own_version() -> None:
    versions = {}
    for part in PARTS:
        project = tomllib.loads((REPO / part / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        versions[project["name"]] = project["version"]
    assert set(versions) == OUR_DISTRIBUTIONS
    for part in PARTS:
        for name, version in part_pins(part).items():
            if name in OUR_DISTRIBUTIONS:
                assert version == versions[name], (part, name)
