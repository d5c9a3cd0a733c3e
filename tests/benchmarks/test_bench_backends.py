"""Request functions against the scripted fake Triton (real gRPC and HTTP wire protocols)."""

from __future__ import annotations

import asyncio

import pytest

from mentallama_bench.backends import BACKENDS, SseParser, TritonGrpcBackend, TritonHttpBackend, make_backend
from mentallama_bench.records import SampleRequest, SamplingParams


def _sample(prompt: str = "hello there", max_tokens: int = 5) -> SampleRequest:
    return SampleRequest(index=0, prompt=prompt, task="t", max_tokens=max_tokens)


async def _one(backend, sample, params: SamplingParams | None = None):
    async with backend:
        await backend.wait_ready(5)
        return await backend.generate(sample, params or SamplingParams())


def test_grpc_stream_collects_every_chunk_and_the_final_totals_fake_triton(fake_triton) -> None:
    out = asyncio.run(_one(TritonGrpcBackend(fake_triton.grpc_url), _sample(max_tokens=6)))
    assert out.success, out.error
    assert out.final_seen
    assert len(out.chunk_times) == 5  # max_tokens - 1: the fake stops early without min_tokens
    assert out.num_responses == 6  # five text responses + the empty final one we asked for
    assert out.server_output_tokens == 5 and out.server_input_tokens == 2
    assert out.text == "ok " * 5
    assert out.start < out.chunk_times[0] <= out.chunk_times[-1] <= out.end
    sent = fake_triton.stats.requests[0]
    assert sent["stream"] is True and sent["exclude_input_in_output"] is True
    assert sent["return_num_output_tokens"] is True and "min_tokens" not in sent


def test_grpc_forced_output_length_sends_min_tokens_fake_triton(fake_triton) -> None:
    params = SamplingParams(force_output_len=True, temperature=0.5, top_k=3, top_p=0.9, seed=11)
    out = asyncio.run(_one(TritonGrpcBackend(fake_triton.grpc_url), _sample(max_tokens=4), params))
    assert out.server_output_tokens == 4
    sent = fake_triton.stats.requests[0]
    assert sent["min_tokens"] == 4 and sent["max_tokens"] == 4
    assert sent["top_k"] == 3 and sent["seed"] == 11
    assert sent["temperature"] == pytest.approx(0.5) and sent["top_p"] == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("prompt", "code"),
    [
        ("please infer-error", "INFER_ERROR"),
        ("unavailable now", "UNAVAILABLE"),
        ("no-final here", "INCOMPLETE"),
    ],
)
def test_grpc_failures_come_back_as_codes_fake_triton(fake_triton, prompt: str, code: str) -> None:
    out = asyncio.run(_one(TritonGrpcBackend(fake_triton.grpc_url), _sample(prompt)))
    assert not out.success
    assert out.error_code == code
    assert out.error and "please" not in out.error  # messages never echo the prompt here


def test_grpc_unreachable_endpoint_is_an_error_not_an_exception() -> None:
    async def go():
        backend = TritonGrpcBackend("127.0.0.1:1", request_timeout_s=2)
        async with backend:
            assert not await backend.is_ready()
            with pytest.raises(TimeoutError):
                await backend.wait_ready(0.3, interval_s=0.1)
            return await backend.generate(_sample(), SamplingParams())

    out = asyncio.run(go())
    assert out.error_code == "UNAVAILABLE"


def test_grpc_deadline_is_reported_as_deadline_exceeded_fake_triton(fake_triton) -> None:
    backend = TritonGrpcBackend(fake_triton.grpc_url, request_timeout_s=0.05)
    out = asyncio.run(_one(backend, _sample(max_tokens=200)))
    assert out.error_code == "DEADLINE_EXCEEDED"


def test_http_generate_stream_reassembles_split_events_fake_triton(fake_triton) -> None:
    out = asyncio.run(_one(TritonHttpBackend(fake_triton.http_url), _sample(max_tokens=4)))
    assert out.success, out.error
    assert len(out.chunk_times) == 3 and out.server_output_tokens == 3
    assert out.text == "ok " * 3


def test_http_errors_fake_triton(fake_triton) -> None:
    out = asyncio.run(_one(TritonHttpBackend(fake_triton.http_url), _sample("x infer-error")))
    assert out.error_code == "INFER_ERROR"

    async def unknown_model():
        async with TritonHttpBackend(fake_triton.http_url, model="nope") as backend:
            assert not await backend.is_ready()
            return await backend.generate(_sample(), SamplingParams())

    assert asyncio.run(unknown_model()).error_code == "HTTP_404"


def test_sse_parser_handles_split_and_joined_events() -> None:
    p = SseParser()
    assert p.feed(b'data: {"a"') == []
    assert p.feed(b': 1}\n\ndata: {"b": 2}\n\ndata: {"c"') == ['{"a": 1}', '{"b": 2}']
    assert p.feed(b": 3}\r\n\r\n: keep-alive comment\n\n") == ['{"c": 3}']
    assert p.feed('data: "é'.encode()[:-1]) == []  # a UTF-8 character split across reads
    assert p.feed("é".encode()[-1:] + b'"') == [] and p.flush() == ['"é"']


def test_registry_names_the_backends() -> None:
    assert set(BACKENDS) == {"triton-grpc", "triton-http", "openai"}
    with pytest.raises(ValueError, match="triton-grpc"):
        make_backend("vllm", "x")
