"""Clients that cancel, vanish or run out of time, and clients that meet an overloaded server.

One real server for the module: 16 requests at most (16 running, none waiting), long generations
allowed, so that 16 streams fill it and a 17th request is refused as "server overloaded". The engine's
Prometheus gauges (requests active, requests tracked, KV-cache blocks used) show what the server holds.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import grpc
import pytest

from mentallama import (
    APITimeoutError,
    AsyncMentaLLaMAClient,
    InvalidRequestError,
    MentaLLaMAClient,
    ServerOverloadedError,
)
from mentallama_server.launch.cpu_profile import CpuSettings
from tests.reliability.rel_policy import RecordingPolicy
from tests.reliability.rel_servers import Replica, start_replicas, stop_all
from tests.server.triton_io import StreamCall, make_inputs
from tests.support.metrics import engine_gauges, wait_gauges
from tests.support.servers import loopback_options

pytestmark = pytest.mark.server
SLOTS = 16
LONG_TOKENS = 3000  # ~seconds of generation for the tiny model: far longer than any test waits
PROMPT = "Tell me a story about a long night"


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory) -> Iterator[Replica]:
    settings = CpuSettings(
        engine_max_batch_size=SLOTS,
        max_queue_size=0,
        max_input_len=512,  # with LONG_TOKENS, within the tiny model's 4096-token context
        max_output_len=LONG_TOKENS,
        cache_num_blocks=1024,
    )
    replica = Replica(tiny_checkpoint, settings, loopback_options(), tmp_path_factory.mktemp("clients"))
    start_replicas([replica])
    try:
        yield replica
    finally:
        stop_all([replica])


@pytest.fixture(autouse=True)
def idle_after(server: Replica) -> Iterator[None]:
    """Every test leaves the engine idle, so that the next one starts with every slot free, and every
    model's process alive (Triton keeps reporting ready when one died)."""
    yield
    gauges, _ = wait_gauges(server.metrics_url, lambda g: g.idle, timeout_s=30)
    assert gauges.idle, gauges
    assert server.health_problem() is None, server.health_problem()


def _long(**extra: object) -> dict[str, object]:
    return dict(max_tokens=LONG_TOKENS, min_tokens=LONG_TOKENS, **extra)


