"""The GPU launch paths of deploy/ start tritonserver ranks unbound and with the Python-backend pool flags.

Open MPI binds each `-n 1` rank to one core by default: rank 0's tritonserver and all its Python models
would share it (and every TP replica's rank 0 on a node the same core). `mpi_command` passes
`--bind-to none`, and the pool flags that `mentallama-serve` uses (issue 12); run_triton.sh (Apptainer, and
through it the Slurm jobs) and Kubernetes take their argv from it.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import yaml

from tests.deploy.deploy_support import script_env

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def dry_run(*args: str) -> list[str]:
    result = subprocess.run(
        [str(DEPLOY / "apptainer" / "run_triton.sh"), "--model-repo", "/runs/repo", "--image", "/i.sif",
         "--dry-run", *args],
        capture_output=True, text=True, timeout=60, env=script_env(ML_CONTAINER_RUNTIME="apptainer"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    argv = argv[argv.index("/i.sif") + 1 :]
    return argv[argv.index("--") + 1 :]  # tritonserver's argv, after the front door's options


def test_run_triton_ranks_are_unbound_and_get_the_pool_flags() -> None:
    server = dry_run("--world-size", "2", "--shm-pool-mib", "32")
    assert server[:4] == ["mpirun", "--allow-run-as-root", "--bind-to", "none"]
    size = 32 * 2**20
    assert server.count(f"--backend-config=python,shm-default-byte-size={size}") == 2
    assert server.count(f"--backend-config=python,shm-growth-byte-size={size}") == 2


def test_run_triton_single_gpu_gets_the_default_pool() -> None:
    server = dry_run()
    assert "mpirun" not in server
    assert f"--backend-config=python,shm-default-byte-size={16 * 2**20}" in server


def test_kubernetes_builds_its_argv_with_mpi_command() -> None:
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "mentallama_server.launch.trtllm_profile mpi-command" in container["args"][0]
    assert "--http-address=127.0.0.1 --grpc-address=127.0.0.1" in container["args"][0]
