"""Request life cycle of the CPU engine step (the CPU profile's `tensorrt_llm` model), without Triton.

The model hands each request's tensors here with a `Channel` over its response sender. A request of N
prompts becomes N engine generations (`engine_step.parse_batch`); engine events become `Reply`s through a
`ResponseAssembler` each; the request's stream ends (the final flag) with its last prompt's last reply.
An error ends the whole request and stops its other prompts. `watch_once` stops generations whose client
went away; a `stop` request ends the running requests with its request id (TensorRT-LLM semantics).

Locks: a request's own lock, then `active_lock` or the channel's (the model's `pb_utils` lock) inside it;
never the other way round.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from mentallama_interface import ENGINE_ERROR_OUTPUT, ERRORS_IN_BAND
from mentallama_server.engine.types import GenerationRequest, TokenEvent
from mentallama_server.models.engine_step import ResponseAssembler, Utf8Boundary, parse_batch, parse_stop
from mentallama_server.models.preprocess import Limits, RequestError

Inputs = Mapping[str, "np.ndarray | None"]
ErrorCode = Literal["INTERNAL", "INVALID_ARG", "UNAVAILABLE"]


@dataclass(frozen=True)
class Reply:
    """One response to send: output tensors, an error (a `TritonError` code's name), or neither (a bare final
    flag). `final` ends the request's stream."""

    outputs: Mapping[str, np.ndarray] | None = None
    error: str | None = None
    code: ErrorCode = "INTERNAL"
    final: bool = False


class Channel(Protocol):
    """A request's response sender."""

    def send(self, reply: Reply) -> None: ...

    def is_cancelled(self) -> bool: ...


class Engine(Protocol):
    def submit(self, request: GenerationRequest, on_event: Callable[[TokenEvent], None]) -> None: ...

    def cancel(self, request_id: str) -> bool: ...


def asks_errors_in_band(parameters: str | None) -> bool:
    """The front model's request parameter (a JSON object): end a failure after output with an `error_message`
    response."""
    try:
        return json.loads(parameters or "{}").get(ERRORS_IN_BAND) is True
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        return False


class _Request:
    """One Triton request of N prompts (N generations) and its channel; `done` guards the channel, which must
    not be used after the final flag, sent with the last prompt's last reply."""

    def __init__(self, channel: Channel, prompts: int, errors_in_band: bool) -> None:
        self.channel = channel
        self.remaining = prompts
        self.done = False
        self.errors_in_band = errors_in_band
        self.sent_output = False
        self.lock = threading.Lock()


@dataclass(eq=False)
class _Active:
    """Per-generation state (one prompt of a request)."""

    request: _Request
    assembler: ResponseAssembler
    client_id: str


class CpuStep:
    """Submits requests to `engine` and sends their replies; holds at most `max_pending` generations at once
    (running + waiting), refusing more at once with UNAVAILABLE so clients back off or go to another replica
    instead of queueing without bound."""

    def __init__(self, engine: Engine, boundary: Utf8Boundary, limits: Limits, max_pending: int) -> None:
        self.engine = engine
        self.boundary = boundary
        self.limits = limits
        self.max_pending = max_pending
        self.active: dict[str, _Active] = {}
        self.active_lock = threading.Lock()

    def submit(self, inputs: Inputs, client_id: str, channel: Channel, errors_in_band: bool = False) -> None:
        """Start one request (or stop the ones named `client_id`, for a `stop` request); every refusal is a final
        error reply on `channel`."""
        try:
            if parse_stop(inputs):
                self.stop(client_id)
                channel.send(Reply(final=True))
                return
            steps = parse_batch(inputs, f"{client_id}#{uuid.uuid4().hex}", self.limits)
            with self.active_lock:
                pending = len(self.active)
            if pending + len(steps) > self.max_pending:
                message = f"server overloaded: {pending} requests in flight (limit {self.max_pending}); retry later"
                channel.send(Reply(error=message, code="UNAVAILABLE", final=True))
                return
            group = _Request(channel, len(steps), errors_in_band)
            states = [_Active(group, ResponseAssembler(step, self.boundary), client_id) for step in steps]
            with self.active_lock:
                for step, state in zip(steps, states, strict=True):
                    self.active[step.generation.request_id] = state
            for step, state in zip(steps, states, strict=True):
                self.engine.submit(step.generation, lambda event, s=state: self._on_event(s, event))
        except (RequestError, ValueError) as exc:  # the engine's refusals are ValueErrors naming the field
            with self.active_lock:
                mine = [k for k, v in self.active.items() if v.request.channel is channel]
                self.active = {k: v for k, v in self.active.items() if v.request.channel is not channel}
            for rid in mine:  # prompts of this request already submitted
                self.engine.cancel(rid)
            channel.send(Reply(error=str(exc), code="INVALID_ARG", final=True))

    def stop(self, client_id: str) -> None:
        """TensorRT-LLM semantics: a request with `stop` set ends the running request with the same id."""
        if not client_id:
            raise RequestError("a stop request needs the request id of the request to stop")
        with self.active_lock:
            targets = [rid for rid, s in self.active.items() if s.client_id == client_id]
        for rid in targets:
            self.engine.cancel(rid)

    def _on_event(self, state: _Active, event: TokenEvent) -> None:
        request = state.request
        siblings = []
        with request.lock:
            if request.done:
                return
            if event.error:
                # An error ends the whole request (the final flag): its other prompts are stopped.
                request.done = True
                with self.active_lock:
                    siblings = [rid for rid, s in self.active.items() if s.request is request]
                if request.errors_in_band and request.sent_output:
                    # Triton 2.51 loses an error response that follows a normal one on a BLS stream: the
                    # front model asked for the cause as an output of a final response instead.
                    message = np.array([[event.error.encode("utf-8")]], dtype=object)
                    request.channel.send(Reply(outputs={ENGINE_ERROR_OUTPUT: message}, final=True))
                else:
                    request.channel.send(Reply(error=event.error, final=True))
            else:
                tensors = state.assembler.add(list(event.new_token_ids), event.log_probs, event.finished)
                last = event.finished and request.remaining == 1
                if tensors is not None:
                    request.channel.send(Reply(outputs=tensors, final=last))
                    request.sent_output = True
                elif last:
                    request.channel.send(Reply(final=True))
                if event.finished:
                    request.remaining -= 1
                request.done = last
        for rid in siblings:
            if rid != event.request_id:
                self.engine.cancel(rid)
        if event.finished or event.error:
            with self.active_lock:
                for rid in siblings or [event.request_id]:
                    self.active.pop(rid, None)

    def watch_once(self) -> int:
        """Stop the generations whose client cancelled; returns how many generations are tracked."""
        with self.active_lock:
            items = list(self.active.items())
        for rid, state in items:
            with state.request.lock:
                cancelled = not state.request.done and state.request.channel.is_cancelled()
            if cancelled:
                self.engine.cancel(rid)
        return len(items)
