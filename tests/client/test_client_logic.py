"""Client-side logic of both clients, over the scripted transport (tests/support/fake_transport.py): no server.

What is checked here is what the client decides on its own: the request it builds, validation before
sending, ``*_many`` ordering and concurrency, retries, backoff and failover after a transport error,
resending a broken answer whole, deadlines, and streams that are left early. Every test runs with
``MentaLLaMAClient`` and with ``AsyncMentaLLaMAClient``. What only a server shows (streaming from the
engine, cancellation on the server, TLS) stays in test_client_sync.py, test_client_async.py and
test_client_tls.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from mentallama import (
    Analysis,
    APIConnectionError,
    APITimeoutError,
    AsyncMentaLLaMAClient,
    Generation,
    InvalidRequestError,
    MentaLLaMAClient,
    RetryPolicy,
    ServerError,
    build_prompt,
)
from mentallama._transport import AsyncTransport, StreamEvent, SyncTransport
from mentallama._transport_protocol import AsyncTransportProtocol, TransportProtocol
from tests.support.fake_transport import (
    UNREACHABLE,
    AsyncScriptedTransport,
    Fail,
    Pause,
    ScriptedTransport,
    SentRequest,
    answer,
)

POST = "Work has been piling up for weeks and my manager keeps adding more tasks to my list."
YES = (" Yes, the poster suffers from stress.", " Reasoning: the workload.")


class CountingPolicy(RetryPolicy):
    """The default policy, recording the backoff it was asked for (a subclass, not a mock)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "delays", [])

    def delay(self, retries_done: int) -> float:
        self.delays.append(retries_done)
        return 0.01


class Harness:
    """One client of the flavour under test over a scripted transport; runs calls to their result."""

    def __init__(self, flavor: str, *scripts: Any, default: Any = (), healthy: Any = True, **options: Any) -> None:
        self.is_async = flavor == "async"
        transport_cls = AsyncScriptedTransport if self.is_async else ScriptedTransport
        self.transport = transport_cls(*scripts, default=default, healthy=healthy)
        client_cls = AsyncMentaLLaMAClient if self.is_async else MentaLLaMAClient
        options.setdefault("timeout", 10)
        self.client = client_cls(options.pop("endpoints", "fake:1"), transport=self.transport, **options)

    def call(self, method: str, *args: Any, client: Any = None, **kwargs: Any) -> Any:
        """``method`` of ``client`` (the harness's by default), run to its result."""
        result = getattr(client or self.client, method)(*args, **kwargs)
        return asyncio.run(result) if self.is_async else result

    def read(self, stream: Any, count: int | None = None) -> tuple[list[str], Any]:
        """Deltas read inside the stream's ``with`` block (``count`` of them, or all), then ``final()``."""
        if not self.is_async:
            deltas = []
            with stream:
                for delta in stream:
                    deltas.append(delta)
                    if len(deltas) == count:
                        break
            return deltas, stream.final()

        async def main() -> tuple[list[str], Any]:
            deltas = []
            async with stream:
                async for delta in stream:
                    deltas.append(delta)
                    if len(deltas) == count:
                        break
            return deltas, await stream.final()

        return asyncio.run(main())

    @property
    def sent(self) -> list[SentRequest]:
        return self.transport.requests


@pytest.fixture(params=["sync", "async"])
def flavor(request: pytest.FixtureRequest) -> str:
    return request.param


# --- the seam --------------------------------------------------------------------------------


def test_the_real_transports_and_the_doubles_fit_the_protocols():
    assert isinstance(SyncTransport(None), TransportProtocol) and isinstance(ScriptedTransport(), TransportProtocol)
    assert isinstance(AsyncTransport(None), AsyncTransportProtocol)
    assert isinstance(AsyncScriptedTransport(), AsyncTransportProtocol)
    assert not isinstance(object(), TransportProtocol)
    assert isinstance(MentaLLaMAClient("fake:1")._transport, SyncTransport)  # the default: gRPC
    assert isinstance(AsyncMentaLLaMAClient("fake:1")._transport, AsyncTransport)


# --- the request as sent -----------------------------------------------------------------------


