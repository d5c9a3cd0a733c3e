"""Shared fixtures: one real tritonserver (CPU profile, tiny checkpoint) per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.servers import ServerUrls, loopback_options

if TYPE_CHECKING:
    from mentallama_server.launch.launcher import ServerOptions

# Tests never download: without this, transformers' tokenizer loading waits on Hugging Face Hub lookups
# (about 30 s of wall time on a machine without internet).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Fixtures that start a real tritonserver: tests that use one are marked `server`, so the fast tier
# (`make test-fast`, `-m "not server and not slow and not install"`) leaves them out.
SERVER_FIXTURES = {"cpu_server"}
# Tests that train, build engines, run the OpenVINO engine or start scripts for seconds each: marked `slow`.
SLOW_PATHS = (
    "tests/engine_build/test_nano.py",
    "tests/engine_build/test_openvino_build.py",
    "tests/engine_build/test_tiny.py",
    "tests/engine_build/test_shaped.py",
    "tests/server/test_ov_engine.py",
    "tests/client/test_label_model.py",
    "tests/benchmarks/test_bench_cli.py",
    "tests/deploy/",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
        if item.nodeid.startswith(SLOW_PATHS):
            item.add_marker(pytest.mark.slow)


@dataclass(frozen=True)
class RunningServer(ServerUrls):
    """`opts`: the public endpoints clients use (the front door's); `triton`: tritonserver's own (loopback)."""

    opts: ServerOptions
    checkpoint: Path
    run_dir: Path
    log_path: Path
    triton: ServerOptions
    front_door_log: Path | None = None


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    from mentallama_build.tiny import ensure_checkpoint

    return ensure_checkpoint("tiny")


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint: Path) -> Path:
    """The tiny checkpoint's fp32 OpenVINO engine, as `mentallama-serve` builds it on first use."""
    from mentallama_build.openvino_build import OpenVinoOptions, ensure_engine

    return ensure_engine(tiny_checkpoint, OpenVinoOptions("fp32"))


@pytest.fixture(scope="session")
def cpu_server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real tritonserver (CPU profile, tiny checkpoint) behind the real front door, as `mentallama-serve`
    starts them, on free loopback ports: every client test goes through the front door. With
    MENTALLAMA_TEST_DIRECT=1 the clients reach tritonserver itself (`--direct`), to compare."""
    from mentallama_server.launch.cpu_profile import CpuSettings
    from mentallama_server.launch.front_door_process import FrontDoorProcess, upstream_options
    from mentallama_server.launch.serve_cpu import start_cpu_server

    public = loopback_options()
    direct = os.environ.get("MENTALLAMA_TEST_DIRECT") == "1"
    triton = public if direct else upstream_options(public)
    run_dir = tmp_path_factory.mktemp("triton-run")
    # A small cache and short limits keep the suite fast and make limit errors easy to reach.
    settings = CpuSettings(max_input_len=1024, max_output_len=1024, cache_num_blocks=256)
    server = start_cpu_server(str(tiny_checkpoint), settings, triton, run_dir)
    front = None
    try:
        if not direct:
            front = FrontDoorProcess.start(public, triton, run_dir)
        yield RunningServer(public, tiny_checkpoint, run_dir, server.log_path, triton,
                            None if front is None else front.log_path)  # fmt: skip
    finally:
        if front is not None:
            front.stop()
        server.stop()
