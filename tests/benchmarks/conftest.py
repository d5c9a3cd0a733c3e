"""A scripted stand-in for tritonserver: real gRPC (`ModelStreamInfer`), real HTTP SSE, real /metrics.

The real CPU server (tests/conftest.py `cpu_server`, marked `server`) is the authority; this fake exists
so unit tests get exact, fast timelines and every failure path on demand (an in-stream error, a gRPC
status, a missing final flag), which the real server cannot be made to produce on cue. It speaks the
same wire protocols through the same libraries (grpcio + tritonclient protos, aiohttp), so the
benchmark's request functions run unchanged against it.

The prompt scripts the behaviour: a prompt containing `infer-error` gets an error on the open stream,
`unavailable` a gRPC UNAVAILABLE status, `no-final` a stream that closes without the final response.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from aiohttp import web
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

MODEL = "mentallama"
TOKEN_TEXT = "ok "  # every generated token is this text: the fake has no tokenizer


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
    lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self, fields: dict) -> None:
        with self.lock:
            self.requests.append({k: v for k, v in fields.items() if k != "text_input"})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def end(self, ok: bool, tokens: int) -> None:
        with self.lock:
            self.in_flight -= 1
            self.success += ok
            self.failure += not ok
            self.queue_us += 100
            self.compute_us += 1000 * tokens

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


def _tensor_value(inp: pb.ModelInferRequest.InferInputTensor, raw: bytes):
    dtype = {"INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64, "BOOL": np.bool_}.get(inp.datatype)
    if inp.datatype == "BYTES":
        return deserialize_bytes_tensor(raw)[0].decode()
    return np.frombuffer(raw, dtype=dtype)[0].item()


def _response(text: str, final: bool, n_out: int | None, n_in: int | None) -> pb.ModelStreamInferResponse:
    resp = pb.ModelInferResponse(model_name=MODEL, model_version="1")
    outputs = [
        ("text_output", "BYTES", serialize_byte_tensor(np.array([[text.encode()]], dtype=object)).item())
    ]
    if n_out is not None:
        outputs.append(("num_output_tokens", "INT32", np.array([[n_out]], dtype=np.int32).tobytes()))
    if n_in is not None:
        outputs.append(("num_input_tokens", "INT32", np.array([[n_in]], dtype=np.int32).tobytes()))
    for name, dtype, raw in outputs:
        resp.outputs.add(name=name, datatype=dtype, shape=[1, 1])
        resp.raw_output_contents.append(raw)
    resp.parameters["triton_final_response"].bool_param = final
    return pb.ModelStreamInferResponse(infer_response=resp)


def _plan(fields: dict) -> int:
    """Tokens to generate: max_tokens, or fewer ('stops early' like EOS) unless min_tokens forces it."""
    max_tokens = int(fields["max_tokens"])
    return max_tokens if fields.get("min_tokens") else max(1, max_tokens - 1)


class _Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, stats: FakeStats, delay: float) -> None:
        self.stats, self.delay = stats, delay

    async def ServerReady(self, request, context):  # noqa: N802 - gRPC method name
        return pb.ServerReadyResponse(ready=True)

    async def ServerLive(self, request, context):  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ModelReady(self, request, context):  # noqa: N802
        return pb.ModelReadyResponse(ready=request.name == MODEL)

    async def ModelStreamInfer(self, request_iterator, context):  # noqa: N802
        async for request in request_iterator:
            fields = {
                i.name: _tensor_value(i, raw)
                for i, raw in zip(request.inputs, request.raw_input_contents, strict=True)
            }
            prompt = fields["text_input"]
            self.stats.begin(fields)
            n = _plan(fields)
            empty_final = request.parameters["triton_enable_empty_final_response"].bool_param
            await asyncio.sleep(self.delay * 2)  # "prefill"
            if "unavailable" in prompt:
                self.stats.end(False, 0)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "engine is restarting")
            if "infer-error" in prompt:
                self.stats.end(False, 0)
                yield pb.ModelStreamInferResponse(error_message="input too long for the engine")
                continue
            for i in range(n):
                last = i == n - 1
                final_here = last and not empty_final and "no-final" not in prompt
                yield _response(TOKEN_TEXT, final_here, n if final_here else None, 3 if final_here else None)
                if not last:
                    await asyncio.sleep(self.delay)
            if empty_final and "no-final" not in prompt:
                yield _response("", True, n, len(prompt.split()))
            self.stats.end(True, n)


def _http_app(stats: FakeStats, delay: float) -> web.Application:
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
        await asyncio.sleep(delay * 2)
        if "infer-error" in fields["text_input"]:
            stats.end(False, 0)
            await resp.write(b'data: {"error": "input too long for the engine"}\n\n')
            return resp
        n = _plan(fields)
        for i in range(n):
            body = {"model_name": MODEL, "text_output": TOKEN_TEXT}
            if i == n - 1:
                body["num_output_tokens"] = n
            # Split one event across two writes: the client must reassemble it.
            raw = f"data: {json.dumps(body)}\n\n".encode()
            await resp.write(raw[:7])
            await resp.write(raw[7:])
            await asyncio.sleep(delay)
        stats.end(True, n)
        return resp

    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get(f"/v2/models/{MODEL}/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_post(f"/v2/models/{MODEL}/generate_stream", generate_stream)
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def fake_triton() -> Iterator[FakeTriton]:
    """Both fake endpoints on loopback, served from a background thread's event loop."""
    stats, delay = FakeStats(), 0.002
    grpc_port, http_port = _free_port(), _free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict = {}

    async def start() -> None:
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(stats, delay), server)
        server.add_insecure_port(f"127.0.0.1:{grpc_port}")
        await server.start()
        runner = web.AppRunner(_http_app(stats, delay))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", http_port).start()
        state.update(server=server, runner=runner)
        started.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True
    )
    thread.start()
    assert started.wait(10), "fake triton did not start"
    try:
        yield FakeTriton(
            grpc_url=f"127.0.0.1:{grpc_port}",
            http_url=f"127.0.0.1:{http_port}",
            metrics_url=f"http://127.0.0.1:{http_port}/metrics",
            stats=stats,
            token_delay_s=delay,
        )
    finally:

        async def stop() -> None:
            await state["server"].stop(0)
            await state["runner"].cleanup()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
