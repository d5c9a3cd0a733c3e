"""MentaLLaMAClient against a real tritonserver (CPU profile, tiny random-weight checkpoint).

The tiny model's answers are noise, so these tests check structure, token counts, equality
between modes and errors, never labels: what only a server shows. The client's own logic
(validation, batches, retries, failover, streams left early) is tested over the scripted transport
in test_client_logic.py; the retry policy is unit-tested here without a server.
"""

from __future__ import annotations

import random
import time

import grpc
import pytest

from mentallama import (
    DEFAULT_MODEL,
    Analysis,
    APIConnectionError,
    APITimeoutError,
    InvalidRequestError,
    MentaLLaMAClient,
    MentaLLaMAError,
    RetryPolicy,
    ServerError,
    ServerOverloadedError,
    build_prompt,
)
from mentallama._transport import SyncTransport
from tests.support.endpoints import dead_endpoint
from tests.support.metrics import wait_engine

POSTS = [
    "I can't sleep.",
    "Work has been piling up for weeks and my manager keeps adding more tasks to my list.",
    "Nothing feels worth doing anymore and I stay in bed most days without talking to anyone at all.",
]
# Long enough that a request is still generating when a short deadline passes or a stream is left.
LONG = {"max_tokens": 1024, "min_tokens": 1024}  # the server's limit: ~1 s even for the fast tiny engine


@pytest.fixture(scope="module")
def client(cpu_server):
    with MentaLLaMAClient(cpu_server.grpc_url, timeout=60) as c:
        yield c


@pytest.mark.server
class TestAnalyze:
    def test_analysis_carries_serving_fields(self, client):
        result = client.analyze(POSTS[0], "depression", max_tokens=24, request_id="req-sync-1")
        assert isinstance(result, Analysis)
        assert result.task == "DR"
        assert result.request_id == "req-sync-1"
        assert result.num_input_tokens > 10  # the whole IMHI query, not just the post
        assert 1 <= result.num_output_tokens <= 24
        assert result.finish_reason in ("stop", "length")
        assert result.finish_reason == ("length" if result.num_output_tokens == 24 else "stop")
        assert 0 < result.ttft_s <= result.latency_s
        assert result.raw == result.raw.lstrip()  # first token's leading space dropped for parsing
        assert result.label is None or result.label in ("yes", "no")

    def test_analysis_equals_generate_on_the_same_prompt(self, client):
        analysis = client.analyze(POSTS[2], "SAD", max_tokens=32)
        generation = client.generate(build_prompt("SAD", POSTS[2]), max_tokens=32)
        assert analysis.raw == generation.text.lstrip()
        assert analysis.num_input_tokens == generation.num_input_tokens
        assert analysis.num_output_tokens == generation.num_output_tokens


@pytest.mark.server
class TestStreaming:
    def test_generate_stream_deltas_concatenate_to_non_streamed_text(self, client):
        prompt = build_prompt("DR", POSTS[1])
        whole = client.generate(prompt, max_tokens=48, stream=False)
        with client.generate_stream(prompt, max_tokens=48) as stream:
            deltas = list(stream)
        final = stream.final()
        assert len(deltas) > 1
        assert "".join(deltas) == whole.text == final.text
        assert final.num_input_tokens == whole.num_input_tokens
        assert final.num_output_tokens == whole.num_output_tokens
        assert whole.ttft_s is None and final.ttft_s is not None  # only a streamed answer has a first chunk

    def test_analyze_stream_matches_analyze(self, client):
        expected = client.analyze(POSTS[2], "depression", max_tokens=40)
        with client.analyze_stream(POSTS[2], "depression", max_tokens=40) as stream:
            text = "".join(stream)
        assert text == expected.raw
        assert stream.analysis == stream.final()
        assert (stream.analysis.label, stream.analysis.raw) == (expected.label, expected.raw)
        assert stream.analysis.num_output_tokens == expected.num_output_tokens

    def test_leaving_a_stream_early_frees_the_engine_slot(self, client, cpu_server):
        with client.generate_stream("Tell me a story", **LONG) as stream:
            for i, _ in enumerate(stream):
                if i == 2:
                    break
            wait_engine(cpu_server.metrics_url, busy=True, within_s=2)  # still generating: the block is not left
        partial = stream.final()
        assert partial.finish_reason == "cancelled" and partial.num_output_tokens is None
        wait_engine(cpu_server.metrics_url, busy=False, within_s=5)


