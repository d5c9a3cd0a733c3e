"""Each part installs from its wheel, outside the checkout: wheels are built from a copy of the parts (what their
pyproject.toml files package, as a clean checkout has them) and installed into fresh virtual environments.

- The SDK alone (`mentallama`): no server, build or benchmark dependencies; it parses, templates and calls a
  running server.
- The server with its build part (`mentallama-server[build]`): `mentallama-serve --demo`, started from an empty
  folder, builds the nano engine into the cache folder, serves it and prints a parsed answer; nothing is written
  under site-packages or the current folder.

pip fetches the pinned dependencies from the index; its cache (filled by `make setup`) makes this fast.
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

pytestmark = [pytest.mark.install, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
# What the wheels are built from: the parts and what they carry (the server links to model_repository/).
SOURCES = ("constraints.txt", "client", "server", "engine_build", "benchmarks", "model_repository")
# Distributions of the server, build and benchmark parts that the SDK must not pull in.
HEAVY = ("torch", "nvidia-pytriton", "openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel",
         "transformers", "tokenizers", "matplotlib")  # fmt: skip
HEAVY_MODULES = ("torch", "pytriton", "openvino", "openvino_genai", "optimum", "transformers", "matplotlib")


class Venv:
    def __init__(self, root: Path, work: Path, home: Path) -> None:
        self.root, self.work = root, work
        self.bin = root / "bin"
        drop = ("PYTHONPATH", "PIP_NO_CACHE_DIR", "VIRTUAL_ENV", "MENTALLAMA_CACHE", "XDG_CACHE_HOME")
        self.env = {k: v for k, v in os.environ.items() if k not in drop}
        self.env["PATH"] = f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"
        # A home of its own: the cache folder defaults to ~/.cache/mentallama; pip keeps the real cache.
        self.env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
        self.env["HOME"] = str(home)

    def run(self, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(a) for a in args], cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.bin / "python", "-c", code)

    def site_packages(self) -> Path:
        return Path(self.python("import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wheel per part, built from a copy of the parts (an in-tree build writes build/ and *.egg-info into the
    checkout that other runs are using)."""
    tmp = tmp_path_factory.mktemp("wheels")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))  # fmt: skip
        else:
            shutil.copy2(path, source / name)
    dist = tmp / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", dist,
         "./client", "./server", "./engine_build", "./benchmarks"],
        cwd=source, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    names = sorted(p.name.split("-")[0] for p in dist.glob("*.whl"))
    assert names == ["mentallama", "mentallama_bench", "mentallama_build", "mentallama_server"], names
    return dist


def make_venv(tmp: Path, wheels: Path, requirement: str) -> Venv:
    work = tmp / "work"  # the current directory of every command: neither the checkout nor the sources
    work.mkdir()
    venv = Venv(tmp / "venv", work, tmp / "home")
    made = venv.run(sys.executable, "-m", "venv", venv.root, timeout=120)
    assert made.returncode == 0, made.stderr
    installed = venv.run(venv.bin / "python", "-m", "pip", "install", "--quiet", "-c", REPO / "constraints.txt",
                         "--find-links", wheels, requirement, timeout=1200)  # fmt: skip
    assert installed.returncode == 0, f"pip install {requirement} failed:\n{installed.stdout}\n{installed.stderr}"
    return venv


@pytest.fixture(scope="module")
def sdk(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    return make_venv(tmp_path_factory.mktemp("sdk_install"), wheels, "mentallama")


def test_base_install_has_no_server_build_or_bench_dependencies(sdk: Venv) -> None:
    listed = sdk.run(sdk.bin / "python", "-m", "pip", "list", "--format=json")
    assert listed.returncode == 0, listed.stderr
    names = {d["name"].lower().replace("_", "-") for d in json.loads(listed.stdout)}
    assert "mentallama" in names and not {"mentallama-server", "mentallama-build", "mentallama-bench"} & names
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


def test_the_installed_sdk_calls_a_running_server(sdk: Venv, cpu_server) -> None:
    done = sdk.run(sdk.bin / "mentallama", "analyze", "--endpoint", cpu_server.grpc_url, "--task", "depression",
                   "--max-tokens", "8", "I cannot sleep and nothing feels worth doing.", timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_the_installed_server_serves_the_demo_from_an_empty_folder(
    wheels: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("server_install")
    venv = make_venv(tmp, wheels, "mentallama-server[build]")
    # optimum-intel requires torchvision, whose PyPI build does not load beside the pinned torch (README, Install).
    venv.run(venv.bin / "python", "-m", "pip", "uninstall", "--quiet", "--yes", "torchvision", timeout=120)
    site = venv.site_packages()
    assert (site / "mentallama_server" / "model_repository" / "mentallama" / "config.pbtxt").is_file()
    assert not (site / "mentallama_server" / "model_repository").is_symlink()  # a copy in the wheel, not the link
    assert (site / "mentallama_server" / "model_repository" / "ensemble" / "1").is_dir()  # its empty version folder
    before = _files(venv.root)

    ports = [str(free_port()) for _ in range(3)]
    served = venv.run(venv.bin / "mentallama-serve", "--demo", "--grpc-port", ports[0], "--http-port", ports[1],
                      "--metrics-port", ports[2], "--ready-timeout", "900", timeout=1000)  # fmt: skip
    assert served.returncode == 0, served.stdout[-3000:] + served.stderr[-3000:]
    assert "Parsed label" in served.stdout, served.stdout[-3000:]

    cache = tmp / "home" / ".cache" / "mentallama"  # the documented default outside a checkout
    engines = [p for p in (cache / "engines").iterdir() if (p / "openvino_model.xml").is_file()]
    assert engines and engines[0].name.startswith("mentallama-nano")
    assert any((cache / "runs").iterdir())
    assert list(venv.work.iterdir()) == []  # nothing in the folder it was started from
    after = _files(venv.root)
    assert {k: v for k, v in after.items() if before.get(k) != v} == {}  # nothing written into the environment
