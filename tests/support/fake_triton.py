"""A scripted stand-in for tritonserver: real gRPC (`ModelStreamInfer`, health), real HTTP SSE, real /metrics.

The real CPU server (tests/conftest.py `cpu_server`, marked `server`) is the authority; this fake
exists so that client and benchmark tests get exact, fast timelines and every failure path on
demand (an in-stream error, a gRPC status, a missing final flag, a slow answer left early), which
the real server cannot be made to produce on cue. It speaks the same wire protocols through the
same libraries (grpcio + tritonclient protos, aiohttp), so the SDK and the benchmark's request
functions run unchanged against it; with TLS credentials it can name its certificate freely.

The prompt scripts the behaviour:

- `infer-error`: an error on the open stream (in band, as Triton reports a model's error);
- `unavailable`: the call ends with gRPC UNAVAILABLE;
- `no-final`: the stream closes without the final response;
- `[slow]` (:data:`SLOW_PROMPT`): 500 chunks 20 ms apart, so that a client leaves it early.

Any other prompt gets `max_tokens - 1` chunks of :data:`TOKEN_TEXT` (it "stops early" like EOS),
exactly `max_tokens` when `min_tokens` is set, or the fixed chunks given as `answer`. Everything
the fake saw is in :class:`FakeStats`, including the requests whose call ended before their answer
(the client cancelled it or its deadline passed): that is where cancellation is observed from the
server side.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.support.endpoints import HOST, free_port
from tests.support.wire import MODEL, decode_inputs, stream_response

__all__ = ["MODEL", "SLOW_PROMPT", "TOKEN_TEXT", "FakeStats", "FakeTriton", "run_fake_triton"]

TOKEN_TEXT = "ok "  # every generated token is this text: the fake has no tokenizer
SLOW_PROMPT = "[slow]"
_SLOW_CHUNKS, _SLOW_DELAY_S = 500, 0.02


@dataclass
class FakeStats:
    """What the fake has seen, for assertions and for its /metrics page."""

    success: int = 0
    failure: int = 0
    queue_us: int = 0
    compute_us: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    requests: list[dict] = field(default_factory=list)  # the non-text inputs of each request
    request_ids: list[str] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)  # gRPC metadata of each stream
    cancelled: list[str] = field(default_factory=list)  # ids of requests whose call ended before the answer
    cancelled_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self, fields: dict, request_id: str = "") -> None:
        with self.lock:
            self.requests.append({k: v for k, v in fields.items() if k != "text_input"})
            self.request_ids.append(request_id)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def end(self, ok: bool, tokens: int) -> None:
        with self.lock:
            self.in_flight -= 1
            self.success += ok
            self.failure += not ok
            self.queue_us += 100
            self.compute_us += 1000 * tokens

    def cancel(self, request_id: str) -> None:
        with self.lock:
            self.in_flight -= 1
            self.cancelled.append(request_id)
        self.cancelled_event.set()

    def metrics_text(self) -> str:
        lab = f'model="{MODEL}",version="1"'
        return "\n".join(
            [
                "# HELP nv_inference_request_success Number of successful inference requests",
                "# TYPE nv_inference_request_success counter",
                f"nv_inference_request_success{{{lab}}} {self.success}",
                "# TYPE nv_inference_request_failure counter",
                f'nv_inference_request_failure{{{lab},reason="BACKEND"}} {self.failure}',
                "# TYPE nv_inference_queue_duration_us counter",
                f"nv_inference_queue_duration_us{{{lab}}} {self.queue_us}",
                "# TYPE nv_inference_compute_infer_duration_us counter",
                f"nv_inference_compute_infer_duration_us{{{lab}}} {self.compute_us}",
                "# TYPE nv_inference_count counter",
                f"nv_inference_count{{{lab}}} {self.success + self.failure}",
                "# TYPE nv_inference_pending_request_count gauge",
                f"nv_inference_pending_request_count{{{lab}}} {self.in_flight}",
                "# TYPE nv_unchanged_total counter",
                "nv_unchanged_total 7",
                "",
            ]
        )


@dataclass
class FakeTriton:
    grpc_url: str
    http_url: str
    metrics_url: str
    stats: FakeStats
    token_delay_s: float

    @property
    def endpoint(self) -> str:
        """The gRPC endpoint as the SDK takes it (``host:port``)."""
        return self.grpc_url


@dataclass(frozen=True)
class _Script:
    """How the fake answers: chunk delay, and fixed chunks instead of ``TOKEN_TEXT`` per token."""

    delay_s: float
    answer: tuple[str, ...] | None

    def chunks(self, fields: dict[str, Any]) -> tuple[list[str], float]:
        """The chunks to stream for a request and the pause between them."""
        if SLOW_PROMPT in fields["text_input"]:
            return ["tick "] * _SLOW_CHUNKS, _SLOW_DELAY_S
        if self.answer is not None:
            return list(self.answer), self.delay_s
        max_tokens = int(fields.get("max_tokens", 16))
        return [TOKEN_TEXT] * (max_tokens if fields.get("min_tokens") else max(1, max_tokens - 1)), self.delay_s


class _Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, stats: FakeStats, script: _Script) -> None:
        self.stats, self.script = stats, script

    async def ServerReady(self, request, context):  # noqa: N802 - gRPC method name
        return pb.ServerReadyResponse(ready=True)

    async def ServerLive(self, request, context):  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ModelReady(self, request, context):  # noqa: N802
        return pb.ModelReadyResponse(ready=request.name == MODEL)

    async def ModelStreamInfer(self, request_iterator, context):  # noqa: N802
        self.stats.metadata.append({key: str(value) for key, value in context.invocation_metadata() or ()})
        async for request in request_iterator:
            fields = decode_inputs(request)
            prompt = fields["text_input"]
            self.stats.begin(fields, request.id)
            empty_final = request.parameters["triton_enable_empty_final_response"].bool_param
            await asyncio.sleep(self.script.delay_s * 2)  # "prefill"
            if "unavailable" in prompt:
                self.stats.end(False, 0)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "engine is restarting")
            if "infer-error" in prompt:
                self.stats.end(False, 0)
                yield pb.ModelStreamInferResponse(error_message="input too long for the engine")
                continue
            chunks, delay = self.script.chunks(fields)
            n, withhold_final = len(chunks), "no-final" in prompt
            try:
                for i, chunk in enumerate(chunks):
                    final_here = i == n - 1 and not empty_final and not withhold_final
                    counts = (n, 3) if final_here else (None, None)
                    yield stream_response(request.id, chunk, final=final_here, num_output_tokens=counts[0],
                                          num_input_tokens=counts[1])  # fmt: skip
                    if i < n - 1:
                        await asyncio.sleep(delay)
                if empty_final and not withhold_final:
                    yield stream_response(request.id, "", final=True, num_output_tokens=n,
                                          num_input_tokens=len(prompt.split()))  # fmt: skip
            except (asyncio.CancelledError, GeneratorExit):  # the client cancelled the call, or its deadline passed
                self.stats.cancel(request.id)
                raise
            self.stats.end(True, n)


def _http_app(stats: FakeStats, script: _Script) -> web.Application:
    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=stats.metrics_text(), content_type="text/plain")

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        fields = await request.json()
        if "max_tokens" not in fields:
            return web.json_response({"error": "missing max_tokens"}, status=400)
        stats.begin(fields)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(script.delay_s * 2)
        if "infer-error" in fields["text_input"]:
            stats.end(False, 0)
            await resp.write(b'data: {"error": "input too long for the engine"}\n\n')
            return resp
        chunks, delay = script.chunks(fields)
        for i, chunk in enumerate(chunks):
            body = {"model_name": MODEL, "text_output": chunk}
            if i == len(chunks) - 1:
                body["num_output_tokens"] = len(chunks)
            # Split one event across two writes: the client must reassemble it.
            raw = f"data: {json.dumps(body)}\n\n".encode()
            await resp.write(raw[:7])
            await resp.write(raw[7:])
            await asyncio.sleep(delay)
        stats.end(True, len(chunks))
        return resp

    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get(f"/v2/models/{MODEL}/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_post(f"/v2/models/{MODEL}/generate_stream", generate_stream)
    return app


@contextmanager
def run_fake_triton(
    *,
    credentials: grpc.ServerCredentials | None = None,
    token_delay_s: float = 0.002,
    answer: Sequence[str] | None = None,
) -> Iterator[FakeTriton]:
    """The fake's gRPC (TLS with ``credentials``) and HTTP endpoints on loopback, served from a
    background thread's event loop until the block ends."""
    stats = FakeStats()
    script = _Script(token_delay_s, tuple(answer) if answer is not None else None)
    http_port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict = {}

    async def start() -> None:
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(stats, script), server)
        address = f"{HOST}:0"
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
        await server.start()
        runner = web.AppRunner(_http_app(stats, script))
        await runner.setup()
        await web.TCPSite(runner, HOST, http_port).start()
        state.update(server=server, runner=runner, grpc_port=port)
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10), "fake triton did not start"
    try:
        yield FakeTriton(
            grpc_url=f"{HOST}:{state['grpc_port']}",
            http_url=f"{HOST}:{http_port}",
            metrics_url=f"http://{HOST}:{http_port}/metrics",
            stats=stats,
            token_delay_s=token_delay_s,
        )
    finally:

        async def stop() -> None:
            await state["server"].stop(0)
            await state["runner"].cleanup()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