def test_sixteen_streams_cancelled_together_free_their_slots_and_cache(server):
    baseline = engine_gauges(server.metrics_url)
    assert baseline.idle and baseline.blocks_used is not None

    async def main() -> None:
        async with AsyncMentaLLaMAClient(server.grpc_url, timeout=120) as client:
            started = [asyncio.Event() for _ in range(SLOTS)]

            async def consume(i: int) -> None:
                async for _ in client.generate_stream(f"{PROMPT} number {i}", **_long()):
                    started[i].set()

            tasks = [asyncio.create_task(consume(i)) for i in range(SLOTS)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
            busy, _ = await asyncio.to_thread(wait_gauges, server.metrics_url, lambda g: g.tracked == SLOTS)
            assert busy.tracked == SLOTS and busy.active and busy.blocks_used > baseline.blocks_used, busy
            for task in tasks:  # all at once
                task.cancel()
            for task in tasks:
                with suppress(asyncio.CancelledError):
                    await task

    asyncio.run(main())
    after, seconds = wait_gauges(server.metrics_url, lambda g: g.idle and g.blocks_used == baseline.blocks_used)
    assert after.idle and after.blocks_used == baseline.blocks_used, after
    assert seconds < 5


VANISHING_CLIENT = textwrap.dedent(
    """
    import queue, sys, time
    sys.path.insert(0, {root!r})
    from tests.server.triton_io import StreamCall, make_inputs
    calls = [StreamCall({url!r}, "mentallama", make_inputs("{prompt} " + str(i), {n}, stream=True, min_tokens={n}))
             for i in range({slots})]
    for call in calls:
        call.next(60)
    print("streaming", flush=True)
    time.sleep(120)  # killed by the test long before
    """
)


def test_clients_killed_mid_stream_free_their_slots_and_cache(server):
    """A client process that dies (no cancel sent, its TCP connections just drop)."""
    baseline = engine_gauges(server.metrics_url)
    script = VANISHING_CLIENT.format(
        root=str(Path(__file__).resolve().parents[2]), url=server.grpc_url, prompt=PROMPT, n=LONG_TOKENS, slots=SLOTS
    )
    client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "streaming"
        # The gauges are refreshed every 50 ms: wait for the last stream to show up in them.
        busy, _ = wait_gauges(server.metrics_url, lambda g: g.tracked == SLOTS)
        assert busy.tracked == SLOTS and busy.blocks_used > baseline.blocks_used, busy
    finally:
        client.kill()
        client.wait(10)
    after, seconds = wait_gauges(server.metrics_url, lambda g: g.idle and g.blocks_used == baseline.blocks_used)
    assert after.idle and after.blocks_used == baseline.blocks_used, after
    assert seconds < 5


def test_expired_deadline_cancels_the_server_side_work(server):
    with MentaLLaMAClient(server.grpc_url, timeout=120, max_retries=0) as client:
        sample = 300
        started = time.monotonic()
        assert client.generate(PROMPT, max_tokens=sample, min_tokens=sample).num_output_tokens == sample
        full_generation_s = (time.monotonic() - started) * LONG_TOKENS / sample  # a lower bound: steps slow down
        timeout = min(0.5, full_generation_s / 5)  # the OpenVINO tiny engine makes 3,000 tokens in about a second
        started = time.monotonic()
        with pytest.raises(APITimeoutError) as info:
            client.generate(PROMPT, timeout=timeout, request_id="deadline-1", **_long())
    assert info.value.request_id == "deadline-1" and info.value.status is grpc.StatusCode.DEADLINE_EXCEEDED
    gauges, _ = wait_gauges(server.metrics_url, lambda g: g.idle, timeout_s=full_generation_s)
    freed_after_s = time.monotonic() - started
    assert gauges.idle, gauges
    assert freed_after_s < min(timeout + 3, full_generation_s / 2), (freed_after_s, full_generation_s)


def _fill(server: Replica) -> list[StreamCall]:
    """Occupy every slot of the engine with long streams."""
    calls = [
        StreamCall(server.grpc_url, "mentallama", make_inputs(f"{PROMPT} {i}", LONG_TOKENS, stream=True,
                                                              min_tokens=LONG_TOKENS))
        for i in range(SLOTS)
    ]  # fmt: skip
    for call in calls:
        call.next(60)
    gauges, _ = wait_gauges(server.metrics_url, lambda g: g.tracked == SLOTS)
    assert gauges.tracked == SLOTS, gauges
    return calls


def _release(calls: list[StreamCall]) -> None:
    for call in calls:
        call.close()


def test_sdk_retries_overload_with_backoff_but_not_invalid_requests(server):
    holders = _fill(server)
    try:
        policy = RecordingPolicy(max_retries=2, delay_scale=0.02)
        with MentaLLaMAClient(server.grpc_url, retry_policy=policy, timeout=30) as client:
            with pytest.raises(ServerOverloadedError) as info:
                client.generate("Hello", max_tokens=4, request_id="refused-1")
            assert info.value.status is grpc.StatusCode.UNAVAILABLE and "overloaded" in info.value.message
            assert info.value.request_id == "refused-1"
            assert policy.delays == [0, 1]  # two retries, growing backoff, then the error
            assert client._pool.is_up(server.grpc_url)  # a reachable, busy server is not marked down

            invalid = RecordingPolicy(max_retries=2, delay_scale=0.02)
            with pytest.raises(InvalidRequestError) as info:
                client.with_options(retry_policy=invalid).generate("Hello", max_tokens=0)
            assert info.value.status is grpc.StatusCode.INVALID_ARGUMENT
            assert invalid.delays == []  # refused as sent: never retried, even while overloaded
    finally:
        _release(holders)


def test_sdk_backs_off_until_the_overload_clears(server):
    holders = _fill(server)
    policy = RecordingPolicy(max_retries=6, initial_delay=0.5, max_delay=2.0)
    outcome: dict[str, object] = {}

    def call() -> None:
        with MentaLLaMAClient(server.grpc_url, retry_policy=policy, timeout=60) as client:
            outcome["result"] = client.generate("Hello", max_tokens=4)

    worker = threading.Thread(target=call)
    try:
        worker.start()
        deadline = time.monotonic() + 30
        while not policy.delays and time.monotonic() < deadline:
            time.sleep(0.02)
        assert policy.delays, "the SDK was never refused"
    finally:
        _release(holders)
        worker.join(60)
    assert outcome["result"].num_output_tokens == 4  # type: ignore[union-attr]
    assert 1 <= len(policy.delays) <= 6
