"""Overload: past the configured limits, requests are refused at once instead of queueing unboundedly."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.launcher import ServerOptions, TritonProcess
from mentallama_server.launch.serve_cpu import start_cpu_server
from tests.server.triton_io import StreamCall, infer, make_inputs
from tests.support.metrics import scrape_metric

pytestmark = pytest.mark.server
LONG = "Consider this post: I can't sleep. Question: Does the poster suffer from depression?"


@pytest.fixture(scope="module")
def small_server(tiny_checkpoint, tmp_path_factory) -> Iterator[tuple[str, str, TritonProcess]]:
    # 2 running + 2 waiting requests at most.
    # Long generations (the tiny model makes ~500 tokens/s) keep the engine full while the test probes it.
    settings = CpuSettings(
        engine_max_batch_size=2, max_queue_size=2, max_input_len=1024, max_output_len=3000, cache_num_blocks=512
    )
    opts = ServerOptions.on_free_ports()
    server = start_cpu_server(str(tiny_checkpoint), settings, opts, tmp_path_factory.mktemp("overload"))
    try:
        yield opts.grpc_url, opts.metrics_url, server
    finally:
        server.stop()


def _wait_for_full_engine(metrics: str, holders: list[StreamCall], server: TritonProcess) -> None:
    """Wait until the engine holds all four requests; on timeout, fail with what each side saw."""
    seen: list[tuple[float, float | None]] = []
    started = time.monotonic()
    while time.monotonic() - started < 60:
        tracked = scrape_metric(metrics, "mentallama_engine_tracked_requests")
        if not seen or seen[-1][1] != tracked:
            seen.append((round(time.monotonic() - started, 2), tracked))
        if tracked == 4:
            return
        time.sleep(0.05)
    ended = [call.peek() for call in holders]
    pytest.fail(
        f"the engine never held 4 requests; tracked gauge (s, value): {seen}; holders: {ended}; "
        f"server log:\n{server.log_tail(40)}"
    )


@pytest.mark.parametrize("model", ["mentallama", "ensemble"])
def test_excess_requests_are_refused_quickly_and_service_recovers(small_server, model):
    url, metrics, server = small_server
    holders = [
        StreamCall(url, model, make_inputs(LONG, 3000, stream=True, min_tokens=3000)) for _ in range(4)
    ]
    try:
        _wait_for_full_engine(metrics, holders, server)  # two running, two waiting in the engine
        started = time.monotonic()
        refused = infer(url, model, "Hello", 4)
        assert time.monotonic() - started < 5
        assert refused.error is not None and "overloaded" in refused.error, (
            f"admitted past the limit; holders: {[call.peek() for call in holders]}"
        )
    finally:
        for call in holders:
            call.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = infer(url, model, "Hello", 4)
        if result.error is None:
            break
        time.sleep(0.5)
    assert result.error is None and result.text
