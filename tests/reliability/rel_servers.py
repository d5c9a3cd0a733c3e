"""Real CPU-profile servers for the reliability tests: started together, killed and restarted on demand.

Starting several servers at once overlaps their model loading; each one is a `TritonProcess` (its own
process group), so `stop()` also ends the Python-backend stubs of a server that was killed.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.launcher import ServerOptions, TritonProcess, bundled_server
from mentallama_server.launch.serve_cpu import render_cpu
from tests.support.servers import READY_TIMEOUT_S, ServerUrls


@dataclass
class Replica(ServerUrls):
    """One server that a test may kill (SIGKILL, like a lost machine) and start again on the same ports."""

    checkpoint: Path
    settings: CpuSettings
    opts: ServerOptions
    run_dir: Path
    process: TritonProcess | None = None
    starts: int = field(default=0)

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
