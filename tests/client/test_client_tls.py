"""TLS and mutual TLS of the SDK, against a stub gRPC server started in the test.

The server here is a minimal stand-in for Triton's gRPC service (``ServerLive``/``ServerReady``/
``ModelReady`` and a ``ModelStreamInfer`` that streams a fixed answer), started with TLS or mTLS
credentials from ``tests/pki.py``; the real server behind TLS is tested in
``tests/reliability/test_rel_security.py``. A stub is used here because it can name its certificate
freely and observe every RPC from the server side.

The stub also answers slowly on request, and records RPCs that ended before their answer: that
is where the SDK's cancellation (leaving a stream, a deadline, a cancelled task) is observed from
the server side, deterministically; the real-server tests check that the engine slot is freed.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mentallama import APIConnectionError, APITimeoutError, AsyncMentaLLaMAClient, MentaLLaMAClient
from tests.pki import Pem, Pki, make_pki

STUB_CHUNKS = ("Yes, the poster suffers from depression.", " Reasoning: stub.")
SLOW_PROMPT = "[slow]"  # the stub streams 500 chunks, 20 ms apart, for a prompt that contains this


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


# --- stub server ------------------------------------------------------------------------------


def _bytes_tensor(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<I", len(data)) + data


def _response(request_id: str, text: str, final: bool, counts: tuple[int, int] | None = None):
    response = service_pb2.ModelInferResponse(model_name="mentallama", id=request_id)
    out = response.outputs.add()
    out.name, out.datatype = "text_output", "BYTES"
    out.shape.extend([1, 1])
    response.raw_output_contents.append(_bytes_tensor(text))
    if counts is not None:
        for name, value in zip(("num_input_tokens", "num_output_tokens"), counts, strict=True):
            tensor = response.outputs.add()
            tensor.name, tensor.datatype = name, "INT32"
            tensor.shape.extend([1, 1])
            response.raw_output_contents.append(struct.pack("<i", value))
    response.parameters["triton_final_response"].bool_param = final
    return service_pb2.ModelStreamInferResponse(infer_response=response)


def _text_input(request: service_pb2.ModelInferRequest) -> str:
    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        if tensor.name == "text_input":
            (size,) = struct.unpack_from("<I", raw)
            return raw[4 : 4 + size].decode()
    return ""


@dataclass
class StubInferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Just enough of Triton's gRPC service for the SDK: health and a streamed fixed answer.

    For :data:`SLOW_PROMPT` it streams slowly and records the ids of requests whose RPC ended
    before the answer did (the client cancelled it or its deadline passed).
    """

    metadata: list[dict[str, str]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    cancelled_event: threading.Event = field(default_factory=threading.Event)

    def ServerLive(self, request, context):  # noqa: N802 - gRPC method names
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):  # noqa: N802
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):  # noqa: N802
        return service_pb2.ModelReadyResponse(ready=request.name == "mentallama")

    def ModelStreamInfer(self, request_iterator, context):  # noqa: N802
        self.metadata.append(dict(context.invocation_metadata()))
        for request in request_iterator:
            self.request_ids.append(request.id)
            if SLOW_PROMPT in _text_input(request):
                yield from self._slow(request.id, context)
                continue
            for chunk in STUB_CHUNKS:
                yield _response(request.id, chunk, final=False)
            yield _response(request.id, "", final=True, counts=(7, len(STUB_CHUNKS)))

    def _slow(self, request_id: str, context):
        finished = threading.Event()

        def on_rpc_end() -> None:
            if not finished.is_set():
                self.cancelled.append(request_id)
                self.cancelled_event.set()

        context.add_callback(on_rpc_end)
        for _ in range(500):
            if not context.is_active():
                return
            yield _response(request_id, "tick ", final=False)
            time.sleep(0.02)
        finished.set()
        yield _response(request_id, "", final=True, counts=(1, 500))


@dataclass
class StubServer:
    endpoint: str
    service: StubInferenceService


def _start(pair: Pem, client_ca: bytes | None) -> Iterator[StubServer]:
    service = StubInferenceService()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    credentials = grpc.ssl_server_credentials([(pair.key, pair.cert)], root_certificates=client_ca,
                                              require_client_auth=client_ca is not None)  # fmt: skip
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield StubServer(f"127.0.0.1:{port}", service)
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def tls_stub(pki: Pki) -> Iterator[StubServer]:
    yield from _start(pki.server, client_ca=None)


@pytest.fixture(scope="module")
def mtls_stub(pki: Pki) -> Iterator[StubServer]:
    yield from _start(pki.server, client_ca=pki.ca)


@pytest.fixture(scope="module")
def named_stub(pki: Pki) -> Iterator[StubServer]:
    yield from _start(pki.named_server, client_ca=None)


# --- tests ------------------------------------------------------------------------------------


def test_tls_to_stub_server_analyze_health_and_headers(pki, tls_stub):
    with MentaLLaMAClient(tls_stub.endpoint, root_certificates=pki.ca, headers={"X-Tenant": "lab-1"},
                          max_retries=0, timeout=10) as client:  # fmt: skip
        assert client.tls and client.health()
        result = client.analyze("a post", "depression", request_id="tls-req-1")
    assert result.raw == "".join(STUB_CHUNKS)
    assert result.label == "yes"  # the stub's fixed answer parses
    assert (result.num_input_tokens, result.num_output_tokens) == (7, len(STUB_CHUNKS))
    assert tls_stub.service.request_ids[-1] == "tls-req-1"  # sent as the Triton request id
    sent = tls_stub.service.metadata[-1]
    assert sent["x-tenant"] == "lab-1"
    assert "triton_grpc_error" not in sent  # crashes Triton 2.51 (docs/RELIABILITY.md)


