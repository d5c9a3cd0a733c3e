"""The front door's connection to tritonserver: a few long-lived `ModelStreamInfer` streams that many requests
share, and one more for stops. No upstream stream is ever cancelled (Triton 2.51's stream-cancellation race
aborts the server, docs/RELIABILITY.md): a client that leaves early gets its request stopped in band instead.

Every request goes up with `triton_enable_empty_final_response`, so each request's last response carries
`triton_final_response`; responses are handed to the request by their id (Triton sets it on errors too). Every
request also says `stops_in_band` (mentallama_interface.STOPS_IN_BAND): the models then never ask Triton whether
it was cancelled, which costs a round trip per running request every 50 ms and is never true here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mentallama_interface import STOPS_IN_BAND
from mentallama_server.front_door.admission import Admission, Refused, Ticket
from mentallama_server.front_door.config import STOP_TARGETS

log = logging.getLogger("mentallama.front_door")
EMPTY_FINAL = "triton_enable_empty_final_response"
FINAL = "triton_final_response"
STOP_TIMEOUT_S = 10.0
# Every refusal and failure that means "tritonserver cannot be reached" starts so: the gRPC front turns it into
# the RPC status UNAVAILABLE (what a client of a dead Triton sees, and retries elsewhere), HTTP into a 503.
UNREACHABLE = "the inference server is not reachable"


def is_unreachable(text: str) -> bool:
    return text.startswith(UNREACHABLE)

Delivery = tuple[service_pb2.ModelStreamInferResponse, bool]  # a response, and whether it is the last one


def is_final(message: service_pb2.ModelStreamInferResponse) -> bool:
    """An error ends its request (Triton's own refusals carry no final flag); otherwise the flag says."""
    if message.error_message:
        return True
    flag = message.infer_response.parameters.get(FINAL)
    return flag is not None and flag.bool_param


Lost = Callable[[list[tuple[str, str]]], None]  # told the (model, upstream id) of requests a closed stream held


class _Stream:
    """One upstream stream: requests in through a queue, responses out to each request's own queue."""

    def __init__(self, stub: service_pb2_grpc.GRPCInferenceServiceStub, name: str, on_lost: Lost | None = None) -> None:
        self.name = name
        self.closed = False
        self._on_lost = on_lost
        self._outbox: asyncio.Queue[service_pb2.ModelInferRequest | None] = asyncio.Queue()
        self._waiting: dict[str, tuple[str, asyncio.Queue[Delivery]]] = {}  # upstream id: (model, responses)
        self._call = stub.ModelStreamInfer(self._requests())
        self._reader = asyncio.create_task(self._read(), name=f"upstream-{name}")

    def __len__(self) -> int:
        return len(self._waiting)

    async def _requests(self) -> AsyncIterator[service_pb2.ModelInferRequest]:
        while (request := await self._outbox.get()) is not None:
            yield request

    def submit(self, request: service_pb2.ModelInferRequest) -> asyncio.Queue[Delivery]:
        if self.closed:
            raise Refused(f"{UNREACHABLE}; retry later", 503, "UNAVAILABLE")
        request.parameters[EMPTY_FINAL].bool_param = True
        request.parameters[STOPS_IN_BAND].bool_param = True
        queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._waiting[request.id] = (request.model_name, queue)
        self._outbox.put_nowait(request)
        return queue

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    async def _read(self) -> None:
        reason, lost = "its stream ended", self._on_lost
        try:
            async for message in self._call:
                waiting = self._waiting.get(message.infer_response.id)
                if waiting is None:  # a request whose client was told already (never expected)
                    log.warning("upstream %s: a response for no waiting request", self.name)
                    continue
                final = is_final(message)
                if final:
                    self.forget(message.infer_response.id)
                waiting[1].put_nowait((message, final))
        except grpc.aio.AioRpcError as exc:
            reason = f"it closed the stream ({exc.code().name})"
        except asyncio.CancelledError:
            reason, lost = "the front door is stopping", None
        finally:
            self.closed = True
            for request_id, (_, queue) in self._waiting.items():
                failure = service_pb2.ModelStreamInferResponse(error_message=f"{UNREACHABLE}: {reason}; retry later")
                failure.infer_response.id = request_id
                queue.put_nowait((failure, True))
            # A live tritonserver whose stream broke goes on generating what it held (the models never ask
            # Triton whether a request was cancelled): those requests are stopped in band, on a new stream.
            if lost is not None and self._waiting:
                lost([(model, request_id) for request_id, (model, _) in self._waiting.items()])
            self._waiting.clear()

    async def close(self) -> None:
        self._outbox.put_nowait(None)  # half-close: Triton finishes what is in flight, then ends the stream
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._reader.cancel()


def stop_request(model: str, upstream_id: str) -> service_pb2.ModelInferRequest:
    """The in-band stop of `upstream_id`: to the front model itself, or to the ensemble's engine step."""
    target = STOP_TARGETS[model]
    if target == "mentallama":
        tensors = {"text_input": np.array([[b""]], dtype=object), "max_tokens": np.ones((1, 1), np.int32)}
    else:
        tensors = {
            "input_ids": np.zeros((1, 1), np.int32),
            "input_lengths": np.ones((1, 1), np.int32),
            "request_output_len": np.ones((1, 1), np.int32),
        }
    tensors["stop"] = np.ones((1, 1), bool)
    request = service_pb2.ModelInferRequest(model_name=target, id=upstream_id)
    for name, value in tensors.items():
        tensor = request.inputs.add(name=name, datatype=_DATATYPES[value.dtype.kind], shape=value.shape)
        if value.dtype == object:
            tensor.contents.bytes_contents.extend(value.reshape(-1).tolist())
        elif value.dtype == bool:
            tensor.contents.bool_contents.extend(value.reshape(-1).tolist())
        else:
            tensor.contents.int_contents.extend(value.reshape(-1).tolist())
    return request


_DATATYPES = {"O": "BYTES", "b": "BOOL", "i": "INT32"}


class UpstreamPool:
    def __init__(self, target: str, streams: int, max_message_bytes: int) -> None:
        self.channel = grpc.aio.insecure_channel(
            target,
            # No keepalive pings: tritonserver is on this host (its death closes the connection), and it answers
            # pings more often than every 5 minutes on idle streams with GOAWAY "too_many_pings", which broke
            # every open stream after ~2.5 minutes without traffic.
            options=[
                ("grpc.max_send_message_length", max_message_bytes + 4096),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self._size = max(1, streams)
        self._streams: list[_Stream | None] = [None] * self._size
        self._stops: _Stream | None = None
        self._turn = itertools.count()
        self.stopping: set[asyncio.Task] = set()

    def _open(self, index: int) -> _Stream:
        stream = self._streams[index]
        if stream is None or stream.closed:  # Triton restarted or refused the stream: a new one
            stream = self._streams[index] = _Stream(self.stub, str(index), self._stop_lost)
        return stream

    def submit(self, request: service_pb2.ModelInferRequest) -> asyncio.Queue[Delivery]:
        """Send a request upstream; its responses arrive on the returned queue, the last one flagged."""
        return self._open(next(self._turn) % self._size).submit(request)

    def stop_later(self, ticket: Ticket) -> None:
        """Stop a running request in band, without waiting (the client that owned it may be gone)."""
        self._stop_later(ticket.model, ticket.upstream_id)

    def _stop_later(self, model: str, upstream_id: str) -> None:
        task = asyncio.create_task(self._stop(model, upstream_id))
        self.stopping.add(task)
        task.add_done_callback(self.stopping.discard)

    def _stop_lost(self, requests: list[tuple[str, str]]) -> None:
        log.warning("an upstream stream broke with %d requests on it; stopping them in band", len(requests))
        for model, upstream_id in requests:
            self._stop_later(model, upstream_id)

    async def stop(self, ticket: Ticket) -> None:
        await self._stop(ticket.model, ticket.upstream_id)

    async def _stop(self, model: str, upstream_id: str) -> None:
        if self._stops is None or self._stops.closed:
            self._stops = _Stream(self.stub, "stops")
        try:
            queue = self._stops.submit(stop_request(model, upstream_id))
            deadline = asyncio.get_running_loop().time() + STOP_TIMEOUT_S
            while True:
                message, final = await asyncio.wait_for(queue.get(), deadline - asyncio.get_running_loop().time())
                if message.error_message:
                    log.warning("stop of a %s request refused upstream: %s", model, message.error_message)
                if final:
                    return
        except (Refused, asyncio.TimeoutError):
            self._stops.forget(upstream_id)
            log.warning("stop of a %s request not answered upstream", model)

    async def stop_for(self, admission: Admission, client: str, client_id: str, model: str) -> None:
        """A client's `stop`: its own running requests with exactly `client_id` end. The stop counts against the
        limits while it is sent (a flood of stops is refused like any other)."""
        ticket = admission.admit(client, client_id, model, track=False)
        try:
            await asyncio.gather(*(self.stop(t) for t in admission.to_stop(client, client_id)))
        finally:
            admission.release(ticket)

    async def unary(self, method: str, request, metadata: tuple = (), timeout: float = 10.0):
        return await getattr(self.stub, method)(request, metadata=metadata, timeout=timeout)

    async def close(self) -> None:
        for stream in [*self._streams, self._stops]:
            if stream is not None:
                await stream.close()
        await self.channel.close()
