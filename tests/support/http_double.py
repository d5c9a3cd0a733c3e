"""Test doubles over real HTTP: a request handler served on loopback in a thread, for code that must reach a server."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.endpoints import HOST


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that writes no access log lines into the test output."""

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler], port: int = 0) -> Iterator[str]:
    """``handler`` served on ``port`` (0: a free one) by a thread; yields the base URL, stops the server on exit."""
    server = http.server.ThreadingHTTPServer((HOST, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{HOST}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
