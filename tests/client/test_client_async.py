"""AsyncMentaLLaMAClient against a real tritonserver (CPU profile, tiny random-weight checkpoint).

Each test runs its own event loop with ``asyncio.run`` (grpc.aio channels belong to one loop).
Structure, counts, mode equality and errors are checked, never labels.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
import urllib.request

import grpc
import pytest

from mentallama import (
    Analysis,
    APITimeoutError,
    AsyncMentaLLaMAClient,
    Generation,
    InvalidRequestError,
    MentaLLaMAClient,
    build_prompt,
)

POST = "Work has been piling up for weeks and my manager keeps adding more tasks to my list."
LONG = {"max_tokens": 1024, "min_tokens": 1024}  # the server's limit: ~1 s even for the fast tiny engine


def dead_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def active_requests(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("mentallama_engine_requests{") and 'state="active"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("gauge mentallama_engine_requests missing from the server's metrics")


async def wait_engine_busy(metrics_url: str, within_s: float = 2.0) -> None:
    """Until the engine reports an active request (the gauge is sampled every 50 ms, so poll)."""
    start = time.monotonic()
    while await asyncio.to_thread(active_requests, metrics_url) < 1:
        if time.monotonic() - start > within_s:
            raise AssertionError(f"no active engine request seen within {within_s} s")
        await asyncio.sleep(0.02)


async def wait_engine_idle(metrics_url: str, within_s: float = 5.0) -> None:
    start = time.monotonic()
    while await asyncio.to_thread(active_requests, metrics_url) != 0:
        if time.monotonic() - start > within_s:
            raise AssertionError(f"engine still has active requests after {within_s} s")
        await asyncio.sleep(0.05)


def test_sync_and_async_clients_have_identical_signatures():
    for name in ("__init__", "analyze", "analyze_stream", "analyze_many", "generate", "generate_stream",
                 "generate_many", "health", "close", "with_options"):  # fmt: skip
        sync, aio = getattr(MentaLLaMAClient, name), getattr(AsyncMentaLLaMAClient, name)
        # Parameters, names, defaults and annotations alike; only the return types differ (Async*Stream).
        assert inspect.signature(sync).parameters == inspect.signature(aio).parameters, name


@pytest.mark.server
class TestAsyncClient:
    def test_analyze_and_generate(self, cpu_server):
        async def main():
            async with AsyncMentaLLaMAClient(cpu_server.grpc_url, timeout=60) as client:
                assert await client.health()
                analysis = await client.analyze(POST, "stress", max_tokens=24, request_id="async-1")
                generation = await client.generate(build_prompt("stress", POST), max_tokens=24)
                return analysis, generation

        analysis, generation = asyncio.run(main())
        assert isinstance(analysis, Analysis) and analysis.task == "dreaddit"
        assert analysis.request_id == "async-1"
        assert analysis.raw == generation.text.lstrip()
        assert analysis.num_output_tokens == generation.num_output_tokens >= 1
        assert 0 < analysis.ttft_s <= analysis.latency_s

    def test_sync_and_async_give_the_same_greedy_answer(self, cpu_server):
        async def main():
            async with AsyncMentaLLaMAClient(cpu_server.grpc_url) as client:
                return await client.analyze(POST, "SAD", max_tokens=32)

        with MentaLLaMAClient(cpu_server.grpc_url) as client:
            expected = client.analyze(POST, "SAD", max_tokens=32)
        got = asyncio.run(main())
        assert (got.raw, got.label) == (expected.raw, expected.label)
        assert got.num_input_tokens == expected.num_input_tokens

    def test_stream_deltas_concatenate_to_non_streamed_text(self, cpu_server):
        async def main():
            async with AsyncMentaLLaMAClient(cpu_server.grpc_url) as client:
                whole = await client.generate("Once upon a time", max_tokens=40)
                async with client.generate_stream("Once upon a time", max_tokens=40) as stream:
                    deltas = [d async for d in stream]
                analysis_stream = client.analyze_stream(POST, "depression", max_tokens=40)
                async with analysis_stream:
                    text = "".join([d async for d in analysis_stream])
                expected = await client.analyze(POST, "depression", max_tokens=40)
                return whole, deltas, await stream.final(), text, analysis_stream.analysis, expected

        whole, deltas, final, text, streamed, expected = asyncio.run(main())
        assert len(deltas) > 1 and "".join(deltas) == whole.text == final.text
        assert final.num_output_tokens == whole.num_output_tokens
        assert text == streamed.raw == expected.raw
        assert streamed.num_output_tokens == expected.num_output_tokens

    def test_analyze_many_order_and_one_bad_item(self, cpu_server):
        posts = [POST, "", "short post", POST + " And the weekend is gone too."]

        async def main():
            async with AsyncMentaLLaMAClient(cpu_server.grpc_url) as client:
                results = await client.analyze_many(posts, "depression", max_tokens=6, concurrency=4)
                singles = [await client.analyze(posts[i], "depression", max_tokens=6) for i in (0, 2, 3)]
                generations = await client.generate_many(["Hi", "Hello there, how are you"], max_tokens=4)
                return results, singles, generations

        results, singles, generations = asyncio.run(main())
        assert isinstance(results[1], InvalidRequestError)
        for result, single in zip([results[0], results[2], results[3]], singles, strict=True):
            assert isinstance(result, Analysis)
            assert (result.num_input_tokens, result.raw) == (single.num_input_tokens, single.raw)
        assert all(isinstance(g, Generation) for g in generations)
        assert generations[0].num_input_tokens < generations[1].num_input_tokens

    def test_task_cancellation_cancels_the_server_request(self, cpu_server):
        async def main():
            async with AsyncMentaLLaMAClient(cpu_server.grpc_url) as client:
                stream = client.generate_stream("Tell me a story", **LONG)
                seen: list[str] = []

                async def consume():
                    async for delta in stream:
                        seen.append(delta)

                task = asyncio.create_task(consume())
                while len(seen) < 3:
                    await asyncio.sleep(0.01)
                await wait_engine_busy(cpu_server.metrics_url)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                partial = stream.generation
                await wait_engine_idle(cpu_server.metrics_url)
                return seen, partial

        seen, partial = asyncio.run(main())
        assert partial.finish_reason == "cancelled"
        assert partial.text == "".join(seen)

    def test_breaking_out_of_a_stream_and_awaited_call_cancellation(self, cpu_server):
        async def main():
            async with AsyncMentaLLaMAClient(cpu_server.grpc_url) as client:
                async with client.analyze_stream(POST, "depression", **LONG) as stream:
                    async for _ in stream:
                        break
                assert stream.analysis.finish_reason == "cancelled"
                await wait_engine_idle(cpu_server.metrics_url)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(client.generate("Tell me a story", **LONG), timeout=0.3)
                await wait_engine_idle(cpu_server.metrics_url)

        asyncio.run(main())

    def test_deadline_and_failover(self, cpu_server):
        async def main():
            async with AsyncMentaLLaMAClient([dead_endpoint(), cpu_server.grpc_url], max_retries=0) as client:
                ok = await client.analyze_many(["a post", "another", "a 3rd post"], "stress", max_tokens=4)
                with pytest.raises(APITimeoutError) as info:
                    await client.generate("Hello", timeout=0.2, request_id="async-slow", **LONG)
                return ok, info.value

        ok, error = asyncio.run(main())
        assert all(isinstance(r, Analysis) for r in ok), ok
        assert error.request_id == "async-slow" and error.status is grpc.StatusCode.DEADLINE_EXCEEDED

    def test_one_client_in_two_event_loops(self, cpu_server):
        client = AsyncMentaLLaMAClient(cpu_server.grpc_url)

        async def call():
            return await client.generate("Hello", max_tokens=3)

        first, second = asyncio.run(call()), asyncio.run(call())  # new loop: new channels, no hang
        assert first.text == second.text and second.num_output_tokens == 3
        asyncio.run(client.close())
