"""`make run` / `make serve` take the server's ports (issue 22): GRPC_PORT, HTTP_PORT and METRICS_PORT reach
mentallama-serve's command line (what that command line does is tests/server/test_serve_cli_options.py's)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def serve_line(*args: str) -> str:
    """The mentallama-serve command `make` would run (make -n prints it and runs nothing)."""
    out = subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if "mentallama-serve" in line)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make here")
def test_ports_reach_the_server_and_default_to_mentallama_serves() -> None:
    line = serve_line("serve", "GRPC_PORT=9001", "HTTP_PORT=9000", "METRICS_PORT=9002")
    assert "--grpc-port 9001 --http-port 9000 --metrics-port 9002" in line and "--demo" not in line
    line = serve_line("run")
    assert "--grpc-port 8001 --http-port 8000 --metrics-port 8002" in line and line.rstrip().endswith("--demo")
    assert "--checkpoint nano" in serve_line("run", "MODEL=nano")
