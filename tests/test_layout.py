"""Modules that find the repository from their own file find the same root (the one with pyproject.toml)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "module",
    ["mentallama_server.launch.paths", "mentallama_build.tiny", "mentallama_build.openvino_build",
     "mentallama_build.engine_cli"],
)  # fmt: skip
def test_repo_root_is_the_repository(module: str) -> None:
    root = importlib.import_module(module).REPO_ROOT
    assert root == ROOT and (root / "pyproject.toml").is_file() and (root / "model_repository").is_dir()


def test_label_parsing_reads_the_shared_imhi_folder_beside_the_repository() -> None:
    from mentallama_bench import label_parsing

    source = Path(label_parsing.__file__).resolve()
    assert source.parents[3] == ROOT.parent  # its --imhi default is <parent of the repository>/shared/imhi
