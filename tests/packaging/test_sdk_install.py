"""The base install is the SDK alone: `pip install <repo>` into a fresh virtual environment brings no server,
build or benchmark dependencies, and the SDK and its `mentallama` CLI work there without a server.

The package is built from a copy of its sources (what pyproject.toml packages), not from the working tree:
an in-tree build writes build/ and *.egg-info into the checkout that other runs are using. pip may fetch the
pinned wheels from the index; its cache makes reruns fast.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.install, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "src")
# Distributions of the server, build and benchmark extras that the SDK must not pull in.
HEAVY = ("torch", "nvidia-pytriton", "openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel",
         "transformers", "tokenizers", "matplotlib")  # fmt: skip
HEAVY_MODULES = ("torch", "pytriton", "openvino", "openvino_genai", "optimum", "transformers", "matplotlib")


class Venv:
    def __init__(self, root: Path, work: Path) -> None:
        self.root, self.work = root, work
        self.bin = root / "bin"
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_NO_CACHE_DIR", "VIRTUAL_ENV")}
        self.env["PATH"] = f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"

    def run(self, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(a) for a in args], cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.bin / "python", "-c", code)


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    tmp = tmp_path_factory.mktemp("sdk_install")
    source = tmp / "src"
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(path, source / name)
    work = tmp / "work"  # the current directory of every command: neither the checkout nor the copy
    work.mkdir()
    venv = Venv(tmp / "venv", work)
    made = venv.run(sys.executable, "-m", "venv", venv.root, timeout=120)
    assert made.returncode == 0, made.stderr
    installed = venv.run(venv.bin / "python", "-m", "pip", "install", "--quiet", source, timeout=540)
    assert installed.returncode == 0, f"pip install of the base package failed:\n{installed.stdout}\n{installed.stderr}"
    return venv


def test_base_install_has_no_server_build_or_bench_dependencies(sdk: Venv) -> None:
    listed = sdk.run(sdk.bin / "python", "-m", "pip", "list", "--format=json")
    assert listed.returncode == 0, listed.stderr
    names = {d["name"].lower().replace("_", "-") for d in json.loads(listed.stdout)}
    assert "mentallama-serving" in names
    assert {"grpcio", "tritonclient", "protobuf", "numpy", "typer", "tqdm"} <= names
    assert sorted(names & set(HEAVY)) == []

    found = sdk.python(
        "import importlib.util, json; "
        f"print(json.dumps([m for m in {list(HEAVY_MODULES)!r} if importlib.util.find_spec(m) is not None]))"
    )
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == []


def test_sdk_imports_and_works_without_a_server(sdk: Venv) -> None:
    code = """
import json, sys
import mentallama
import mentallama.cli
from mentallama.label_model import default_model

analysis = mentallama.parse_response(
    "depression",
    "No, the poster does not suffer from depression. Reasoning: The post asks which bus line goes there.",
)
print(json.dumps({
    "file": mentallama.__file__,
    "missing": [name for name in mentallama.__all__ if not hasattr(mentallama, name)],
    "clients": [mentallama.MentaLLaMAClient.__name__, mentallama.AsyncMentaLLaMAClient.__name__],
    "prompt": mentallama.build_prompt("depression", "I cannot sleep."),
    "label": analysis.label,
    "reasoning": analysis.reasoning,
    "label_model": default_model() is not None,
    "loaded": sorted(
        m for m in sys.modules if m.split(".")[0] in ("mentallama_server", "mentallama_build", "mentallama_bench")
    ),
}))
"""
    done = sdk.python(code)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert Path(got["file"]).is_relative_to(sdk.root)  # the installed copy, not the checkout
    assert got["missing"] == []
    assert got["clients"] == ["MentaLLaMAClient", "AsyncMentaLLaMAClient"]
    assert "I cannot sleep." in got["prompt"] and "depression" in got["prompt"]
    assert (got["label"], got["reasoning"]) == ("no", "The post asks which bus line goes there.")
    assert got["label_model"]  # the package data (label_model.npz) is in the wheel
    assert got["loaded"] == []  # the SDK imports no server, build or benchmark code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_runs(sdk: Venv) -> None:
    cli = sdk.bin / "mentallama"
    version = sdk.run(cli, "--version")
    assert version.returncode == 0, version.stderr
    assert "0.1.0" in version.stdout
    helped = sdk.run(cli, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "analyze" in helped.stdout and "tasks" in helped.stdout
    tasks = sdk.run(cli, "tasks")
    assert tasks.returncode == 0, tasks.stderr
    assert "depression" in tasks.stdout.lower()

    endpoint = f"127.0.0.1:{free_port()}"
    dead = sdk.run(cli, "analyze", "--endpoint", endpoint, "--task", "depression", "I cannot sleep.")
    assert dead.returncode != 0
    assert "Traceback" not in dead.stderr
    lines = dead.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no server at") and endpoint in lines[0], dead.stderr
