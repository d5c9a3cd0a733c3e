"""Our tools in the NGC TensorRT-LLM image (issue 21): deploy/container/install_tools.sh.

The image is read-only under Apptainer and brings its own torch, transformers and tensorrt_llm, so the recipe
makes a virtual environment outside it, with the image's python3 and --system-site-packages, and installs our
four parts from wheels (without their CPU-profile dependencies) plus deploy/container/ngc_requirements.txt.
Checked here: the commands it runs, through Apptainer and Docker (dry run, parsed), and, marked `install`, a real
install from this checkout with the system's python3 standing in for the image's, after which every tool runs
from the environment and the environment holds no copy of what the image provides.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.deploy.deploy_support import script_env

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "container" / "install_tools.sh"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def dry_run(*args: str) -> list[list[str]]:
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, timeout=60,
                            env=script_env())  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


def test_through_apptainer_the_image_stays_read_only(tmp_path: Path) -> None:
    venv = tmp_path / "shared" / "ngc-venv"
    container, *steps = dry_run("--venv", str(venv), "--image", "/images/trtllm.sif", "--runtime", "apptainer")
    image = container.index("/images/trtllm.sif")
    assert container[:2] == ["apptainer", "exec"] and "--nv" not in container  # installing needs no GPU
    binds = {container[i + 1] for i, arg in enumerate(container[:image]) if arg == "--bind"}
    assert binds == {f"{REPO}:{REPO}", f"{venv.parent}:{venv.parent}"}  # only folders outside the image
    assert container[image + 1 :][:2] == ["bash", str(SCRIPT)] and "--inside" in container
    python = str(venv / "bin" / "python")
    # the image's python3, and its pip (Ubuntu images have no ensurepip)
    assert steps[0] == ["python3", "-m", "venv", "--system-site-packages", "--without-pip", str(venv)]
    wheel = next(s for s in steps if s[:4] == [python, "-m", "pip", "wheel"])
    assert "--no-deps" in wheel and [Path(p).name for p in wheel[-4:]] == ["client", "server", "engine_build",
                                                                             "benchmarks"]  # fmt: skip
    install_ours, install_deps = (s for s in steps if s[:4] == [python, "-m", "pip", "install"])
    assert "--no-deps" in install_ours and install_ours[-1].endswith("mentallama-*.whl")
    assert install_deps[-2:] == ["-r", str(REPO / "deploy" / "container" / "ngc_requirements.txt")]
    assert any(s[:2] == [python, "-c"] and "mentallama_server.front_door.server" in s[2] for s in steps)
    tools = [Path(s[0]).name for s in steps if s[-1] == "--version"]
    assert tools == ["mentallama", "mentallama-build", "mentallama-serve", "mentallama-bench"]


def test_through_docker_as_the_calling_user(tmp_path: Path) -> None:
    venv = tmp_path / "ngc-venv"
    container = dry_run("--venv", str(venv), "--image", "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3",
                        "--runtime", "docker", "--wheels", str(tmp_path / "wheels"))[0]  # fmt: skip
    assert container[:3] == ["docker", "run", "--rm"]
    assert container[container.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    volumes = {container[i + 1] for i, arg in enumerate(container) if arg == "-v"}
    assert f"{tmp_path}:{tmp_path}" in volumes and f"{tmp_path / 'wheels'}:{tmp_path / 'wheels'}" in volumes
    assert "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3" in container
    assert container[container.index("--wheels") + 1] == str(tmp_path / "wheels")


def test_a_venv_is_required() -> None:
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30, env=script_env())
    assert result.returncode == 2 and "--venv DIR is required" in result.stderr


@pytest.mark.install
@pytest.mark.timeout(1500)
@pytest.mark.skipif(not SYSTEM_PYTHON.is_file(), reason="needs a system python3 to stand in for the image's")
def test_a_real_install_runs_every_tool_from_the_environment(tmp_path: Path) -> None:
    venv = tmp_path / "ngc-venv"
    env = {k: v for k, v in script_env().items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    result = subprocess.run(["bash", str(SCRIPT), "--inside", "--python", str(SYSTEM_PYTHON), "--venv", str(venv)],
                            capture_output=True, text=True, timeout=1400, env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    site = next((venv / "lib").glob("python3*/site-packages"))
    own = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"mentallama", "mentallama_server", "mentallama_build", "mentallama_bench", "fastapi", "tritonclient"} <= own
    assert not own & {"torch", "transformers", "openvino", "nvidia_pytriton", "optimum_intel"}  # the image's
    assert not any((REPO / part / "build").exists() for part in ("client", "server", "engine_build", "benchmarks"))
    plan = subprocess.run([str(venv / "bin" / "mentallama-bench"), "gpu-smoke", "--dry-run", "--work-dir",
                           str(tmp_path / "smoke")], capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert plan.returncode == 0 and "[9/9] metrics" in plan.stdout, plan.stderr
    assert f"{venv}/bin/mentallama-build engine" in plan.stdout  # the smoke test runs the environment's tools
    served = subprocess.run([str(venv / "bin" / "mentallama-serve"), "--version"], capture_output=True, text=True,
                            timeout=60, env=env)  # fmt: skip
    assert served.stdout.strip() == "mentallama-serve 0.1.0"
