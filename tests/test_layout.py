"""The design's top level, and the one locator for resources and state (`mentallama.locations`,
`mentallama_server.launch.paths`): no module finds the repository from its own file depth."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mentallama import locations

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"client": ("mentallama", "mentallama_interface"), "server": ("mentallama_server",),
         "engine_build": ("mentallama_build",), "benchmarks": ("mentallama_bench",)}  # fmt: skip


def test_the_top_level_is_the_designs() -> None:
    for name in ("model_repository", "engine_build", "client", "tests", "benchmarks", "server", "deploy", "docs",
                 "Makefile", "README.md", "constraints.txt"):  # fmt: skip
        assert (ROOT / name).exists(), name
    assert not (ROOT / "src").exists() and not (ROOT / "models").exists()
    for part, packages in PARTS.items():
        assert (ROOT / part / "pyproject.toml").is_file(), part
        for package in packages:
            assert (ROOT / part / package / "__init__.py").is_file(), package


def test_no_module_computes_the_repository_from_its_own_depth() -> None:
    offenders = []
    for part, packages in PARTS.items():
        for package in packages:
            for path in (ROOT / part / package).rglob("*.py"):
                if re.search(r"\.parents\[\d\]|\.parent\.parent\.parent", path.read_text(encoding="utf-8")):
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_in_a_checkout_state_goes_to_artifacts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(locations.CACHE_ENV, raising=False)
    assert locations.checkout_root() == ROOT
    assert locations.cache_dir() == ROOT / "artifacts"
    assert locations.engines_dir() == ROOT / "artifacts" / "engines"


def test_the_environment_variable_moves_every_part_of_the_state(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mentallama_build.openvino_build import OpenVinoOptions, cached_engine_dir
    from mentallama_build.tiny import default_checkpoint_dir
    from mentallama_server.launch.serve_cpu import new_run_dir

    locations.set_cache_dir(tmp_path / "cache")
    monkeypatch.setenv(locations.CACHE_ENV, str(tmp_path / "cache"))  # restored after the test
    assert default_checkpoint_dir("tiny") == tmp_path / "cache" / "checkpoints" / "tiny"
    assert new_run_dir().parent == tmp_path / "cache" / "runs"
    nano = ROOT / "server" / "mentallama_server" / "checkpoints" / "mentallama-nano"
    assert cached_engine_dir(nano, OpenVinoOptions()).parent == tmp_path / "cache" / "engines"


def test_the_server_finds_its_templates_and_the_shipped_checkpoint_as_package_data() -> None:
    from mentallama_server.launch import paths
    from mentallama_server.launch.serve_cpu import resolve_checkpoint

    assert (paths.TEMPLATES / "mentallama" / "config.pbtxt").is_file()
    assert paths.TEMPLATES.resolve() == ROOT / "model_repository"  # the link to the one copy in a checkout
    assert resolve_checkpoint("nano") == paths.SHIPPED_CHECKPOINTS / "mentallama-nano"
    assert set(paths.package_roots()) == {str(ROOT / "server"), str(ROOT / "client")}


@pytest.mark.parametrize("command", ["mentallama-build", "mentallama-serve"])
def test_a_cache_folder_that_cannot_be_written_is_a_usage_error(command: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    if command == "mentallama-build":
        from mentallama_build.cli import app
    else:
        from mentallama_server.launch.cli import app
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ["--cache-dir", str(blocker / "cache")] + (["tiny"] if command == "mentallama-build" else ["--render",
                                                                                                    str(tmp_path)])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.replace("\u2502", " ").split())  # rich's error box wraps and frames it
    assert "cannot write into" in text and str(blocker) in text.replace(" ", "") and "Traceback" not in text
