"""Test doubles of the SDK's transport: what a client is given with ``transport=`` in tests that need no server.

:class:`ScriptedTransport` stands in for ``SyncTransport`` (blocking gRPC) and
:class:`AsyncScriptedTransport` for ``AsyncTransport`` (``grpc.aio``): the layer that carries one
request to one endpoint. They record every request the client sends, decoded (model name, request
id, inputs as Python values, endpoint, timeout, headers), and answer with a script: the
:class:`StreamEvent` objects to yield, :class:`Fail` steps that raise the error the real transport
raises for that gRPC status (through the SDK's own ``error_from_status``), and :class:`Pause` steps.
A pause that runs past the call's timeout ends it with DEADLINE_EXCEEDED, as gRPC would.

Each request takes the next script given to the constructor, then ``default`` (a script, or a
function of the :class:`SentRequest` that returns one, e.g. to echo the prompt).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from mentallama._transport import StreamEvent, error_from_status
from tests.support.wire import decode_inputs

__all__ = ["UNREACHABLE", "AsyncScriptedTransport", "Fail", "Pause", "ScriptedTransport", "SentRequest", "answer"]


@dataclass(frozen=True)
class Fail:
    """Script step: the call fails with this gRPC status (``None``: an in-band error, as Triton sends a
    model's refusal) and details, mapped to the SDK error as the real transport maps it."""

    status: grpc.StatusCode | None
    details: str = "scripted failure"


@dataclass(frozen=True)
class Pause:
    """Script step: wait this long before the next step (the server is generating)."""

    seconds: float


Step = StreamEvent | Fail | Pause
Script = Sequence[Step]


@dataclass(frozen=True)
class SentRequest:
    """One request as the transport received it."""

    endpoint: str
    model: str
    id: str
    inputs: dict[str, Any]
    timeout: float | None
    headers: dict[str, str]

    @property
    def prompt(self) -> str:
        return self.inputs["text_input"]


def answer(*chunks: str, num_input_tokens: int = 3) -> list[StreamEvent]:
    """A streamed answer as the ``mentallama`` ensemble sends it: the chunks, then an empty final
    response with the token counts (one token per chunk)."""
    events = [StreamEvent(chunk, final=False) for chunk in chunks]
    return [*events, StreamEvent("", final=True, num_input_tokens=num_input_tokens, num_output_tokens=len(chunks))]


UNREACHABLE = Fail(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
"""What the real transport raises for an endpoint where nothing listens."""


Responder = Script | Callable[[SentRequest], Script]
Steps = Generator[StreamEvent | float, None, None]


class _ScriptedBase:
    """What both doubles share: the scripts, and what the client did with the transport."""

    def __init__(
        self, *scripts: Responder, default: Responder = (), healthy: bool | Sequence[str] = True
    ) -> None:
        """``healthy``: what ``health()`` answers, for every endpoint or as the endpoints that are up."""
        self.scripts: deque[Responder] = deque(scripts)
        self.default = default or answer("ok")
        self.healthy = healthy
        self.requests: list[SentRequest] = []
        self.health_checks: list[str] = []
        self.left_early: list[str] = []
        """Ids of requests whose stream the client closed before the script ended (a cancellation)."""
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False
        self._lock = threading.Lock()

    @property
    def sent_ids(self) -> list[str]:
        return [r.id for r in self.requests]

    def _begin(self, endpoint: str, request: service_pb2.ModelInferRequest, timeout: float | None,
               headers: Mapping[str, str]) -> tuple[SentRequest, Steps]:  # fmt: skip
        sent = SentRequest(endpoint, request.model_name, request.id, decode_inputs(request), timeout, dict(headers))
        with self._lock:
            if self.closed:
                raise AssertionError("the client used its transport after closing it")
            self.requests.append(sent)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            script = self.scripts.popleft() if self.scripts else self.default
        return sent, self._play(sent, script(sent) if callable(script) else script)

    @staticmethod
    def _play(sent: SentRequest, script: Script) -> Steps:
        """The script as events to hand out and seconds to sleep (the caller sleeps, then resumes it)."""
        started = time.monotonic()
        for step in script:
            if isinstance(step, Fail):
                raise error_from_status(step.status, step.details, sent.id)
            if not isinstance(step, Pause):
                yield step
                continue
            left = None if sent.timeout is None else sent.timeout - (time.monotonic() - started)
            if left is None or step.seconds < left:
                yield float(step.seconds)
                continue
            yield max(0.0, left)
            raise error_from_status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", sent.id)

    def _end(self, sent: SentRequest, steps: Steps) -> None:
        with self._lock:
            self.in_flight -= 1
            if inspect.getgeneratorstate(steps) != inspect.GEN_CLOSED:
                self.left_early.append(sent.id)
        steps.close()

    def _health(self, endpoint: str) -> bool:
        self.health_checks.append(endpoint)
        return self.healthy if isinstance(self.healthy, bool) else endpoint in self.healthy


class ScriptedTransport(_ScriptedBase):
    """Test double of ``SyncTransport``: records requests and answers with scripts (see the module)."""

    def stream(self, endpoint: str, request: service_pb2.ModelInferRequest, *, timeout: float | None,
               headers: Mapping[str, str]) -> Iterator[StreamEvent]:  # fmt: skip
        sent, steps = self._begin(endpoint, request, timeout, headers)
        try:
            for step in steps:
                if isinstance(step, float):
                    time.sleep(step)
                else:
                    yield step
        finally:
            self._end(sent, steps)

    def health(self, endpoint: str, model: str, *, timeout: float, headers: Mapping[str, str]) -> bool:
        return self._health(endpoint)

    def close(self) -> None:
        self.closed = True


class AsyncScriptedTransport(_ScriptedBase):
    """Test double of ``AsyncTransport``: records requests and answers with scripts (see the module)."""

    async def stream(self, endpoint: str, request: service_pb2.ModelInferRequest, *, timeout: float | None,
                     headers: Mapping[str, str]) -> AsyncIterator[StreamEvent]:  # fmt: skip
        sent, steps = self._begin(endpoint, request, timeout, headers)
        try:
            for step in steps:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                else:
                    yield step
        finally:
            self._end(sent, steps)

    async def health(self, endpoint: str, model: str, *, timeout: float, headers: Mapping[str, str]) -> bool:
        return self._health(endpoint)

    async def close(self) -> None:
        self.closed = True