def test_analysis_request_is_sent_as_built_and_the_answer_parsed(flavor):
    h = Harness(flavor, answer(*YES), headers={"X-Tenant": "lab-1"}, timeout=30)
    result = h.call("analyze", POST, "stress", chat=True, max_tokens=64, temperature=0.5, seed=7,
                    stop_words=["###"], request_id="r-1")  # fmt: skip
    [sent] = h.sent
    assert (sent.endpoint, sent.model, sent.id, sent.headers) == ("fake:1", "mentallama", "r-1", {"X-Tenant": "lab-1"})
    assert sent.prompt == build_prompt("stress", POST, chat=True)
    assert sent.inputs["max_tokens"] == 64 and sent.inputs["stream"] is True
    assert sent.inputs["temperature"] == pytest.approx(0.5) and sent.inputs["seed"] == 7
    assert sent.inputs["stop_words"] == ["###"]
    assert "top_k" not in sent.inputs and "beam_width" not in sent.inputs  # None: the server's default
    assert sent.inputs["exclude_input_in_output"] is True and sent.inputs["return_num_output_tokens"] is True
    assert 0 < sent.timeout <= 30
    assert isinstance(result, Analysis) and result.request_id == "r-1"
    assert result.raw == "".join(YES).lstrip() and result.label == "yes"
    assert (result.num_input_tokens, result.num_output_tokens) == (3, 2)
    assert result.finish_reason == "stop" and 0 < result.ttft_s <= result.latency_s


def test_request_ids_are_generated_distinct_and_sent(flavor):
    h = Harness(flavor)
    ids = [h.call("analyze", POST, "stress").request_id for _ in range(3)]
    assert len(set(ids)) == 3 and all(ids)
    assert h.transport.sent_ids == ids


def test_generate_sends_the_prompt_as_is_and_keeps_the_leading_space(flavor):
    h = Harness(flavor, answer(" Hi", " there"))
    result = h.call("generate", "Hello", max_tokens=2, stream=False, end_id=2, beam_width=1)
    assert h.sent[0].prompt == "Hello" and h.sent[0].inputs["stream"] is False
    assert h.sent[0].inputs["end_id"] == 2 and h.sent[0].inputs["beam_width"] == 1
    assert isinstance(result, Generation) and result.text == " Hi there"
    assert result.finish_reason == "length" and result.ttft_s is None  # a full budget; not streamed


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "match"),
    [
        ("analyze", ("   ", "depression"), {"request_id": "empty-post"}, "post"),
        ("analyze", (POST, "irf"), {}, "aspect"),
        ("analyze", (POST, "no-such-task"), {}, "task"),
        ("generate", ("Hello",), {"seed": -1}, "seed"),
        ("generate", (b"Hello",), {}, "must be a str"),
        ("analyze_many", ([POST, POST], "no-such-task"), {}, "task"),
    ],
)
def test_invalid_requests_are_refused_before_sending(flavor, method, args, kwargs, match):
    h = Harness(flavor)
    with pytest.raises(InvalidRequestError, match=match) as info:
        h.call(method, *args, **kwargs)
    assert info.value.status is None  # the SDK's own refusal
    assert info.value.request_id == kwargs.get("request_id", info.value.request_id)
    assert h.sent == []


def test_bad_batch_options_raise_before_sending(flavor):
    h = Harness(flavor)
    with pytest.raises(ValueError, match="concurrency"):
        h.call("generate_many", ["a", "b"], concurrency=0)
    with pytest.raises(ValueError, match="aspect has 1 values for 2 posts"):
        h.call("analyze_many", [POST, POST], "irf", aspect=["thwarted belongingness"])
    assert h.sent == []


# --- batches -----------------------------------------------------------------------------------


def test_analyze_many_keeps_input_order_runs_concurrently_and_isolates_failures(flavor):
    posts = [f"post number {i} about a long week" for i in range(6)]
    posts[1] = ""  # refused before sending
    refused = posts[4]

    def respond(sent: SentRequest) -> list[Any]:
        if refused in sent.prompt:
            return [Fail(grpc.StatusCode.INVALID_ARGUMENT, "max_tokens exceeds the limit")]
        index = next(i for i, p in enumerate(posts) if p and p in sent.prompt)
        return [Pause(0.05 * (6 - index)), *answer(f" answer {index}")]  # later posts answer first

    h = Harness(flavor, default=respond)
    seen: list[int] = []
    results = h.call("analyze_many", posts, "stress", concurrency=3, on_result=lambda i, _r: seen.append(i))
    assert sorted(seen) == list(range(6)) and seen[0] != 0  # reported as completed, not in input order
    assert isinstance(results[1], InvalidRequestError) and results[1].request_id and results[1].status is None
    assert isinstance(results[4], InvalidRequestError) and results[4].status is grpc.StatusCode.INVALID_ARGUMENT
    for i in (0, 2, 3, 5):
        assert isinstance(results[i], Analysis) and results[i].raw == f"answer {i}", (i, results[i])
    assert len(h.sent) == 5 and h.transport.max_in_flight == 3


