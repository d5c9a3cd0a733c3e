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
    opts: ServerOptions
    checkpoint: Path
    run_dir: Path
    log_path: Path


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
    """A real tritonserver on loopback, free ports, CPU profile with the tiny checkpoint."""
    from mentallama_server.launch.cpu_profile import CpuSettings
    from mentallama_server.launch.serve_cpu import start_cpu_server

    opts = loopback_options()
    run_dir = tmp_path_factory.mktemp("triton-run")
    # A small cache and short limits keep the suite fast and make limit errors easy to reach.
    settings = CpuSettings(max_input_len=1024, max_output_len=1024, cache_num_blocks=256)
    server = start_cpu_server(str(tiny_checkpoint), settings, opts, run_dir)
    try:
        yield RunningServer(opts, tiny_checkpoint, run_dir, server.log_path)
    finally:
        server.stop()
