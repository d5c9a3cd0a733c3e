"""gRPC transport: request building, one ``ModelStreamInfer`` call per generation, error mapping.

The served models are decoupled, so Triton refuses unary inference: every generation, even one
that answers once, opens its own bidirectional stream on a channel shared per endpoint.

A generation left early is stopped in band where the model offers it (the ``mentallama`` model's
``stop`` input, found in the model's metadata): a request with ``stop`` and the same request id ends it,
the server sends the stream's last response and closes it normally. Cancelling the gRPC call instead,
the fallback (e.g. for ``ensemble``), is a pattern Triton 2.51 mishandles under load: it aborted after a
few hundred cancelled streams per minute (docs/RELIABILITY.md).

Requests are encoded straight into Triton's protobuf (``raw_input_contents``) with the generated
stubs that ship with ``tritonclient``; no numpy round trip. Every gRPC failure goes through
:func:`error_from_status`, the single place where status codes become SDK exceptions.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mentallama_interface import SERVED_INPUTS, STOP_INPUT, wire_types

from ._constants import ENDPOINT_COOLDOWN
from ._exceptions import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    InvalidRequestError,
    MentaLLaMAError,
    ServerError,
    ServerOverloadedError,
)

__all__ = [
    "INPUT_TYPES",
    "AsyncTransport",
    "EndpointPool",
    "StreamEvent",
    "SyncTransport",
    "TLSConfig",
    "build_request",
    "error_from_rpc",
    "error_from_status",
    "normalize_endpoint",
    "parse_stream_response",
]

# Input -> (Triton datatype, struct format of one element; "" for BYTES): the inputs the SDK may send, from
# the one declaration of the interface (the served ensemble inputs and the front model's `stop`).
INPUT_TYPES: dict[str, tuple[str, str]] = {
    name: (wire, fmt) for name, (wire, fmt, _) in wire_types((*SERVED_INPUTS, STOP_INPUT)).items()
}

# Triton 2.51 reports a stream's errors in-band (``error_message``, no code); the statuses are guessed
# from the messages (``_in_band_status``). Triton's opt-in header ``triton_grpc_error: true`` would end
# the stream with the real status instead, but 2.51 mishandles such a stream once a model refused the
# request ("HandleCancellation called even when the context was not cancelled") and segfaults after a
# few of them when the client's connection closes (a short-lived client sending bad requests), so the
# SDK never sends it. See docs/RELIABILITY.md.
_MAX_MESSAGE_CHARS = 500
_HEALTH_TIMEOUT = 5.0
# UNAVAILABLE from grpc itself (nothing answered) vs. from a reachable Triton (queue full, model
# not ready, the engine's "server overloaded" refusal): only the first marks the endpoint down; both
# are retried.
_SERVER_UNAVAILABLE_HINTS = ("queue", "not ready", "unknown model", "exceeds", "unavailable: model", "overloaded")
# Triton's refusal of a restricted protocol without its key ("This API is restricted, expecting header ...").
_RESTRICTED_HINT = "restricted"
# grpc's words when the port answers HTTP/1.1 (Triton's or the front door's HTTP port, the metrics page).
_HTTP1_SIGN = "http1.x server"
HTTP_PORT_HINT = ("this port answers HTTP/1.1, not gRPC: point the client at the server's gRPC port (mentallama-serve: "
                  "gRPC 8001, HTTP 8000, metrics 8002 by default; it prints its ports on start)")  # fmt: skip


def wrong_protocol_hint(details: str) -> str | None:
    """:data:`HTTP_PORT_HINT` when gRPC's error ``details`` say the port speaks HTTP/1.1, else ``None``."""
    return HTTP_PORT_HINT if _HTTP1_SIGN in details.lower() else None
# Seconds a stopped generation may take to send its last response before its call is cancelled instead.
_STOP_GRACE = 5.0


# --- endpoints ------------------------------------------------------------------------------------


