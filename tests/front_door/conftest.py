"""Front doors with settings of a test's own (limits, API keys, TLS), in front of the session's tritonserver.

`cpu_server` (tests/conftest.py) already serves every client test through a front door with the defaults; the
ones made here share its tritonserver, so each costs a process start (about a second), not a server start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.endpoints import HOST


class ExtraFrontDoor:
    def __init__(self, process: Any) -> None:
        self.process = process
        self.config = process.config

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.config.grpc_port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.config.tls else "http"
        return f"{scheme}://{HOST}:{self.config.http_port}"


@pytest.fixture
def front_door_with(cpu_server, tmp_path: Path) -> Iterator[Callable[..., ExtraFrontDoor]]:
    """Start a front door with `FrontDoorConfig` fields of the test's choosing."""
    from mentallama_server.front_door.config import FrontDoorConfig
    from mentallama_server.launch.front_door_process import FrontDoorProcess
    from mentallama_server.launch.launcher import free_ports

    started: list[Any] = []

    def start(**changes: Any) -> ExtraFrontDoor:
        grpc_port, http_port = free_ports(2, HOST)
        config = FrontDoorConfig(
            upstream_grpc=cpu_server.triton.grpc_url, host=HOST, grpc_port=grpc_port, http_port=http_port, **changes
        )
        run_dir = tmp_path / f"front-{len(started)}"
        run_dir.mkdir()
        process = FrontDoorProcess(config, run_dir)
        started.append(process)
        process.wait_ready(30)
        return ExtraFrontDoor(process)

    yield start
    for process in started:
        process.stop()
