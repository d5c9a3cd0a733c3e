"""The public HTTP endpoint: KServe v2 health, metadata and Triton's `generate` / `generate_stream`, on FastAPI.

Generation goes through the same upstream pool as gRPC (Triton's own HTTP frontend is not used for it); a
client that disconnects stops its request in band. The entry models are decoupled, so `infer` is answered as
Triton answers it (501). Admin APIs are served on the gRPC port only (with the admin key).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from tritonclient.grpc import service_pb2

from mentallama_server.front_door.admission import Admission, Refused, Ticket
from mentallama_server.front_door.config import ENTRY_MODELS, FrontDoorConfig
from mentallama_server.front_door.tensors import (
    check_sequences,
    generate_request,
    is_stop,
    load_json,
    response_json,
)
from mentallama_server.front_door.upstream import UNREACHABLE, Delivery, UpstreamPool, is_unreachable

# curl's default for `-d`, which upstream's own README examples use against `generate`: the body is still JSON.
HTTP_OF_GRPC = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400}
ADMIN_HEADER = "admin-key"
RESTRICTED = f"This API is restricted, expecting header '{ADMIN_HEADER}'"
# Triton's admin APIs over HTTP: forwarded to tritonserver's own HTTP endpoint, with the admin key only.
ADMIN_ROUTES = (
    "/v2/models/stats", "/v2/models/{model}/stats", "/v2/models/{model}/versions/{version}/stats",
    "/v2/models/{model}/config", "/v2/models/{model}/versions/{version}/config", "/v2/repository/{rest:path}",
    "/v2/systemsharedmemory{rest:path}", "/v2/cudasharedmemory{rest:path}", "/v2/logging", "/v2/trace/setting",
    "/v2/models/{model}/trace/setting",
)  # fmt: skip
JSON_TYPES = ("application/json", "application/x-www-form-urlencoded")


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def status_of(message: str) -> int:
    """HTTP status of an error the upstream stream reported (a stream carries only the message)."""
    lowered = message.lower()
    # A Python model's stub that died ("Stub process '...' is not healthy"): this server cannot serve until
    # it is restarted; 503 so that clients retry elsewhere, not 400 as if the request were wrong.
    if lowered.startswith("server overloaded") or is_unreachable(message) or "is not healthy" in lowered:
        return 503
    if "unknown model" in lowered:
        return 404
    if lowered.startswith("generation failed") or "engine failed" in lowered or "engine step failed" in lowered:
        return 500
    return 400


def error_response(message: str, status: int) -> JSONResponse:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class HttpFront:
    def __init__(self, config: FrontDoorConfig, pool: UpstreamPool, admission: Admission) -> None:
        self.config, self.pool, self.admission = config, pool, admission
        self._inputs: dict[str, dict[str, tuple[str, list[int]]]] = {}
        self.drains: set[asyncio.Task] = set()

    # --- who is calling, what they sent -----------------------------------------------------------------------
    def client(self, request: Request) -> str:
        key = None
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            key = bearer[7:].strip()
        key = key or request.headers.get("x-api-key")
        if self.config.api_keys:
            if key is None or not any(hmac.compare_digest(key, k) for k in self.config.api_keys):
                raise Refused("a valid API key is required (Authorization: Bearer <key>)", 401, "UNAUTHENTICATED")
            return Admission.client_of("", key)
        peer = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
        return Admission.client_of(peer, None)

    async def body(self, request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and content_type not in JSON_TYPES:
            raise Refused(f"the request body must be JSON (Content-Type: application/json), not {content_type}", 415)
        limit = self.config.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise Refused(f"the request body is {declared} bytes; the limit is {limit}", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(f"the request body is over the limit of {limit} bytes", 413)
            chunks.append(chunk)
        return load_json(b"".join(chunks), self.config.max_json_depth)

    async def inputs_of(self, model: str) -> dict[str, tuple[str, list[int]]]:
        if model not in self._inputs:
            try:
                metadata = await self.pool.unary("ModelMetadata", service_pb2.ModelMetadataRequest(name=model))
            except grpc.aio.AioRpcError as exc:
                raise Refused(f"the model is not available: {exc.details()}", 503, "UNAVAILABLE") from None
            self._inputs[model] = {t.name: (t.datatype, list(t.shape)[1:]) for t in metadata.inputs}
        return self._inputs[model]

    # --- generation -------------------------------------------------------------------------------------------
    async def generate(self, model: str, request: Request, stream: bool, version: str = "") -> Response:
        try:
            client = self.client(request)
            if model not in ENTRY_MODELS:
                raise Refused(f"Request for unknown model: '{model}' is not found", 404)
            body = await self.body(request)
            if not stream and body.get("stream") is True:
                raise Refused("stream: `generate` answers with one response; use `generate_stream` to stream")
            upstream = generate_request(model, body, await self.inputs_of(model))
            upstream.model_version = version
            client_id = upstream.id
            if is_stop(upstream):
                return await self._stop(client, upstream)
            ticket, queue = self.submit(client, client_id, upstream)
        except Refused as refusal:
            return error_response(refusal.message, refusal.status)
        if stream:
            return await self._stream(request, ticket, queue)
        return await self._single(request, ticket, queue)

    def submit(
        self, client: str, client_id: str, upstream: service_pb2.ModelInferRequest
    ) -> tuple[Ticket, asyncio.Queue[Delivery]]:
        """Admit a request under the client's limits and send it upstream under its namespaced id; raises
        Refused. The caller owns the ticket: `relay` (or `_abandon`) lets it go."""
        check_sequences(upstream, self.config.max_sequences)
        ticket = self.admission.admit(client, client_id, upstream.model_name)
        upstream.id = ticket.upstream_id
        try:
            queue = self.pool.submit(upstream)
        except Refused:
            self.admission.release(ticket)
            raise
        return ticket, queue

    async def relay(
        self, ticket: Ticket, queue: asyncio.Queue[Delivery], first: Delivery
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """A request's upstream responses from `first` to the final one; the ticket is released after the
        final one, and a consumer that stops early (a client that disconnected: Starlette cancels its stream)
        stops the request in band. Use under `contextlib.aclosing`, so that happens at once."""
        delivery, done = first, False
        try:
            while True:
                message, final = delivery
                done = final  # set before yielding: a consumer that closes after the final one owes no stop
                yield message
                if final:
                    return
                delivery = await queue.get()
        finally:
            if done:
                self.admission.release(ticket)
            else:
                self._abandon(ticket, queue)

    async def _stop(self, client: str, upstream: service_pb2.ModelInferRequest) -> Response:
        if not upstream.id:
            raise Refused("stop: give the request id (`id`) of the request to stop")
        await self.pool.stop_for(self.admission, client, upstream.id, upstream.model_name)
        return JSONResponse({"id": upstream.id, "model_name": upstream.model_name, "stopped": True})

    async def _next(self, request: Request, queue: asyncio.Queue[Delivery]) -> Delivery | None:
        """The next upstream response, or None when the client disconnected first."""
        get = asyncio.ensure_future(queue.get())
        gone = asyncio.ensure_future(_disconnected(request))
        done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if get in done:
            return get.result()
        get.cancel()
        return None

    def _abandon(self, ticket: Ticket, queue: asyncio.Queue[Delivery]) -> None:
        """The client is gone: stop its request in band and drain the rest, then let the request go."""
        self.pool.stop_later(ticket)

        async def drain() -> None:
            try:
                while not (await queue.get())[1]:
                    pass
            finally:
                self.admission.release(ticket)

        task = asyncio.create_task(drain())
        self.drains.add(task)
        task.add_done_callback(self.drains.discard)

    async def _single(self, request: Request, ticket: Ticket, queue: asyncio.Queue[Delivery]) -> Response:
        replies = []
        while True:
            delivery = await self._next(request, queue)
            if delivery is None:
                self._abandon(ticket, queue)
                return Response(status_code=499)
            message, final = delivery
            if message.error_message:
                self.admission.release(ticket)
                text = ticket.own_words(message.error_message)
                return error_response(text, status_of(text))
            if len(message.infer_response.outputs):
                replies.append(message.infer_response)
            if final:
                break
        self.admission.release(ticket)
        if len(replies) != 1:
            return error_response(
                f"generate expects the model to produce exactly 1 response, it produced {len(replies)}; "
                "use generate_stream for requests with several responses (several prompts or streaming)",
                400,
            )
        return Response(_dumps(response_json(replies[0], ticket.client_id)), media_type="application/json")

    async def _stream(self, request: Request, ticket: Ticket, queue: asyncio.Queue[Delivery]) -> Response:
        first = await self._next(request, queue)
        if first is None:
            self._abandon(ticket, queue)
            return Response(status_code=499)
        message, final = first
        if message.error_message:  # refused before anything was generated: a status says so, as Triton does
            self.admission.release(ticket)
            text = ticket.own_words(message.error_message)
            event = f"data: {_dumps({'error': text})}\n\n"
            return Response(event, status_code=status_of(text), media_type="text/event-stream")

        async def events() -> AsyncIterator[str]:
            async with contextlib.aclosing(self.relay(ticket, queue, first)) as messages:
                async for message in messages:
                    if message.error_message:
                        text = ticket.own_words(message.error_message)
                        yield f"data: {_dumps({'error': text})}\n\n"
                    elif len(message.infer_response.outputs):
                        yield f"data: {_dumps(response_json(message.infer_response, ticket.client_id))}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    # --- admin APIs -----------------------------------------------------------------------------------------------
    async def admin(self, request: Request) -> Response:
        key, admin = request.headers.get(ADMIN_HEADER), self.config.admin_key
        if admin is None or key is None or not hmac.compare_digest(key, admin) or not self.config.upstream_http:
            closed = "" if admin is not None else " (closed: the server was started without an admin key)"
            return error_response(RESTRICTED + closed, 403)
        try:
            raw = b""
            if request.method in ("POST", "PUT"):
                body = await self.body(request)  # bounded and depth-checked like any other body
                raw = json.dumps(body).encode()
        except Refused as refusal:
            return error_response(refusal.message, refusal.status)
        url = f"{self.config.upstream_http}{request.url.path}" + (f"?{request.url.query}" if request.url.query else "")
        status, content, media = await asyncio.to_thread(_forward, url, request.method, raw, {ADMIN_HEADER: admin})
        return Response(content, status_code=status, media_type=media)

    # --- health and metadata ----------------------------------------------------------------------------------
    async def health(self, what: str) -> Response:
        method, request = (
            ("ServerLive", service_pb2.ServerLiveRequest())
            if what == "live"
            else ("ServerReady", service_pb2.ServerReadyRequest())
        )
        try:
            reply = await self.pool.unary(method, request, timeout=5)
        except grpc.aio.AioRpcError:
            return Response(status_code=503)
        return Response(status_code=200 if getattr(reply, what) else 503)

    async def metadata(self, model: str, request: Request, version: str = "") -> Response:
        try:
            self.client(request)
            if model not in ENTRY_MODELS:
                raise Refused(f"Request for unknown model: '{model}' is not found", 404)
            request_ = service_pb2.ModelMetadataRequest(name=model, version=version)
            reply = await self.pool.unary("ModelMetadata", request_)
        except Refused as refusal:
            return error_response(refusal.message, refusal.status)
        except grpc.aio.AioRpcError as exc:
            return error_response(exc.details() or "metadata unavailable", HTTP_OF_GRPC.get(exc.code(), 503))

        def tensors(items) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

        return JSONResponse({
            "name": reply.name, "versions": list(reply.versions), "platform": reply.platform,
            "inputs": tensors(reply.inputs), "outputs": tensors(reply.outputs),
        })  # fmt: skip

    async def model_ready(self, model: str, request: Request, version: str = "") -> Response:
        try:
            self.client(request)
        except Refused as refusal:
            return error_response(refusal.message, refusal.status)
        if model not in ENTRY_MODELS:
            return error_response(f"Request for unknown model: '{model}' is not found", 404)
        try:
            reply = await self.pool.unary("ModelReady", service_pb2.ModelReadyRequest(name=model, version=version),
                                          timeout=5)  # fmt: skip
        except grpc.aio.AioRpcError:
            return Response(status_code=503)
        return Response(status_code=200 if reply.ready else 400)

    async def server_metadata(self, request: Request) -> Response:
        try:
            self.client(request)
            reply = await self.pool.unary("ServerMetadata", service_pb2.ServerMetadataRequest(), timeout=5)
        except Refused as refusal:
            return error_response(refusal.message, refusal.status)
        except grpc.aio.AioRpcError as exc:
            return error_response(exc.details() or "unavailable", 503)
        return JSONResponse({"name": reply.name, "version": reply.version, "extensions": list(reply.extensions)})


def _forward(url: str, method: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
    """One admin request to tritonserver's own HTTP endpoint (loopback)."""
    request = urllib.request.Request(url, data=body or None, method=method,
                                     headers={**headers, "Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own loopback server
            return response.status, response.read(), response.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get_content_type()
    except OSError as exc:
        return 503, _dumps({"error": f"{UNREACHABLE}: {exc}"}).encode(), "application/json"


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body was read already, so `receive` waits for that alone)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