def normalize_endpoint(endpoint: str) -> str:
    """``host:port`` of an endpoint written as ``host:port`` or ``grpc://host:port``."""
    value = endpoint.strip()
    if value.startswith("grpc://"):
        value = value[len("grpc://") :]
    if "://" in value:
        raise ValueError(f"endpoint {endpoint!r}: give the gRPC endpoint as host:port (no http:// URL)")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    return value


class EndpointPool:
    """Round robin over endpoints; an endpoint that could not be reached is skipped for a while.

    Thread-safe and never awaits, so the sync and async clients share it.
    """

    def __init__(self, endpoints: Sequence[str], cooldown: float = ENDPOINT_COOLDOWN) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = tuple(endpoints)
        self.cooldown = cooldown
        self._down_until: dict[str, float] = {}
        self._next = 0
        self._lock = threading.Lock()

    def pick(self, exclude: Sequence[str] = ()) -> str:
        """Next endpoint in turn: an up one not in ``exclude`` if any, else any not excluded, else any."""
        now = time.monotonic()
        with self._lock:
            n = len(self.endpoints)
            order = [self.endpoints[(self._next + i) % n] for i in range(n)]
            self._next = (self._next + 1) % n
            candidates = [e for e in order if e not in exclude] or order
            for endpoint in candidates:
                if self._down_until.get(endpoint, 0.0) <= now:
                    return endpoint
            return candidates[0]

    def is_up(self, endpoint: str) -> bool:
        with self._lock:
            return self._down_until.get(endpoint, 0.0) <= time.monotonic()

    def mark_down(self, endpoint: str) -> None:
        with self._lock:
            self._down_until[endpoint] = time.monotonic() + self.cooldown

    def mark_up(self, endpoint: str) -> None:
        with self._lock:
            self._down_until.pop(endpoint, None)


# --- TLS ------------------------------------------------------------------------------------------