def test_tls_to_stub_server_rejects_untrusted_or_plaintext_clients(pki, tls_stub):
    untrusted = MentaLLaMAClient(tls_stub.endpoint, root_certificates=pki.other_ca, max_retries=0, timeout=10)
    with untrusted as client:
        with pytest.raises(APIConnectionError) as info:
            client.generate("Hello", request_id="untrusted")
        assert info.value.status is grpc.StatusCode.UNAVAILABLE and info.value.request_id == "untrusted"
        assert not client.health()
    with MentaLLaMAClient(tls_stub.endpoint, max_retries=0, timeout=10) as client, \
            pytest.raises(APIConnectionError):  # fmt: skip
        client.generate("Hello")


def test_mtls_to_stub_server_needs_the_client_certificate(pki, mtls_stub, tmp_path: Path):
    (tmp_path / "ca.pem").write_bytes(pki.ca)
    (tmp_path / "client.pem").write_bytes(pki.client.cert)
    (tmp_path / "client.key").write_bytes(pki.client.key)
    # Paths (str and Path) are read like bytes.
    with MentaLLaMAClient(mtls_stub.endpoint, root_certificates=str(tmp_path / "ca.pem"),
                          certificate_chain=tmp_path / "client.pem", private_key=tmp_path / "client.key",
                          max_retries=0, timeout=10) as client:  # fmt: skip
        assert client.generate("Hello").text == "".join(STUB_CHUNKS)
    with MentaLLaMAClient(mtls_stub.endpoint, root_certificates=pki.ca, max_retries=0, timeout=10) as client:
        with pytest.raises(APIConnectionError):
            client.generate("Hello")
        assert not client.health()
    with pytest.raises(ValueError, match="cannot read"):
        MentaLLaMAClient(mtls_stub.endpoint, root_certificates=tmp_path / "missing.pem")


def test_mtls_to_stub_server_async_client_streams(pki, mtls_stub):
    async def main():
        async with AsyncMentaLLaMAClient(mtls_stub.endpoint, root_certificates=pki.ca,
                                         certificate_chain=pki.client.cert, private_key=pki.client.key,
                                         max_retries=0, timeout=10) as client:  # fmt: skip
            assert await client.health()
            async with client.analyze_stream("a post", "depression") as stream:
                deltas = [d async for d in stream]
            return deltas, stream.analysis

    deltas, analysis = asyncio.run(main())
    assert deltas == list(STUB_CHUNKS) and analysis.label == "yes"


def test_tls_server_name_override_with_stub_server(pki, named_stub):
    with MentaLLaMAClient(named_stub.endpoint, root_certificates=pki.ca, tls_server_name="mentallama.test",
                          max_retries=0, timeout=10) as client:  # fmt: skip
        assert client.generate("Hello").num_output_tokens == len(STUB_CHUNKS)
    unnamed = MentaLLaMAClient(named_stub.endpoint, root_certificates=pki.ca, max_retries=0, timeout=10)
    with unnamed as client, pytest.raises(APIConnectionError):
        client.generate("Hello")  # the certificate does not name 127.0.0.1


# --- cancellation, observed by the stub server -----------------------------------------------


@pytest.fixture
def slow_stub(pki: Pki) -> Iterator[StubServer]:
    yield from _start(pki.server, client_ca=None)


def _client(pki: Pki, stub: StubServer, cls=MentaLLaMAClient, **options):
    return cls(stub.endpoint, root_certificates=pki.ca, max_retries=0, timeout=30, **options)


def test_leaving_a_stream_early_cancels_the_rpc_on_stub_server(pki, slow_stub):
    with _client(pki, slow_stub) as client:
        with client.generate_stream(SLOW_PROMPT, request_id="left-early") as stream:
            assert next(stream) == "tick "
            next(stream)
        # Left the block long before the stub's 10 s answer: the server must see the RPC end now.
        assert slow_stub.service.cancelled_event.wait(5)
        assert slow_stub.service.cancelled == ["left-early"]
        assert stream.final().finish_reason == "cancelled"
        assert client.generate("fast").text == "".join(STUB_CHUNKS)  # the channel is still usable


def test_deadline_cancels_the_rpc_on_stub_server(pki, slow_stub):
    with _client(pki, slow_stub) as client, pytest.raises(APITimeoutError) as info:
        client.generate(SLOW_PROMPT, timeout=0.3, request_id="deadline")
    assert info.value.request_id == "deadline"
    assert slow_stub.service.cancelled_event.wait(5) and slow_stub.service.cancelled == ["deadline"]


def test_task_cancellation_cancels_the_rpc_on_stub_server(pki, slow_stub):
    async def main():
        async with _client(pki, slow_stub, AsyncMentaLLaMAClient) as client:
            task = asyncio.create_task(client.generate(SLOW_PROMPT, request_id="task-cancelled"))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.to_thread(slow_stub.service.cancelled_event.wait, 5)

    asyncio.run(main())
    assert slow_stub.service.cancelled == ["task-cancelled"]


def test_breaking_an_async_stream_cancels_the_rpc_on_stub_server(pki, slow_stub):
    async def main():
        async with _client(pki, slow_stub, AsyncMentaLLaMAClient) as client:
            async with client.analyze_stream(SLOW_PROMPT, "depression", request_id="async-break") as stream:
                async for _ in stream:
                    break
            await asyncio.to_thread(slow_stub.service.cancelled_event.wait, 5)
            return stream.analysis

    analysis = asyncio.run(main())
    assert slow_stub.service.cancelled == ["async-break"]
    assert analysis.finish_reason == "cancelled"