def test_analyze_many_per_post_aspects(flavor):
    h = Harness(flavor)
    results = h.call("analyze_many", [POST, POST], "irf", aspect=["thwarted belongingness", None])
    assert isinstance(results[0], Analysis)
    assert isinstance(results[1], InvalidRequestError)  # Irf needs an aspect: that post alone fails
    assert len(h.sent) == 1 and "thwarted belongingness" in h.sent[0].prompt.lower()


def test_generate_many_keeps_order(flavor):
    prompts = ["first prompt", "second prompt", "third prompt"]

    def respond(sent: SentRequest) -> list[Any]:
        return [Pause(0.02 * (3 - prompts.index(sent.prompt))), *answer(" " + sent.prompt)]  # the last first

    h = Harness(flavor, default=respond)
    results = h.call("generate_many", prompts, concurrency=3, max_tokens=8)
    assert [r.text for r in results] == [" " + p for p in prompts]
    assert h.transport.max_in_flight == 3


def test_cancelling_analyze_many_cancels_the_requests_in_flight():
    transport = AsyncScriptedTransport(default=[Pause(5), *answer("late")])

    async def main() -> None:
        client = AsyncMentaLLaMAClient("fake:1", transport=transport)
        task = asyncio.create_task(client.analyze_many([POST] * 4, "stress", concurrency=2))
        while transport.in_flight < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert len(transport.left_early) == 2 and transport.in_flight == 0
    assert len(transport.requests) == 2  # the queued ones were never sent


# --- retries, backoff, failover ----------------------------------------------------------------


def test_failover_to_an_untried_endpoint_is_immediate_and_not_a_retry(flavor):
    policy = CountingPolicy(max_retries=0)
    h = Harness(flavor, [UNREACHABLE], endpoints=["a:1", "b:2"], retry_policy=policy)
    assert h.call("generate", "Hello").text == "ok"
    assert [r.endpoint for r in h.sent] == ["a:1", "b:2"] and policy.delays == []
    assert not h.client._pool.is_up("a:1")
    h.call("generate", "Hello")
    h.call("generate", "Hello")
    assert [r.endpoint for r in h.sent[2:]] == ["b:2", "b:2"]  # the down endpoint is skipped meanwhile


def test_a_retry_comes_after_every_endpoint_failed_once(flavor):
    policy = CountingPolicy(max_retries=1)
    h = Harness(flavor, [UNREACHABLE], [UNREACHABLE], endpoints=["a:1", "b:2"], retry_policy=policy)
    assert h.call("generate", "Hello").text == "ok"
    assert len(h.sent) == 3 and policy.delays == [0]  # a, b (failover), then one retry after backoff


