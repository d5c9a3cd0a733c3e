"""Serving as `mentallama-serve` does it: tritonserver with the front door before it, watched until a signal.

A server that fails (tritonserver or the front door exits, a model process dies or is stopped, the server wedges
while it reports ready) is stopped at once and `supervise` returns exit code 3, so that a supervisor (systemd,
Slurm, Kubernetes) restarts a clean server instead of one that fails requests.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mentallama_server.launch.front_door_process import FrontDoorProcess, upstream_options
from mentallama_server.launch.launcher import ServerOptions, TritonProcess, check_ports
from mentallama_server.launch.stall_watch import Canary

__all__ = ["FAILED", "Profile", "start_serving", "supervise"]

FAILED = 3  # the exit code of a server stopped because it failed
POLL_S = 1.0


class Profile(Protocol):
    """What a profile's launch offers here (`serve_cpu.CpuLaunch`, `serve_trtllm.TrtllmLaunch`)."""

    def start(self, opts: ServerOptions, run_dir: Path | None, ready_timeout: float) -> TritonProcess: ...


def start_serving(
    launch: Profile, opts: ServerOptions, run_dir: Path | None, ready_timeout: float
) -> tuple[TritonProcess, FrontDoorProcess | None]:
    """tritonserver, and the front door on the public ports unless `opts.front_door` is off (`--direct`)."""
    if not opts.front_door:
        return launch.start(opts, run_dir, ready_timeout), None
    check_ports(opts)  # the public ports, before minutes of engine loading
    server = launch.start(upstream_options(opts), run_dir, ready_timeout)
    try:
        return server, FrontDoorProcess.start(opts, server.opts, server.run_dir)
    except BaseException:
        server.stop()
        raise


def supervise(server: TritonProcess, front: FrontDoorProcess | None, warn: Callable[[str], None]) -> int:
    """Serve until SIGINT/SIGTERM (0; stopping is the caller's) or until the server fails: then `warn` gets the
    problem and the log's tail, both processes are stopped without a drain (in-flight requests hang on a dead
    model), and the result is `FAILED`."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    opts = server.opts  # tritonserver's own endpoints (private behind the front door)
    # A server that accepts requests and answers none shows up only to a request (stall_watch.Canary); a
    # request that waits while the server produces tokens waits behind work, and is no sign of a wedge.
    canary = Canary(opts.http_url, "mentallama", opts.metrics_url).start() if opts.http else None
    while not stop.wait(POLL_S):
        problem = (front.problem() if front is not None else None) or server.health_problem()
        if problem is None and canary is not None and canary.wedged:
            problem = (
                f"a one-token request to the `mentallama` model went unanswered while nothing in the server "
                f"progressed (no token produced, no response sent) for {canary.quiet_s:g} s: the server is "
                "wedged while it reports ready"
            )
        if problem:
            warn(f"error: {problem}; stopping the server.\n{server.log_tail()}")
            if front is not None:
                front.stop(grace_s=1)
            server.stop(grace_s=1)
            return FAILED
    return 0