def _read_pem(value: bytes | str | Path | None, what: str) -> bytes | None:
    """PEM bytes as given, or read from a path (a ``str`` is a path unless it holds a PEM block)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str) and "-----BEGIN" in value:
        return value.encode()
    path = Path(value).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} from {str(path)!r}: {exc.strerror}") from None


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings of a channel: server verification, and a client certificate for mutual TLS."""

    root_certificates: bytes | None = None
    """PEM CA bundle that signs the server's certificate; ``None`` uses the system roots."""
    certificate_chain: bytes | None = None
    """PEM client certificate (mutual TLS)."""
    private_key: bytes | None = None
    """PEM key of the client certificate."""
    server_name: str | None = None
    """Name to verify the server certificate against when it differs from the endpoint's host."""

    @classmethod
    def from_options(
        cls,
        root_certificates: bytes | str | Path | None,
        certificate_chain: bytes | str | Path | None,
        private_key: bytes | str | Path | None,
        server_name: str | None,
    ) -> TLSConfig:
        chain = _read_pem(certificate_chain, "certificate_chain")
        key = _read_pem(private_key, "private_key")
        if (chain is None) != (key is None):
            raise ValueError("mutual TLS needs both certificate_chain and private_key")
        return cls(_read_pem(root_certificates, "root_certificates"), chain, key, server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


# --- requests and responses -----------------------------------------------------------------------


def _encode_bytes(items: Sequence[str | bytes]) -> bytes:
    parts = []
    for item in items:
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def build_request(model: str, request_id: str, inputs: Mapping[str, Any]) -> service_pb2.ModelInferRequest:
    """Triton request for ``inputs`` (ensemble input name -> value; ``None`` values are left out).

    Scalars go as shape ``[1, 1]`` (the models batch), word lists as ``[1, N]``. Values that do
    not fit their type raise :class:`InvalidRequestError` naming the input.
    """
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    for name, value in inputs.items():
        if value is None:
            continue
        if name not in INPUT_TYPES:
            raise InvalidRequestError(f"unknown input {name!r}", request_id=request_id)
        datatype, fmt = INPUT_TYPES[name]
        try:
            if datatype == "BYTES":
                items = [value] if isinstance(value, str | bytes) else list(value)
                if name != "text_input" and not items:
                    continue  # an empty word list means "none": sending [1, 0] would be refused
                raw, shape = _encode_bytes(items), [1, len(items)]
            else:
                raw, shape = struct.pack(fmt, value), [1, 1]
        except (struct.error, TypeError, UnicodeEncodeError) as exc:
            raise InvalidRequestError(f"{name}: {exc}", request_id=request_id) from None
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.extend(shape)
        request.raw_input_contents.append(raw)
    return request


@dataclass(frozen=True)
class StreamEvent:
    """One response of a generation stream, decoded."""

    text: str
    """Text this response adds (``""`` for a bare final response)."""
    final: bool
    """True for the request's last response (``triton_final_response``)."""
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    texts: tuple[str, ...] = ()
    """Every string of ``text_output`` when it holds several (the beams of a beam search, best first)."""
    sequence_index: int = 0
    """Which sequence the response belongs to, when a prompt gets several (``n``)."""


def _decode_strings(raw: bytes) -> list[str]:
    parts, offset = [], 0
    while offset + 4 <= len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        parts.append(raw[offset : offset + size].decode("utf-8", "replace"))
        offset += size
    return parts


def _first_int(raw: bytes | None, contents: Any) -> int | None:
    if raw:
        return struct.unpack_from("<i", raw)[0]
    return int(contents.int_contents[0]) if contents.int_contents else None


def parse_stream_response(message: service_pb2.ModelStreamInferResponse, request_id: str) -> StreamEvent:
    """Decode one stream response; an in-band error raises the mapped :class:`MentaLLaMAError`."""
    if message.error_message:
        raise error_from_status(None, message.error_message, request_id)
    response = message.infer_response
    final_param = response.parameters.get("triton_final_response")
    final = bool(final_param.bool_param) if final_param is not None else False
    texts: list[str] = []
    n_in = n_out = None
    sequence_index = 0
    raws = response.raw_output_contents
    for i, output in enumerate(response.outputs):
        raw = raws[i] if i < len(raws) else None
        if output.name == "text_output":
            if raw is not None:
                texts = _decode_strings(raw)
            else:
                texts = [b.decode("utf-8", "replace") for b in output.contents.bytes_contents]
        elif output.name == "num_input_tokens":
            n_in = _first_int(raw, output.contents)
        elif output.name == "num_output_tokens":
            n_out = _first_int(raw, output.contents)
        elif output.name == "sequence_index":
            sequence_index = _first_int(raw, output.contents) or 0
    return StreamEvent(texts[0] if texts else "", final, n_in, n_out, tuple(texts) if len(texts) > 1 else (),
                       sequence_index)  # fmt: skip


# --- errors (the one place where gRPC statuses become SDK exceptions) ------------------------------

_STATUS_ERRORS: dict[grpc.StatusCode, type[MentaLLaMAError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequestError,
    grpc.StatusCode.ALREADY_EXISTS: InvalidRequestError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.DEADLINE_EXCEEDED: APITimeoutError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ServerOverloadedError,
    grpc.StatusCode.UNAVAILABLE: APIConnectionError,
}


def _in_band_status(message: str) -> grpc.StatusCode:
    """Best guess of the status of an in-band stream error (Triton sends no code with it)."""
    lowered = message.lower()
    if "not healthy" in lowered:  # a model's Python process died: this endpoint cannot serve
        return grpc.StatusCode.UNAVAILABLE
    if "unknown model" in lowered or "not found" in lowered:
        return grpc.StatusCode.NOT_FOUND
    if "queue" in lowered or "exceeds maximum" in lowered or "overloaded" in lowered:
        return grpc.StatusCode.UNAVAILABLE
    if lowered.startswith("generation failed") or "internal" in lowered:
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.INVALID_ARGUMENT


def error_from_status(
    status: grpc.StatusCode | None, details: str, request_id: str | None
) -> MentaLLaMAError:
    """The SDK exception for a gRPC ``status`` (``None``: an in-band error message, status guessed)."""
    message = " ".join((details or "").split())[:_MAX_MESSAGE_CHARS] or "no details"
    if status is None:
        status = _in_band_status(message)
    if status is grpc.StatusCode.UNAVAILABLE and wrong_protocol_hint(details or ""):
        return APIConnectionError(f"{HTTP_PORT_HINT} ({message})", request_id=request_id, status=status)
    if status is grpc.StatusCode.UNAVAILABLE and _RESTRICTED_HINT in message.lower():
        # Triton answers a missing or wrong key of a restricted API with UNAVAILABLE: retrying cannot help.
        return AuthenticationError(message, request_id=request_id, status=grpc.StatusCode.PERMISSION_DENIED)
    cls = _STATUS_ERRORS.get(status, ServerError)
    if status is grpc.StatusCode.UNAVAILABLE and any(h in message.lower() for h in _SERVER_UNAVAILABLE_HINTS):
        cls = ServerOverloadedError
    return cls(message, request_id=request_id, status=status)


def error_from_rpc(exc: grpc.RpcError, request_id: str | None) -> MentaLLaMAError:
    """The SDK exception for a failed gRPC call (sync or asyncio)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_from_status(code, details or "", request_id)


def is_endpoint_failure(error: MentaLLaMAError) -> bool:
    """True when the endpoint itself could not be used (skip it for a while), not just this request."""
    return type(error) is APIConnectionError and error.status is grpc.StatusCode.UNAVAILABLE


# --- channels and calls ---------------------------------------------------------------------------


def _channel_options(tls: TLSConfig | None) -> list[tuple[str, Any]]:
    # Fail fast and come back quickly: a dead endpoint is skipped by the pool, not waited on.
    options: list[tuple[str, Any]] = [
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    return options + (tls.options() if tls else [])


def _metadata(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    # gRPC metadata keys must be lower case.
    return tuple((k.lower(), str(v)) for k, v in headers.items())


def _health_checks(stub: service_pb2_grpc.GRPCInferenceServiceStub, model: str) -> list[tuple[Any, Any, str]]:
    """(rpc, request, answer field) of a health probe: server live, server ready, model ready."""
    return [
        (stub.ServerLive, service_pb2.ServerLiveRequest(), "live"),
        (stub.ServerReady, service_pb2.ServerReadyRequest(), "ready"),
        (stub.ModelReady, service_pb2.ModelReadyRequest(name=model), "ready"),
    ]


def stop_request(request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferRequest:
    """The request that stops ``request`` in band (same model and id, ``stop`` true; the text is not read)."""
    return build_request(request.model_name, request.id, {"text_input": "", "max_tokens": 1, "stop": True})


def _offers_stop(metadata: service_pb2.ModelMetadataResponse) -> bool:
    return any(tensor.name == "stop" for tensor in metadata.inputs)


def _drain(call: Any) -> None:
    """Wait for the server to close a stream whose final response arrived.

    Cancelling instead would be cheaper, but tritonserver 2.51 logs an internal error for every
    stream cancelled after completion and has crashed under that pattern.
    """
    try:
        for _ in call:
            pass
    except grpc.RpcError:
        pass  # the answer is complete; a late status changes nothing


async def _drain_async(call: Any, reading: asyncio.Future | None = None) -> None:
    """See :func:`_drain`; ``reading`` is a read of ``call`` still in flight, awaited first."""
    try:
        if reading is not None and await reading is grpc.aio.EOF:
            return
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.RpcError:
        pass


class _TransportBase:
    def __init__(self, tls: TLSConfig | None) -> None:
        self.tls = tls
        self._channels: dict[str, Any] = {}
        self._stubs: dict[str, service_pb2_grpc.GRPCInferenceServiceStub] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._offers_stop: dict[tuple[str, str], bool] = {}  # (endpoint, model) -> the model has a `stop` input

    def _new_channel(self, target: str) -> Any:
        raise NotImplementedError

    def stub(self, endpoint: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
        stub = self._stubs.get(endpoint)
        if stub is not None:
            return stub
        with self._lock:
            if self._closed:
                raise APIConnectionError("the client is closed")
            if endpoint not in self._stubs:
                channel = self._new_channel(endpoint)
                self._channels[endpoint] = channel
                self._stubs[endpoint] = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            return self._stubs[endpoint]

    def _take_channels(self) -> list[Any]:
        with self._lock:
            self._closed = True
            channels = list(self._channels.values())
            self._channels.clear()
            self._stubs.clear()
        return channels


class SyncTransport(_TransportBase):
    """Blocking gRPC: one channel per endpoint, one ``ModelStreamInfer`` call per generation."""

    def _new_channel(self, target: str) -> grpc.Channel:
        options = _channel_options(self.tls)
        if self.tls is None:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, self.tls.credentials(), options=options)

    def stream(
        self,
        endpoint: str,
        request: service_pb2.ModelInferRequest,
        *,
        timeout: float | None,
        headers: Mapping[str, str],
    ) -> Iterator[StreamEvent]:
        """Events of one generation up to its final response; closing the iterator early stops the generation."""
        stub = self.stub(endpoint)
        call = stub.ModelStreamInfer(iter((request,)), timeout=timeout, metadata=_metadata(headers))
        final_seen = ended = False
        try:
            for message in call:
                event = parse_stream_response(message, request.id)
                final_seen = event.final
                yield event
                if final_seen:
                    break
            else:
                ended = True
                raise APIConnectionError("stream closed before the final response", request_id=request.id)
        except grpc.RpcError as exc:
            ended = True
            raise error_from_rpc(exc, request.id) from None
        finally:
            if final_seen:
                _drain(call)
            elif not ended:
                self._stop(endpoint, request, call, headers)

    def _stop(
        self, endpoint: str, request: service_pb2.ModelInferRequest, call: Any, headers: Mapping[str, str]
    ) -> None:
        """End a generation left early: in band where the model offers it, else by cancelling the call."""
        if not self._stop_in_band(endpoint, request, headers):
            call.cancel()
            return
        timer = threading.Timer(_STOP_GRACE, call.cancel)  # a server that does not end it in time
        timer.daemon = True
        timer.start()
        _drain(call)
        timer.cancel()

    def _stop_in_band(self, endpoint: str, request: service_pb2.ModelInferRequest, headers: Mapping[str, str]) -> bool:
        stub, md = self.stub(endpoint), _metadata(headers)
        key = (endpoint, request.model_name)
        try:
            if key not in self._offers_stop:
                metadata = stub.ModelMetadata(
                    service_pb2.ModelMetadataRequest(name=request.model_name), timeout=_STOP_GRACE, metadata=md
                )
                self._offers_stop[key] = _offers_stop(metadata)
            if not self._offers_stop[key]:
                return False
            stop = stub.ModelStreamInfer(iter((stop_request(request),)), timeout=_STOP_GRACE, metadata=md)
            errors = [message.error_message for message in stop]  # read to the end: no stream left to cancel
            return not any(errors)
        except (grpc.RpcError, MentaLLaMAError):
            return False

    def health(self, endpoint: str, model: str, *, timeout: float, headers: Mapping[str, str]) -> bool:
        md, t = _metadata(headers), min(timeout, _HEALTH_TIMEOUT)
        try:
            return all(getattr(rpc(request, timeout=t, metadata=md), field)
                       for rpc, request, field in _health_checks(self.stub(endpoint), model))  # fmt: skip
        except grpc.RpcError:
            return False

    def close(self) -> None:
        for channel in self._take_channels():
            channel.close()


class AsyncTransport(_TransportBase):
    """asyncio gRPC; channels belong to the event loop that created them.

    A client used from a new event loop (e.g. a second ``asyncio.run``) gets new channels instead
    of failing on the old loop's; the old ones died with their loop.
    """

    _loop: asyncio.AbstractEventLoop | None = None

    def stub(self, endpoint: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            with self._lock:
                if loop is not self._loop:
                    self._channels.clear()
                    self._stubs.clear()
                    self._loop = loop
        return super().stub(endpoint)

    def _new_channel(self, target: str) -> grpc.aio.Channel:
        options = _channel_options(self.tls)
        if self.tls is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, self.tls.credentials(), options=options)

    async def stream(
        self,
        endpoint: str,
        request: service_pb2.ModelInferRequest,
        *,
        timeout: float | None,
        headers: Mapping[str, str],
    ) -> AsyncIterator[StreamEvent]:
        """Events of one generation up to its final response; closing the iterator early stops the generation."""
        # A request iterable (not call.write) so that a failed connection surfaces in read() as a status.
        stub = self.stub(endpoint)
        call = stub.ModelStreamInfer(iter((request,)), timeout=timeout, metadata=_metadata(headers))
        final_seen = ended = False
        reading: asyncio.Future | None = None
        try:
            while True:
                # Shielded: grpc.aio cancels the call when a read is cancelled, and a cancelled task should
                # stop the generation in band instead (see _stop).
                reading = asyncio.ensure_future(call.read())
                message = await asyncio.shield(reading)
                reading = None
                if message is grpc.aio.EOF:
                    ended = True
                    raise APIConnectionError("stream closed before the final response", request_id=request.id)
                event = parse_stream_response(message, request.id)
                final_seen = event.final
                yield event
                if final_seen:
                    break
        except grpc.RpcError as exc:
            ended = True
            raise error_from_rpc(exc, request.id) from None
        finally:
            if final_seen:
                await _drain_async(call)
            elif not ended:
                await self._stop(endpoint, request, call, headers, reading)

    async def _stop(
        self,
        endpoint: str,
        request: service_pb2.ModelInferRequest,
        call: Any,
        headers: Mapping[str, str],
        reading: asyncio.Future | None,
    ) -> None:
        """End a generation left early (or whose task was cancelled): in band where the model offers it, else
        by cancelling the call; also when the server is slow to end it or the task is cancelled again."""
        stopped = False
        try:
            if await self._stop_in_band(endpoint, request, headers):
                await asyncio.wait_for(_drain_async(call, reading), _STOP_GRACE)
                stopped = True
        except asyncio.TimeoutError:
            pass
        finally:
            if not stopped:
                call.cancel()
                if reading is not None:
                    reading.cancel()

    async def _stop_in_band(
        self, endpoint: str, request: service_pb2.ModelInferRequest, headers: Mapping[str, str]
    ) -> bool:
        stub, md = self.stub(endpoint), _metadata(headers)
        key = (endpoint, request.model_name)
        try:
            if key not in self._offers_stop:
                metadata = await stub.ModelMetadata(
                    service_pb2.ModelMetadataRequest(name=request.model_name), timeout=_STOP_GRACE, metadata=md
                )
                self._offers_stop[key] = _offers_stop(metadata)
            if not self._offers_stop[key]:
                return False
            stop = stub.ModelStreamInfer(iter((stop_request(request),)), timeout=_STOP_GRACE, metadata=md)
            ok = True
            while (message := await stop.read()) is not grpc.aio.EOF:
                ok = ok and not message.error_message
            return ok
        except (grpc.RpcError, MentaLLaMAError):
            return False

    async def health(self, endpoint: str, model: str, *, timeout: float, headers: Mapping[str, str]) -> bool:
        md, t = _metadata(headers), min(timeout, _HEALTH_TIMEOUT)
        try:
            for rpc, request, field in _health_checks(self.stub(endpoint), model):
                if not getattr(await rpc(request, timeout=t, metadata=md), field):
                    return False
            return True
        except grpc.RpcError:
            return False

    async def close(self) -> None:
        for channel in self._take_channels():
            await channel.close()