@pytest.mark.server
class TestErrors:
    def test_server_rejects_bad_field(self, client):
        with pytest.raises(InvalidRequestError) as info:
            client.generate("Hello", max_tokens=0, request_id="bad-max-tokens")
        assert info.value.status is grpc.StatusCode.INVALID_ARGUMENT
        assert "max_tokens" in info.value.message
        assert info.value.request_id == "bad-max-tokens"
        assert isinstance(info.value, ValueError)

    def test_unknown_model(self, client):
        with pytest.raises(InvalidRequestError) as info:
            client.with_options(model="no-such-model").generate("Hello", max_tokens=4)
        assert info.value.status is grpc.StatusCode.NOT_FOUND

    def test_deadline_exceeded_raises_timeout_with_request_id(self, client, cpu_server):
        start = time.monotonic()
        with pytest.raises(APITimeoutError) as info:
            client.generate("Hello", timeout=0.2, request_id="too-slow", **LONG)
        assert time.monotonic() - start < 5
        assert info.value.request_id == "too-slow"
        assert info.value.status is grpc.StatusCode.DEADLINE_EXCEEDED
        assert isinstance(info.value, APIConnectionError)
        wait_engine(cpu_server.metrics_url, busy=False, within_s=5)  # the server cancelled it too


class TestEndpoints:
    def test_all_endpoints_down_raise_connection_error(self):
        with MentaLLaMAClient(dead_endpoint(), max_retries=1, timeout=10) as client:
            with pytest.raises(APIConnectionError) as info:
                client.analyze(POSTS[0], "depression", request_id="nowhere")
            assert info.value.status is grpc.StatusCode.UNAVAILABLE and info.value.request_id == "nowhere"
            assert not client.health()

    @pytest.mark.server
    def test_health(self, client):
        assert client.health()
        assert not client.with_options(model="no-such-model").health()

    def test_env_fallback_and_options_copy(self, monkeypatch):
        monkeypatch.setenv("MENTALLAMA_ENDPOINTS", "localhost:1, grpc://127.0.0.1:2")
        monkeypatch.delenv("MENTALLAMA_MODEL", raising=False)
        with MentaLLaMAClient(timeout=30) as client:
            assert client.endpoints == ("localhost:1", "127.0.0.1:2") and client.model == DEFAULT_MODEL
            assert isinstance(client._transport, SyncTransport)  # no transport given: gRPC
            copy = client.with_options(timeout=5)
            assert copy.timeout == 5 and copy._transport is client._transport  # connections shared
            assert copy._pool is client._pool  # and what is known about the endpoints
            with client.with_options(endpoints=["localhost:3"]) as other:
                assert other._transport is not client._transport

    def test_bad_endpoint_and_tls_options(self):
        with pytest.raises(ValueError, match="host:port"):
            MentaLLaMAClient("http://localhost:8000")
        with pytest.raises(ValueError, match="tls=False"):
            MentaLLaMAClient("localhost:1", tls=False, root_certificates=b"-----BEGIN CERTIFICATE-----")
        with pytest.raises(ValueError, match="both"):
            MentaLLaMAClient("localhost:1", certificate_chain=b"-----BEGIN CERTIFICATE-----")


class TestRetryPolicy:
    def error(self, cls: type[MentaLLaMAError], status: grpc.StatusCode) -> MentaLLaMAError:
        return cls("x", request_id="r", status=status)

    def test_only_transient_statuses_before_any_response_retry(self):
        policy = RetryPolicy(max_retries=2)
        unavailable = self.error(APIConnectionError, grpc.StatusCode.UNAVAILABLE)
        assert policy.should_retry(unavailable, responses_received=0, retries_done=0)
        assert policy.should_retry(self.error(ServerOverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
                                   responses_received=0, retries_done=1)  # fmt: skip
        assert not policy.should_retry(unavailable, responses_received=1, retries_done=0)  # tokens arrived
        assert not policy.should_retry(unavailable, responses_received=0, retries_done=2)  # budget spent
        for cls, status in [
            (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
            (APITimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
            (ServerError, grpc.StatusCode.INTERNAL),
            (ServerError, grpc.StatusCode.UNIMPLEMENTED),
            (InvalidRequestError, grpc.StatusCode.NOT_FOUND),
        ]:
            assert not policy.should_retry(self.error(cls, status), responses_received=0, retries_done=0)
        assert not policy.should_retry(RuntimeError("bug"), responses_received=0, retries_done=0)

    def test_backoff_is_capped_exponential_with_jitter(self):
        policy = RetryPolicy(initial_delay=0.5, max_delay=3.0, jitter=0.25, rng=random.Random(0))
        for retries_done, base in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0), (10, 3.0)]:
            delays = {policy.delay(retries_done) for _ in range(20)}
            assert all(0.75 * base <= d <= base for d in delays)
            assert len(delays) > 1  # jittered
        assert RetryPolicy(jitter=0).delay(1) == RetryPolicy(jitter=0).delay(1)
        with pytest.raises(ValueError):
            RetryPolicy(max_retries=-1)
