"""What the clients need from a transport: the seam behind ``transport=``.

The clients build every request themselves (``build_request``) and decide retries and failover; a
transport only carries one request to one endpoint and turns the answers into :class:`StreamEvent`
objects, raising the mapped :class:`MentaLLaMAError` on failure. :class:`SyncTransport` and
:class:`AsyncTransport` (gRPC) are the implementations the clients build when none is given; tests
pass their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from typing import Protocol, TypeVar, runtime_checkable

from tritonclient.grpc import service_pb2

from ._transport import StreamEvent

__all__ = ["AsyncTransportProtocol", "TransportProtocol", "TransportT"]


class _ClosableIterator(Protocol):
    """An iterator of events that can be left early: ``close()`` cancels the request."""

    def __iter__(self) -> Iterator[StreamEvent]: ...

    def __next__(self) -> StreamEvent: ...

    def close(self) -> None: ...


class _AsyncClosableIterator(Protocol):
    """See :class:`_ClosableIterator`; ``aclose()`` cancels the request."""

    def __aiter__(self) -> AsyncIterator[StreamEvent]: ...

    def __anext__(self) -> Awaitable[StreamEvent]: ...

    def aclose(self) -> Awaitable[None]: ...


@runtime_checkable
class TransportProtocol(Protocol):
    """Blocking transport of :class:`MentaLLaMAClient` (a generator function fits ``stream``)."""

    def stream(self, endpoint: str, request: service_pb2.ModelInferRequest, *, timeout: float | None,
               headers: Mapping[str, str]) -> _ClosableIterator:  # fmt: skip
        """Events of one request up to its final response; raises a :class:`MentaLLaMAError`, with the
        request's id, when the call fails. Nothing is sent before the first event is asked for."""
        ...

    def health(self, endpoint: str, model: str, *, timeout: float, headers: Mapping[str, str]) -> bool:
        """True when ``endpoint`` is live and ready and serves ``model``; never raises."""
        ...

    def close(self) -> None:
        """Release the connections; later calls may fail."""
        ...


@runtime_checkable
class AsyncTransportProtocol(Protocol):
    """asyncio transport of :class:`AsyncMentaLLaMAClient` (an async generator fits ``stream``)."""

    def stream(self, endpoint: str, request: service_pb2.ModelInferRequest, *, timeout: float | None,
               headers: Mapping[str, str]) -> _AsyncClosableIterator:  # fmt: skip
        """See :meth:`TransportProtocol.stream`; cancelling the task that reads it cancels the request."""
        ...

    async def health(self, endpoint: str, model: str, *, timeout: float, headers: Mapping[str, str]) -> bool:
        """See :meth:`TransportProtocol.health`."""
        ...

    async def close(self) -> None:
        """See :meth:`TransportProtocol.close`."""
        ...


TransportT = TypeVar("TransportT", TransportProtocol, AsyncTransportProtocol)
"""The transport type of a client class."""
