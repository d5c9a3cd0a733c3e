"""Real CPU-profile servers for the reliability tests: started together, killed and restarted on demand.

Starting several servers at once overlaps their model loading; each one is a `TritonProcess` (its own
process group), so `stop()` also ends the Python-backend stubs of a server that was killed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mentallama_server.launcher import ServerOptions, TritonProcess, bundled_server, free_port
from mentallama_server.serve import render_cpu
from mentallama_server.settings import CpuSettings
from tests.server.triton_io import scrape_metric

READY_TIMEOUT_S = 240.0
HOST = "127.0.0.1"


def loopback_options(**changes: object) -> ServerOptions:
    """Default server options on free loopback ports."""
    ports = dict(grpc_port=free_port(HOST), http_port=free_port(HOST), metrics_port=free_port(HOST))
    return ServerOptions(host=HOST, **{**ports, **changes})  # type: ignore[arg-type]


@dataclass
class Replica:
    """One server that a test may kill (SIGKILL, like a lost machine) and start again on the same ports."""

    checkpoint: Path
    settings: CpuSettings
    opts: ServerOptions
    run_dir: Path
    process: TritonProcess | None = None
    starts: int = field(default=0)

    @property
    def grpc_url(self) -> str:
        return self.opts.grpc_url

    @property
    def http_url(self) -> str:
        return self.opts.http_url

    @property
    def metrics_url(self) -> str:
        return self.opts.metrics_url

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not running"
        return self.process.proc.pid

    def spawn(self) -> TritonProcess:
        """Render and start the server without waiting for it (see `wait_ready`)."""
        self.starts += 1
        run_dir = self.run_dir / f"start-{self.starts}"
        run_dir.mkdir(parents=True, exist_ok=True)
        repository = render_cpu(self.checkpoint, self.settings, run_dir / "model_repository")
        argv, env = bundled_server(repository, run_dir, self.opts)
        self.process = TritonProcess(argv, env, run_dir, self.opts)
        return self.process

    def wait_ready(self) -> None:
        assert self.process is not None
        self.process.wait_ready(READY_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL the tritonserver process (no shutdown at all), then reap it and its stubs."""
        assert self.process is not None
        os.kill(self.process.proc.pid, signal.SIGKILL)
        self.process.proc.wait(10)
        self.process.stop(grace_s=0)

    def health_problem(self) -> str | None:
        """Why the server cannot serve (it exited, or one of its model processes died), or None."""
        assert self.process is not None
        return self.process.health_problem()

    def restart(self) -> None:
        self.spawn()
        self.wait_ready()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def start_replicas(replicas: Sequence[Replica]) -> None:
    """Start every replica at once and wait until all are ready; on failure none is left running."""
    try:
        for replica in replicas:
            replica.spawn()
        for replica in replicas:
            replica.wait_ready()
    except BaseException:
        stop_all(replicas)
        raise


def stop_all(replicas: Sequence[Replica]) -> None:
    """Stop them together (each waits for its server's shutdown)."""
    stoppers = [threading.Thread(target=replica.stop) for replica in replicas]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join()


# --- the engine's Prometheus gauges ---------------------------------------------------------------


@dataclass(frozen=True)
class EngineGauges:
    active: float | None
    tracked: float | None
    blocks_used: float | None

    @property
    def idle(self) -> bool:
        return self.active == 0 and self.tracked == 0


def engine_gauges(metrics_url: str) -> EngineGauges:
    return EngineGauges(
        scrape_metric(metrics_url, "mentallama_engine_requests", 'state="active"'),
        scrape_metric(metrics_url, "mentallama_engine_tracked_requests"),
        scrape_metric(metrics_url, "mentallama_engine_kv_cache_blocks", 'state="used"'),
    )


def wait_gauges(
    metrics_url: str, condition: Callable[[EngineGauges], bool], timeout_s: float = 30.0
) -> tuple[EngineGauges, float]:
    """Poll the gauges until `condition` holds; returns the last reading and the seconds it took
    (the reading that failed the condition when it timed out)."""
    started = time.monotonic()
    while True:
        gauges = engine_gauges(metrics_url)
        elapsed = time.monotonic() - started
        if condition(gauges) or elapsed > timeout_s:
            return gauges, elapsed
        time.sleep(0.05)
