"""Helpers of the deploy/ tests: the scripts' environment, free loopback ports, waiting on and stopping the
processes a script starts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def script_env(**extra: str) -> dict[str, str]:
    """The test's environment without Slurm's or CUDA's variables, this venv first on PATH, fast polling."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_VISIBLE"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"MENTALLAMA_REPO": str(REPO), "ML_POLL_S": "0.2", "ML_STOP_GRACE_S": "5", **extra})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free; a listener is not
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(stride: int, count: int) -> int:
    """A base port whose `count` replicas (3 ports each, `stride` apart) are all free."""
    for _ in range(50):
        base = free_port()
        ports = [base + i * stride + k for i in range(count) for k in range(3)]
        if max(ports) < 65536 and all(port_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range")


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill -0; look at its state.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def stop(proc: subprocess.Popen[str]) -> None:
    """End a script under test the way Slurm would (SIGTERM runs its teardown), SIGKILL as a last resort."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
