"""What every real-server wrapper of the tests shares: free loopback ports and the server's URLs.

The wrappers themselves differ by what they start (`tests/conftest.py` `cpu_server`: one server for the
session; `tests/reliability/rel_servers.py` `Replica`: killed and restarted; `rel_launched.py`
`LaunchedServer`: the `mentallama-serve` command). The server package is imported on use, so that
test folders that never start a server collect without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.support.endpoints import HOST

if TYPE_CHECKING:
    from mentallama_server.launch.launcher import ServerOptions

__all__ = ["HOST", "READY_TIMEOUT_S", "ServerUrls", "loopback_options"]

READY_TIMEOUT_S = 240.0


def loopback_options(**changes: object) -> ServerOptions:
    """Default server options on free loopback ports."""
    from mentallama_server.launch.launcher import ServerOptions

    return ServerOptions.on_free_ports(HOST, **changes)


class ServerUrls:
    """The URLs of a server wrapper that has `opts` (its `ServerOptions`)."""

    opts: ServerOptions

    @property
    def grpc_url(self) -> str:
        return self.opts.grpc_url

    @property
    def http_url(self) -> str:
        return self.opts.http_url

    @property
    def metrics_url(self) -> str:
        return self.opts.metrics_url
