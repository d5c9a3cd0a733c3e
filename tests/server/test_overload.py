"""Overload: past the configured limits, requests are refused at once instead of queueing unboundedly."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mentallama_server.launcher import ServerOptions, free_port
from mentallama_server.serve import start_cpu_server
from mentallama_server.settings import CpuSettings
from tests.server.triton_io import StreamCall, infer, make_inputs, scrape_metric

pytestmark = pytest.mark.server
LONG = "Consider this post: I can't sleep. Question: Does the poster suffer from depression?"


@pytest.fixture(scope="module")
def small_server(tiny_checkpoint, tmp_path_factory) -> Iterator[tuple[str, str]]:
    # 2 running + 2 waiting requests at most.
    # Long generations (the tiny model makes ~500 tokens/s) keep the engine full while the test probes it.
    settings = CpuSettings(engine_max_batch_size=2, max_queue_size=2, max_output_len=3000, cache_num_blocks=512)
    opts = ServerOptions(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server = start_cpu_server(str(tiny_checkpoint), settings, opts, tmp_path_factory.mktemp("overload"))
    try:
        yield f"127.0.0.1:{opts.grpc_port}", f"http://127.0.0.1:{opts.metrics_port}/metrics"
    finally:
        server.stop()


@pytest.mark.parametrize("model", ["mentallama", "ensemble"])
def test_excess_requests_are_refused_quickly_and_service_recovers(small_server, model):
    url, metrics = small_server
    holders = [
        StreamCall(url, model, make_inputs(LONG, 3000, stream=True, min_tokens=3000)) for _ in range(4)
    ]
    try:
        deadline = time.monotonic() + 30
        while scrape_metric(metrics, "mentallama_engine_tracked_requests") != 4 and time.monotonic() < deadline:
            time.sleep(0.05)  # two running, two waiting in the engine
        started = time.monotonic()
        refused = infer(url, model, "Hello", 4)
        assert time.monotonic() - started < 5
        assert refused.error is not None and "overloaded" in refused.error
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
