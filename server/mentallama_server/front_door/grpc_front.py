"""The public gRPC endpoint: KServe v2's `GRPCInferenceService`, served by grpcio's asyncio server.

Streams (`ModelStreamInfer`, what every LLM client uses) go through the upstream pool with namespaced ids; a
client stream that ends early (cancelled, disconnected, deadline) stops its requests in band. The entry models
are decoupled, so unary `ModelInfer` is answered as Triton answers it (UNIMPLEMENTED). Health and metadata are
forwarded; the other models are not found; admin APIs need the admin key.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator

import grpc
from tritonclient.grpc import service_pb2

from mentallama_server.front_door.admission import Admission, Refused, Ticket
from mentallama_server.front_door.config import ENTRY_MODELS, FrontDoorConfig
from mentallama_server.front_door.tensors import check_request_id, check_sequences, is_stop, wants_empty_final
from mentallama_server.front_door.upstream import FINAL, UpstreamPool, is_unreachable

log = logging.getLogger("mentallama.front_door")
SERVICE = "inference.GRPCInferenceService"
OPEN_METHODS = ("ServerLive", "ServerReady", "ServerMetadata")
ENTRY_METHODS = ("ModelReady", "ModelMetadata")
TRITON_ADMIN_HEADER = "triton-grpc-protocol-admin-key"  # Triton's gRPC name of the admin key (HTTP: admin-key)
RESTRICTED = f"This protocol is restricted, expecting header '{TRITON_ADMIN_HEADER}'"
DECOUPLED = "ModelInfer RPC doesn't support models with decoupled transaction policy"
KEY_HINT = "metadata 'authorization: Bearer <key>'"
_WAKE = object()


class _Unreachable(str):
    """Queued instead of a response: tritonserver cannot be reached, so the client's RPC ends UNAVAILABLE."""


def unknown_model(name: str) -> str:
    return f"Request for unknown model: '{name}' is not found"


