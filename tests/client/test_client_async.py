"""AsyncMentaLLaMAClient against a real tritonserver (CPU profile, tiny random-weight checkpoint).

Each test runs its own event loop with ``asyncio.run`` (grpc.aio channels belong to one loop).
Structure, counts, mode equality and cancellation on the server are checked, never labels; the
client's own logic is tested over the scripted transport in test_client_logic.py.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest

from mentallama import Analysis, AsyncMentaLLaMAClient, MentaLLaMAClient, build_prompt
from tests.support.metrics import wait_engine

POST = "Work has been piling up for weeks and my manager keeps adding more tasks to my list."
LONG = {"max_tokens": 1024, "min_tokens": 1024}  # the server's limit: ~1 s even for the fast tiny engine


def test_sync_and_async_clients_have_identical_signatures():
    for name in ("__init__", "analyze", "analyze_stream", "analyze_many", "generate", "generate_stream",
                 "generate_many", "health", "close", "with_options"):  # fmt: skip
        sync, aio = getattr(MentaLLaMAClient, name), getattr(AsyncMentaLLaMAClient, name)
        # Parameters, names, defaults and annotations alike; only the return types differ (Async*Stream).
        assert inspect.signature(sync).parameters == inspect.signature(aio).parameters, name
    # Both take the transport seam last, keyword-only and off by default (the gRPC transport).
    transport = list(inspect.signature(MentaLLaMAClient.__init__).parameters.values())[-1]
    assert (transport.name, transport.kind, transport.default) == ("transport", transport.KEYWORD_ONLY, None)


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
                await asyncio.to_thread(wait_engine, cpu_server.metrics_url, True, 2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                partial = stream.generation
                await asyncio.to_thread(wait_engine, cpu_server.metrics_url, False, 5)
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
                await asyncio.to_thread(wait_engine, cpu_server.metrics_url, False, 5)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(client.generate("Tell me a story", **LONG), timeout=0.3)
                await asyncio.to_thread(wait_engine, cpu_server.metrics_url, False, 5)

        asyncio.run(main())

    def test_one_client_in_two_event_loops(self, cpu_server):
        client = AsyncMentaLLaMAClient(cpu_server.grpc_url)

        async def call():
            return await client.generate("Hello", max_tokens=3)

        first, second = asyncio.run(call()), asyncio.run(call())  # new loop: new channels, no hang
        assert first.text == second.text and second.num_output_tokens == 3
        asyncio.run(client.close())
