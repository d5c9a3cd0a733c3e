"""MentaLLaMAClient against a real tritonserver (CPU profile, tiny random-weight checkpoint).

The tiny model's answers are noise, so these tests check structure, token counts, equality
between modes and errors, never labels. The retry policy is unit-tested without a server.
"""

from __future__ import annotations

import random
import socket
import time
import urllib.request

import grpc
import pytest

from mentallama import (
    DEFAULT_MODEL,
    Analysis,
    APIConnectionError,
    APITimeoutError,
    Generation,
    InvalidRequestError,
    MentaLLaMAClient,
    MentaLLaMAError,
    RetryPolicy,
    ServerError,
    ServerOverloadedError,
    build_prompt,
)

POSTS = [
    "I can't sleep.",
    "Work has been piling up for weeks and my manager keeps adding more tasks to my list.",
    "Nothing feels worth doing anymore and I stay in bed most days without talking to anyone at all.",
]
# Long enough that a request is still generating when a short deadline passes or a stream is left.
LONG = {"max_tokens": 1024, "min_tokens": 1024}  # the server's limit: ~1 s even for the fast tiny engine


def dead_endpoint() -> str:
    """host:port with nothing listening (bound and released, so no other test owns it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def engine_gauge(metrics_url: str, state: str) -> float:
    """Value of ``mentallama_engine_requests{state=...}``; fails the test if the server lacks it."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("mentallama_engine_requests{") and f'state="{state}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("gauge mentallama_engine_requests missing from the server's metrics")


def wait_engine_busy(metrics_url: str, within_s: float = 2.0) -> None:
    """Until the engine reports an active request (the gauge is sampled every 50 ms, so poll)."""
    start = time.monotonic()
    while engine_gauge(metrics_url, "active") < 1:
        if time.monotonic() - start > within_s:
            raise AssertionError(f"no active engine request seen within {within_s} s")
        time.sleep(0.02)


def wait_engine_idle(metrics_url: str, within_s: float = 5.0) -> float:
    """Seconds until no engine request is active; fails after ``within_s``."""
    start = time.monotonic()
    while engine_gauge(metrics_url, "active") != 0:
        if time.monotonic() - start > within_s:
            raise AssertionError(f"engine still has active requests after {within_s} s")
        time.sleep(0.05)
    return time.monotonic() - start


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

    def test_request_ids_are_generated_and_distinct(self, client):
        ids = {client.analyze(POSTS[0], "stress", max_tokens=4).request_id for _ in range(3)}
        assert len(ids) == 3 and all(ids)

    def test_aspect_task_and_chat_prompt_are_sent(self, client):
        plain = client.analyze(POSTS[1], "wellness", aspect="physical", max_tokens=4)
        chat = client.analyze(POSTS[1], "wellness", aspect="physical", max_tokens=4, chat=True)
        assert plain.task == chat.task == "MultiWD"
        assert chat.num_input_tokens > plain.num_input_tokens  # [INST] ... [/INST] adds tokens

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

    def test_final_reads_the_rest_of_the_stream(self, client):
        stream = client.generate_stream("Hello", max_tokens=16)
        first = next(stream)
        final = stream.final()
        assert final.text.startswith(first)
        assert final.num_output_tokens == 16 and final.finish_reason == "length"

    def test_leaving_a_stream_early_frees_the_engine_slot(self, client, cpu_server):
        with client.generate_stream("Tell me a story", **LONG) as stream:
            for i, _ in enumerate(stream):
                if i == 2:
                    break
            wait_engine_busy(cpu_server.metrics_url)  # still generating: the block has not been left
        partial = stream.final()
        assert partial.finish_reason == "cancelled" and partial.num_output_tokens is None
        wait_engine_idle(cpu_server.metrics_url)


@pytest.mark.server
class TestErrors:
    def test_server_rejects_bad_field(self, client):
        with pytest.raises(InvalidRequestError) as info:
            client.generate("Hello", max_tokens=0, request_id="bad-max-tokens")
        assert info.value.status is grpc.StatusCode.INVALID_ARGUMENT
        assert "max_tokens" in info.value.message
        assert info.value.request_id == "bad-max-tokens"
        assert isinstance(info.value, ValueError)

    def test_client_side_validation_carries_request_id(self, client):
        with pytest.raises(InvalidRequestError) as info:
            client.analyze("   ", "depression", request_id="empty-post")
        assert info.value.request_id == "empty-post" and info.value.status is None
        with pytest.raises(InvalidRequestError, match="aspect"):
            client.analyze(POSTS[0], "irf")

    def test_value_out_of_type_range_is_refused_before_sending(self, client):
        with pytest.raises(InvalidRequestError, match="seed"):
            client.generate("Hello", max_tokens=4, seed=-1)

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
        wait_engine_idle(cpu_server.metrics_url)  # the server cancelled it too


@pytest.mark.server
class TestBatch:
    def test_analyze_many_keeps_order_and_isolates_a_failure(self, client):
        posts = [POSTS[2], "", POSTS[0], POSTS[1]]
        seen: list[int] = []
        results = client.analyze_many(posts, "stress", max_tokens=8, concurrency=3,
                                      on_result=lambda i, _r: seen.append(i))  # fmt: skip
        assert sorted(seen) == [0, 1, 2, 3]
        assert isinstance(results[1], InvalidRequestError) and results[1].request_id
        singles = [client.analyze(p, "stress", max_tokens=8) for p in (POSTS[2], POSTS[0], POSTS[1])]
        for result, single in zip([results[0], results[2], results[3]], singles, strict=True):
            assert isinstance(result, Analysis)
            assert result.num_input_tokens == single.num_input_tokens  # posts differ in length: order kept
            assert result.raw == single.raw  # greedy: same answer alone or in a batch

    def test_analyze_many_per_post_aspects(self, client):
        results = client.analyze_many([POSTS[0], POSTS[1]], "irf", aspect=["thwarted belongingness", None],
                                      max_tokens=4)  # fmt: skip
        assert isinstance(results[0], Analysis)
        assert isinstance(results[1], InvalidRequestError)  # Irf needs an aspect

    def test_generate_many(self, client):
        results = client.generate_many(["Hello", "Good morning to you"], max_tokens=6, concurrency=2)
        assert all(isinstance(r, Generation) for r in results)
        assert results[0].num_input_tokens < results[1].num_input_tokens


@pytest.mark.server
class TestEndpoints:
    def test_one_endpoint_down_all_requests_succeed(self, cpu_server):
        down = dead_endpoint()
        with MentaLLaMAClient([down, cpu_server.grpc_url], timeout=30, max_retries=0) as client:
            results = client.analyze_many(POSTS * 2, "depression", max_tokens=4, concurrency=3)
            assert all(isinstance(r, Analysis) for r in results), results
            assert client.health()  # one healthy endpoint is enough
            assert not client._pool.is_up(down)

    def test_all_endpoints_down_raise_connection_error(self):
        with MentaLLaMAClient(dead_endpoint(), max_retries=1, timeout=10) as client:
            with pytest.raises(APIConnectionError) as info:
                client.analyze(POSTS[0], "depression", request_id="nowhere")
            assert info.value.status is grpc.StatusCode.UNAVAILABLE and info.value.request_id == "nowhere"
            assert not client.health()

    def test_health(self, client):
        assert client.health()
        assert not client.with_options(model="no-such-model").health()

    def test_env_fallback_and_options_copy(self, monkeypatch, cpu_server):
        monkeypatch.setenv("MENTALLAMA_ENDPOINTS", f"{dead_endpoint()}, {cpu_server.grpc_url}")
        monkeypatch.delenv("MENTALLAMA_MODEL", raising=False)
        client = MentaLLaMAClient(timeout=30)
        assert client.endpoints[1] == cpu_server.grpc_url and client.model == DEFAULT_MODEL
        copy = client.with_options(timeout=5)
        assert copy.timeout == 5 and copy._transport is client._transport  # connections shared
        assert client.with_options(endpoints=[cpu_server.grpc_url])._transport is not client._transport
        assert copy.generate("Hello", max_tokens=2).num_output_tokens == 2
        copy.close()  # a copy does not close what it shares
        assert client.generate("Hello", max_tokens=2).num_output_tokens == 2
        client.close()

    def test_bad_endpoint_and_tls_options(self):
        with pytest.raises(ValueError, match="host:port"):
            MentaLLaMAClient("http://localhost:8000")
        with pytest.raises(ValueError, match="tls=False"):
            MentaLLaMAClient("localhost:1", tls=False, root_certificates=b"-----BEGIN CERTIFICATE-----")
        with pytest.raises(ValueError, match="both"):
            MentaLLaMAClient("localhost:1", certificate_chain=b"-----BEGIN CERTIFICATE-----")


class CountingPolicy(RetryPolicy):
    """The default policy, recording the backoff it was asked for (a subclass, not a mock)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "delays", [])

    def delay(self, retries_done: int) -> float:
        self.delays.append(retries_done)
        return 0.01


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

    @pytest.mark.server
    def test_client_retries_unavailable_but_not_invalid_requests(self, cpu_server):
        policy = CountingPolicy(max_retries=2)
        client = MentaLLaMAClient(dead_endpoint(), retry_policy=policy, timeout=10)
        with client, pytest.raises(APIConnectionError):
            client.generate("Hello", max_tokens=2)
        assert policy.delays == [0, 1]  # two retries, backoff grows
        policy = CountingPolicy(max_retries=2)
        client = MentaLLaMAClient(cpu_server.grpc_url, retry_policy=policy, timeout=10)
        with client, pytest.raises(InvalidRequestError):
            client.generate("Hello", max_tokens=0)
        assert policy.delays == []