def _header(context: grpc.aio.ServicerContext, names: tuple[str, ...]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key in names:
            return value
    return None


def api_key_of(context: grpc.aio.ServicerContext) -> str | None:
    bearer = _header(context, ("authorization",))
    if bearer and bearer.lower().startswith("bearer "):
        return bearer[7:].strip()
    return _header(context, ("x-api-key",))


class GrpcFront:
    def __init__(self, config: FrontDoorConfig, pool: UpstreamPool, admission: Admission) -> None:
        self.config, self.pool, self.admission = config, pool, admission

    # --- who is calling ---------------------------------------------------------------------------------------
    async def _client(self, context: grpc.aio.ServicerContext) -> str:
        key = api_key_of(context)
        if self.config.api_keys:
            if key is None or not any(hmac.compare_digest(key, k) for k in self.config.api_keys):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid API key is required: " + KEY_HINT)
            return Admission.client_of("", key)
        return Admission.client_of(context.peer(), None)

    async def _check_admin(self, context: grpc.aio.ServicerContext) -> tuple:
        """Admin APIs need the admin key (Triton's message, but PERMISSION_DENIED: not worth a retry)."""
        key = _header(context, (TRITON_ADMIN_HEADER,))
        admin = self.config.admin_key
        if admin is None or key is None or not hmac.compare_digest(key, admin):
            closed = "" if admin is not None else " (closed: the server was started without an admin key)"
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, RESTRICTED + closed)
        return ((TRITON_ADMIN_HEADER, admin),)

    # --- unary methods ----------------------------------------------------------------------------------------
    def unary(self, method: str):
        async def handle(request, context: grpc.aio.ServicerContext):
            metadata: tuple = ()
            if method in ENTRY_METHODS:
                await self._client(context)
                if request.name not in ENTRY_MODELS:
                    if method == "ModelReady":
                        return service_pb2.ModelReadyResponse(ready=False)
                    await context.abort(grpc.StatusCode.NOT_FOUND, unknown_model(request.name))
            elif method == "ModelInfer":
                await self._client(context)
                if request.model_name in ENTRY_MODELS:
                    await context.abort(grpc.StatusCode.UNIMPLEMENTED, DECOUPLED)
                await context.abort(grpc.StatusCode.NOT_FOUND, unknown_model(request.model_name))
            elif method not in OPEN_METHODS:
                metadata = await self._check_admin(context)
            try:
                return await self.pool.unary(method, request, metadata)
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")

        return handle

    # --- streams ----------------------------------------------------------------------------------------------
    async def stream_infer(self, requests: AsyncIterator, context: grpc.aio.ServicerContext):
        client = await self._client(context)
        out: asyncio.Queue = asyncio.Queue()
        active: set[Ticket] = set()
        relays: set[asyncio.Task] = set()
        reading = True

        async def relay(ticket: Ticket, queue: asyncio.Queue, empty_final: bool) -> None:
            try:
                while True:
                    message, final = await queue.get()
                    message.infer_response.id = ticket.client_id
                    if message.error_message:  # Triton names the request in its own errors
                        message.error_message = ticket.own_words(message.error_message)
                        if is_unreachable(message.error_message):
                            out.put_nowait(_Unreachable(message.error_message))
                            return
                    # Upstream always sends the empty final response; the client gets it only if it asked.
                    if not final or empty_final or message.error_message or len(message.infer_response.outputs):
                        out.put_nowait(message)
                    if final:
                        return
            finally:
                self.admission.release(ticket)
                active.discard(ticket)
                out.put_nowait(_WAKE)

        async def read() -> None:
            nonlocal reading
            try:
                async for request in requests:
                    reply = await self._accept(request, client, active, relay, relays)
                    if reply is not None:
                        out.put_nowait(reply)
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass  # the client went away; what it had in flight is stopped below
            except Exception:
                log.exception("front door: a client stream failed")
            finally:
                reading = False
                out.put_nowait(_WAKE)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await out.get()
                if item is _WAKE:
                    # Done when nothing more can come: a relay may have queued its last response and ended
                    # before this wake-up, so what is queued goes out first.
                    if not reading and not active and out.empty():
                        return
                    continue
                if isinstance(item, _Unreachable):
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(item))
                yield item
        finally:
            reader.cancel()
            for ticket in list(active):  # the client left early: stop, never cancel upstream
                self.pool.stop_later(ticket)
            # The relays go on draining their requests' responses (after the stop) and then release them.

    async def _accept(self, request, client: str, active: set, relay, relays: set):
        """Admit one request of a client stream: None when its responses will come from upstream, else the
        response that answers it now (an error, or a stop's empty final)."""
        empty_final = wants_empty_final(request)
        try:
            if request.model_name not in ENTRY_MODELS:
                raise Refused(unknown_model(request.model_name), 404, "NOT_FOUND")
            check_request_id(request.id)
            if is_stop(request):
                if not request.id:
                    raise Refused("stop: give the request id of the request to stop")
                await self.pool.stop_for(self.admission, client, request.id, request.model_name)
                return _empty_final(request) if empty_final else None
            check_sequences(request, self.config.max_sequences)
            ticket = self.admission.admit(client, request.id, request.model_name)
        except Refused as refusal:
            return _error(request, refusal.message, empty_final)
        upstream = service_pb2.ModelInferRequest()
        upstream.CopyFrom(request)
        upstream.id = ticket.upstream_id
        try:
            queue = self.pool.submit(upstream)
        except Refused as refusal:
            self.admission.release(ticket)
            return _Unreachable(refusal.message) if is_unreachable(refusal.message) else _error(
                request, refusal.message, empty_final)  # fmt: skip
        active.add(ticket)
        task = asyncio.create_task(relay(ticket, queue, empty_final))
        relays.add(task)
        task.add_done_callback(relays.discard)
        return None

    def handler(self) -> grpc.GenericRpcHandler:
        methods = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
        handlers = {}
        for method in methods:
            request_type = getattr(service_pb2, method.input_type.name)
            response_type = getattr(service_pb2, method.output_type.name)
            if method.name == "ModelStreamInfer":
                handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                    self.stream_infer, request_type.FromString, response_type.SerializeToString
                )
            else:
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    self.unary(method.name), request_type.FromString, response_type.SerializeToString
                )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _error(request, message: str, empty_final: bool) -> service_pb2.ModelStreamInferResponse:
    reply = service_pb2.ModelStreamInferResponse(error_message=message)
    reply.infer_response.id = request.id
    reply.infer_response.model_name = request.model_name
    if empty_final:
        reply.infer_response.parameters[FINAL].bool_param = True
    return reply


def _empty_final(request) -> service_pb2.ModelStreamInferResponse:
    reply = service_pb2.ModelStreamInferResponse()
    reply.infer_response.id = request.id
    reply.infer_response.model_name = request.model_name
    reply.infer_response.parameters[FINAL].bool_param = True
    return reply
