"""TLS and mutual TLS of the SDK, against the fake Triton (tests/support/fake_triton.py) started in the test.

The fake speaks Triton's gRPC service (health, and a ``ModelStreamInfer`` that streams a fixed answer)
with TLS or mTLS credentials from ``tests/support/pki.py``; the real server behind TLS is tested in
``tests/reliability/test_rel_security.py``. A fake is used here because it can name its certificate
freely and observe every RPC from the server side.

The fake also answers slowly on request, and records RPCs that ended before their answer: that
is where the SDK's cancellation (leaving a stream, a deadline, a cancelled task) is observed from
the server side, deterministically; the real-server tests check that the engine slot is freed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mentallama import APIConnectionError, APITimeoutError, AsyncMentaLLaMAClient, MentaLLaMAClient, build_prompt
from tests.support.fake_triton import SLOW_PROMPT, FakeTriton, run_fake_triton
from tests.support.pki import Pem, Pki, make_pki

STUB_CHUNKS = ("Yes, the poster suffers from depression.", " Reasoning: stub.")


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


# --- fake servers -----------------------------------------------------------------------------


def _start(pair: Pem, client_ca: bytes | None) -> Iterator[FakeTriton]:
    credentials = grpc.ssl_server_credentials([(pair.key, pair.cert)], root_certificates=client_ca,
                                              require_client_auth=client_ca is not None)  # fmt: skip
    with run_fake_triton(credentials=credentials, answer=STUB_CHUNKS) as fake:
        yield fake


@pytest.fixture(scope="module")
def tls_stub(pki: Pki) -> Iterator[FakeTriton]:
    yield from _start(pki.server, client_ca=None)


@pytest.fixture(scope="module")
def mtls_stub(pki: Pki) -> Iterator[FakeTriton]:
    yield from _start(pki.server, client_ca=pki.ca)


@pytest.fixture(scope="module")
def named_stub(pki: Pki) -> Iterator[FakeTriton]:
    yield from _start(pki.named_server, client_ca=None)


# --- tests ------------------------------------------------------------------------------------


def test_tls_to_stub_server_analyze_health_and_headers(pki, tls_stub):
    with MentaLLaMAClient(tls_stub.endpoint, root_certificates=pki.ca, headers={"X-Tenant": "lab-1"},
                          max_retries=0, timeout=10) as client:  # fmt: skip
        assert client.tls and client.health()
        result = client.analyze("a post", "depression", request_id="tls-req-1")
    assert result.raw == "".join(STUB_CHUNKS)
    assert result.label == "yes"  # the stub's fixed answer parses
    words = len(build_prompt("depression", "a post").split())  # the fake counts words as input tokens
    assert (result.num_input_tokens, result.num_output_tokens) == (words, len(STUB_CHUNKS))
    assert tls_stub.stats.request_ids[-1] == "tls-req-1"  # sent as the Triton request id
    sent = tls_stub.stats.metadata[-1]
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
def slow_stub(pki: Pki) -> Iterator[FakeTriton]:
    yield from _start(pki.server, client_ca=None)


def _client(pki: Pki, stub: FakeTriton, cls=MentaLLaMAClient, **options):
    return cls(stub.endpoint, root_certificates=pki.ca, max_retries=0, timeout=30, **options)


def test_leaving_a_stream_early_cancels_the_rpc_on_stub_server(pki, slow_stub):
    with _client(pki, slow_stub) as client:
        with client.generate_stream(SLOW_PROMPT, request_id="left-early") as stream:
            assert next(stream) == "tick "
            next(stream)
        # Left the block long before the stub's 10 s answer: the server must see the RPC end now.
        assert slow_stub.stats.cancelled_event.wait(5)
        assert slow_stub.stats.cancelled == ["left-early"]
        assert stream.final().finish_reason == "cancelled"
        assert client.generate("fast").text == "".join(STUB_CHUNKS)  # the channel is still usable


def test_deadline_cancels_the_rpc_on_stub_server(pki, slow_stub):
    with _client(pki, slow_stub) as client, pytest.raises(APITimeoutError) as info:
        client.generate(SLOW_PROMPT, timeout=0.3, request_id="deadline")
    assert info.value.request_id == "deadline"
    assert slow_stub.stats.cancelled_event.wait(5) and slow_stub.stats.cancelled == ["deadline"]


def test_task_cancellation_cancels_the_rpc_on_stub_server(pki, slow_stub):
    async def main():
        async with _client(pki, slow_stub, AsyncMentaLLaMAClient) as client:
            task = asyncio.create_task(client.generate(SLOW_PROMPT, request_id="task-cancelled"))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.to_thread(slow_stub.stats.cancelled_event.wait, 5)

    asyncio.run(main())
    assert slow_stub.stats.cancelled == ["task-cancelled"]


def test_breaking_an_async_stream_cancels_the_rpc_on_stub_server(pki, slow_stub):
    async def main():
        async with _client(pki, slow_stub, AsyncMentaLLaMAClient) as client:
            async with client.analyze_stream(SLOW_PROMPT, "depression", request_id="async-break") as stream:
                async for _ in stream:
                    break
            await asyncio.to_thread(slow_stub.stats.cancelled_event.wait, 5)
            return stream.analysis

    analysis = asyncio.run(main())
    assert slow_stub.stats.cancelled == ["async-break"]
    assert analysis.finish_reason == "cancelled"
