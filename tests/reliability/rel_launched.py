"""`mentallama-serve --profile cpu` in a subprocess, as a user runs it (tests of the launcher's own
behaviour: its defaults, its environment variables, its watch over the model processes)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from tests.support.servers import READY_TIMEOUT_S, ServerUrls, loopback_options

SERVE = str(Path(sys.executable).parent / "mentallama-serve")


class LaunchedServer(ServerUrls):
    """`mentallama-serve --profile cpu` in a subprocess, on free loopback ports; a context manager.

    Its output is read by a thread (kept in `output`), so the launcher never blocks on a full pipe.
    """

    def __init__(self, checkpoint: Path, run_dir: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.opts = loopback_options()
        self.run_dir = run_dir
        argv = [
            SERVE, "--profile=cpu", f"--model={checkpoint}", f"--run-dir={run_dir}",
            f"--grpc-port={self.opts.grpc_port}", f"--http-port={self.opts.http_port}",
            f"--metrics-port={self.opts.metrics_port}", *flags,
        ]  # fmt: skip
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "metrics http://" in line:
                self._ready.set()
        self._ready.set()  # exited

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> LaunchedServer:
        if not self._ready.wait(timeout_s) or self.proc.poll() is not None:
            raise AssertionError(f"mentallama-serve did not get ready:\n{self.output}")
        return self

    def tritonserver(self) -> psutil.Process:
        """The tritonserver process the launcher started."""
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if child.name() == "tritonserver":
                return child
        raise AssertionError("no tritonserver under the launcher")

    def front_door(self) -> psutil.Process:
        """The front door process the launcher started (it owns the public ports)."""
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if "mentallama_server.front_door" in " ".join(child.cmdline()):
                return child
        raise AssertionError("no front door under the launcher")

    def stubs(self) -> dict[str, psutil.Process]:
        """The Python-backend stub of each model, by model name."""
        stubs = {}
        for child in self.tritonserver().children():
            cmdline = child.cmdline()
            if cmdline and cmdline[0].endswith("triton_python_backend_stub"):
                stubs[Path(cmdline[1]).parent.parent.name] = child
        return stubs

    def stop(self) -> int:
        """SIGTERM (the launcher stops tritonserver and its stubs), SIGKILL if it hangs; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> LaunchedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        orphan = None
        with contextlib.suppress(psutil.Error, AssertionError):
            orphan = self.tritonserver() if self.proc.poll() is None else None
        self.stop()
        if orphan is not None and orphan.is_running():  # the launcher was killed before it could stop it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(orphan.pid, signal.SIGKILL)
