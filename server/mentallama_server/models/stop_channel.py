"""A local side channel on which the `mentallama` front model stops CPU engine requests, without a BLS call.

Stopping an engine request through Triton (a BLS request with `stop` and the request's id) wedged Triton 2.51's
Python-backend stub under load: a thread creating a BLS response iterator holds the GIL while it waits for the
stub's iterator-map lock, the stub's message thread holds that lock while it waits for an iterator's lock, and
a thread in `next()` holds the iterator's lock while it waits for the GIL (docs/RELIABILITY.md, "Wedge"). Every
stop added one more BLS call and iterator. The CPU engine step, which runs beside the front model on the same
host, therefore also listens on a Unix datagram socket in its model folder (mode 0600, the server's user only):
one datagram is one engine request id to stop. The front model uses it when the socket exists and falls back to
the BLS stop otherwise (the TensorRT-LLM engine, or a socket path too long for the platform). Standard library
only.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

SOCKET_NAME = "stop.sock"
MAX_PATH_BYTES = 107  # sun_path holds 108 bytes with its terminating NUL
MAX_ID_BYTES = 1024
ERROR_LOG_INTERVAL_S = 10.0  # a flood of bad datagrams logged 37k lines in 5 s (issue 18, finding 8)


def socket_path(engine_model_dir: str | Path) -> Path:
    """Where the engine step of the model folder `engine_model_dir` listens."""
    return Path(engine_model_dir) / SOCKET_NAME


class StopListener:
    """Receives engine request ids on a Unix datagram socket and hands each to `on_stop` (on its own thread)."""

    def __init__(self, path: str | Path, on_stop: Callable[[str], None], on_error: Callable[[str], None]) -> None:
        self.path = Path(path)
        if len(os.fsencode(self.path)) > MAX_PATH_BYTES:
            raise ValueError(f"stop socket path {self.path} is longer than {MAX_PATH_BYTES} bytes")
        self.path.unlink(missing_ok=True)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old_umask = os.umask(0o177)  # created private: no window in which another user could connect
        try:
            self._socket.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._on_stop, self._on_error = on_stop, on_error
        self._errors = 0
        self._next_error_log = 0.0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stop-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._socket.recv(MAX_ID_BYTES)
            except OSError:
                return  # closed
            if not data:
                continue
            try:
                self._on_stop(data.decode("utf-8"))
            except Exception as exc:  # the listener must survive a bad datagram or a failed stop
                self._errors += 1
                now = time.monotonic()
                if now >= self._next_error_log:  # at most one line per interval, however many datagrams
                    self._next_error_log = now + ERROR_LOG_INTERVAL_S
                    self._on_error(f"stop listener: {type(exc).__name__}: {exc} ({self._errors} error(s) so far)")

    def close(self) -> None:
        self._closed.set()
        self._socket.close()
        self.path.unlink(missing_ok=True)


class StopSender:
    """The front model's end: `send(engine_id)` is True when the engine step's socket took the datagram."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, engine_id: str) -> bool:
        data = engine_id.encode("utf-8")
        if len(data) > MAX_ID_BYTES:
            return False
        try:
            self._socket.sendto(data, str(self.path))
        except OSError:  # no listener (another engine, or not started): the caller falls back to BLS
            return False
        return True

    def close(self) -> None:
        self._socket.close()
