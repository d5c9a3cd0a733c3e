"""Who a client is, and how many requests it may have in flight.

A client is its API key when keys are in use (several connections of one service share their requests and may
stop each other's), else its connection (the peer address and port). Request ids go upstream as
`<client tag>.<sequence>`: unique, so two clients both numbering their requests 1, 2, ... never collide, and a
`stop` reaches only requests of the client that sends it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from dataclasses import dataclass, field

from mentallama_server.overload import OVERLOADED, as_overload


class Refused(Exception):
    """A request refused before it went upstream. `status`: the HTTP status; `grpc_code`: the gRPC code name."""

    def __init__(self, message: str, status: int = 400, grpc_code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.message, self.status, self.grpc_code = message, status, grpc_code


@dataclass(eq=False)  # each ticket is its own request: compared and hashed by identity
class Ticket:
    """One admitted request: its upstream id, and whose it is."""

    client: str
    client_id: str
    upstream_id: str
    model: str

    def own_words(self, text: str) -> str:
        """Upstream text (Triton names the request in its errors) with the client's own id in it; an engine's
        full queue in the words clients retry on (the ensemble's errors come straight from TensorRT-LLM)."""
        text = text.replace(self.upstream_id, self.client_id)
        return as_overload(text) or text


@dataclass
class Admission:
    max_in_flight: int
    max_per_client: int
    in_flight: int = 0
    per_client: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    running: dict[tuple[str, str], list[Ticket]] = field(default_factory=dict)
    _sequence: itertools.count = field(default_factory=itertools.count)

    @staticmethod
    def client_of(peer: str, api_key: str | None) -> str:
        if api_key:
            return "k" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
        return "c" + hashlib.sha256(peer.encode()).hexdigest()[:16]

    def admit(self, client: str, client_id: str, model: str, track: bool = True) -> Ticket:
        """Count a request in (a stop too: `track` False keeps it out of the stop registry)."""
        if self.in_flight >= self.max_in_flight:
            raise Refused(
                f"{OVERLOADED}: {self.in_flight} requests in flight (limit {self.max_in_flight}); retry later",
                503,
                "UNAVAILABLE",
            )
        if self.per_client[client] >= self.max_per_client:
            raise Refused(
                f"{OVERLOADED}: this client has {self.per_client[client]} requests in flight "
                f"(limit {self.max_per_client} per client); retry later",
                429,
                "UNAVAILABLE",
            )
        ticket = Ticket(client, client_id, f"{client}.{next(self._sequence)}", model)
        self.in_flight += 1
        self.per_client[client] += 1
        if track:
            self.running.setdefault((client, client_id), []).append(ticket)
        return ticket

    def release(self, ticket: Ticket) -> None:
        self.in_flight -= 1
        self.per_client[ticket.client] -= 1
        if self.per_client[ticket.client] <= 0:
            del self.per_client[ticket.client]
        key = (ticket.client, ticket.client_id)
        tickets = self.running.get(key)
        if tickets is not None and ticket in tickets:
            tickets.remove(ticket)
            if not tickets:
                del self.running[key]

    def to_stop(self, client: str, client_id: str) -> list[Ticket]:
        """The running requests a `stop` with `client_id` from `client` ends: its own, with exactly that id."""
        return list(self.running.get((client, client_id), ()))