def test_transient_failures_are_retried_with_growing_backoff(flavor):
    policy = CountingPolicy(max_retries=2)
    overloaded = Fail(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests")
    queue_full = Fail(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size")
    h = Harness(flavor, [overloaded], [queue_full], retry_policy=policy)
    assert h.call("generate", "Hello", request_id="r-2").text == "ok"
    assert policy.delays == [0, 1] and h.transport.sent_ids == ["r-2"] * 3
    assert h.client._pool.is_up("fake:1")  # a reachable server said it was busy: the endpoint stays up


def test_retries_give_up_with_the_last_error(flavor):
    policy = CountingPolicy(max_retries=2)
    h = Harness(flavor, default=[UNREACHABLE], retry_policy=policy)
    with pytest.raises(APIConnectionError) as info:
        h.call("analyze", POST, "depression", request_id="nowhere")
    assert info.value.status is grpc.StatusCode.UNAVAILABLE and info.value.request_id == "nowhere"
    assert policy.delays == [0, 1] and len(h.sent) == 3


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (Fail(grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be positive"), InvalidRequestError),
        (Fail(None, "in ensemble 'ensemble', top_p must be in (0, 1]"), InvalidRequestError),  # in band
        (Fail(grpc.StatusCode.NOT_FOUND, "Request for unknown model"), InvalidRequestError),
        (Fail(grpc.StatusCode.INTERNAL, "generation failed"), ServerError),
        (Fail(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), APITimeoutError),
    ],
)
def test_other_failures_are_raised_at_once_as_mapped(flavor, failure, error):
    policy = CountingPolicy(max_retries=3)
    h = Harness(flavor, default=[failure], endpoints=["a:1", "b:2"], retry_policy=policy)
    with pytest.raises(error) as info:
        h.call("generate", "Hello", request_id="r-3")
    assert type(info.value) is error and info.value.request_id == "r-3"
    assert len(h.sent) == 1 and policy.delays == []  # neither retried nor failed over


def test_a_broken_answer_is_sent_again_whole_by_calls_that_return_it_whole(flavor):
    broken = [StreamEvent(" partial", final=False), Fail(grpc.StatusCode.UNAVAILABLE, "Socket closed")]
    policy = CountingPolicy(max_retries=1)
    h = Harness(flavor, broken, answer(*YES), retry_policy=policy)
    result = h.call("analyze", POST, "stress")
    assert result.raw == "".join(YES).lstrip()  # nothing of the broken answer is kept
    assert len(h.sent) == 2 and policy.delays == [0]


def test_a_broken_stream_is_not_sent_again(flavor):
    broken = [StreamEvent(" partial", final=False), Fail(grpc.StatusCode.UNAVAILABLE, "Socket closed")]
    h = Harness(flavor, broken, retry_policy=CountingPolicy(max_retries=2))
    stream = h.client.generate_stream("Hello")
    with pytest.raises(APIConnectionError):
        h.read(stream)
    assert len(h.sent) == 1  # the caller has seen " partial": sending again would repeat it


def test_the_deadline_covers_the_call_and_is_not_retried(flavor):
    h = Harness(flavor, default=[Pause(5), *answer("late")], timeout=0.2)
    started = time.monotonic()
    with pytest.raises(APITimeoutError) as info:
        h.call("generate", "Hello", request_id="too-slow")
    assert time.monotonic() - started < 2
    assert info.value.request_id == "too-slow" and info.value.status is grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(h.sent) == 1 and h.sent[0].timeout <= 0.2


def test_no_retry_whose_backoff_would_pass_the_deadline(flavor):
    policy = RetryPolicy(max_retries=3, initial_delay=5.0, jitter=0)
    h = Harness(flavor, default=[UNREACHABLE], retry_policy=policy, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(APIConnectionError):
        h.call("generate", "Hello")
    assert time.monotonic() - started < 1 and len(h.sent) == 1


# --- streams -----------------------------------------------------------------------------------


def test_a_stream_sends_nothing_until_read_and_leaving_it_early_cancels_the_request(flavor):
    h = Harness(flavor, answer(" one", " two", " three"))
    stream = h.client.analyze_stream(POST, "stress", request_id="left")
    assert h.sent == []
    deltas, partial = h.read(stream, count=1)
    assert deltas == ["one"]  # an analysis drops the answer's leading space
    assert h.transport.left_early == ["left"] and h.transport.in_flight == 0
    assert partial.finish_reason == "cancelled" and partial.raw == "one" and partial.num_output_tokens is None


def test_a_stream_read_to_the_end_gives_deltas_and_final(flavor):
    h = Harness(flavor, answer(" Hi", " there"))
    deltas, final = h.read(h.client.generate_stream("Hello", max_tokens=2))
    assert deltas == [" Hi", " there"] and final.text == " Hi there"
    assert final.finish_reason == "length" and final.ttft_s is not None
    assert h.transport.left_early == []


def test_final_reads_the_rest_of_the_stream():
    transport = ScriptedTransport(answer(" a", " b", " c"))
    with MentaLLaMAClient("fake:1", transport=transport) as client:
        stream = client.generate_stream("Hello", max_tokens=16)
        first = next(stream)
        final = stream.final()
    assert first == " a" and final.text == " a b c" and final.num_output_tokens == 3
    assert final.finish_reason == "stop" and transport.left_early == []


# --- health, copies, closing -------------------------------------------------------------------


def test_health_is_true_when_any_endpoint_serves(flavor):
    h = Harness(flavor, endpoints=["a:1", "b:2"], healthy=["b:2"])
    assert h.call("health") is True
    assert h.transport.health_checks == ["a:1", "b:2"]
    assert Harness(flavor, endpoints=["a:1", "b:2"], healthy=False).call("health") is False


def test_copies_share_a_given_transport_and_only_the_client_closes_it(flavor):
    h = Harness(flavor)
    copy = h.client.with_options(timeout=5, endpoints=["other:1"])
    assert copy._transport is h.transport and copy.timeout == 5
    h.call("close", client=copy)
    assert not h.transport.closed  # a copy closes nothing it shares
    h.call("generate", "Hello")
    assert h.sent[-1].endpoint == "fake:1"
    other = (AsyncScriptedTransport if h.is_async else ScriptedTransport)()
    assert h.client.with_options(transport=other)._transport is other
    h.call("close")
    assert h.transport.closed and not other.closed
