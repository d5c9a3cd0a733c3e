"""`launch.supervise`: a failing server is stopped at once and reported with exit code 3; a signal ends serving
with 0 and leaves the stopping to the caller (the real launcher under a real failure:
tests/reliability/test_rel_engine_crash.py)."""

from __future__ import annotations

import os
import signal
import threading
from types import SimpleNamespace

from mentallama_server.launch.launcher import ServerOptions
from mentallama_server.launch.supervise import FAILED, supervise


class _Process:
    def __init__(self, problem: str | None = None) -> None:
        self.problem_text, self.stops = problem, []
        self.opts = ServerOptions(http=False)  # no canary: nothing listens

    def problem(self) -> str | None:
        return self.problem_text

    health_problem = problem

    def log_tail(self) -> str:
        return "last log lines"

    def stop(self, grace_s: float | None = None) -> int:
        self.stops.append(grace_s)
        return 0


def test_a_failed_front_door_stops_both_without_a_drain_and_says_why() -> None:
    server, front, said = _Process(), _Process("the front door exited (code 1)"), []
    assert supervise(server, front, said.append) == FAILED == 3  # type: ignore[arg-type]
    assert said == ["error: the front door exited (code 1); stopping the server.\nlast log lines"]
    assert front.stops == [1] and server.stops == [1]


def test_a_signal_ends_serving_and_leaves_the_stop_to_the_caller() -> None:
    server, said = _Process(), []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert supervise(server, None, said.append) == 0  # type: ignore[arg-type]
    finally:
        timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert said == [] and server.stops == []


def test_the_banner_and_the_exit_code_of_mentallama_serve(capsys) -> None:
    from mentallama_server.launch import cli

    server = SimpleNamespace(log_path="/tmp/x.log", health_problem=lambda: "tritonserver exited", opts=ServerOptions(
        http=False), log_tail=lambda: "tail", stop=lambda grace_s=None: 0)  # fmt: skip
    try:
        cli._serve(server, None, "cpu", ServerOptions(), demo=False)
    except SystemExit as exit_:
        assert exit_.code == FAILED
    else:
        raise AssertionError("a failed server must exit with code 3")
    out, err = capsys.readouterr()
    assert "error: tritonserver exited; stopping the server.\ntail" in err
    assert out.rstrip().endswith("tritonserver stopped (exit code 0)")
