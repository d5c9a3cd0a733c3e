"""Loopback ports for tests: a free one to listen on, or an endpoint where nothing listens."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (bound and released, so no other test owns it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def dead_endpoint() -> str:
    """``host:port`` with nothing listening: connecting to it fails at once."""
    return f"{HOST}:{free_port()}"
