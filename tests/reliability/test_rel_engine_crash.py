"""The engine's Python process dies (SIGKILL of the `tensorrt_llm` stub) while streams are in flight.

Triton 2.51 keeps those requests waiting on the dead process forever, so without the launcher a client
would wait for its own deadline. `mentallama-serve` notices the dead process within a second, kills the
server without a drain (nothing in flight can finish) and exits with code 3 for its supervisor to
restart it: the clients' streams end with a connection error within seconds, and none hangs.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from mentallama import APIConnectionError, MentaLLaMAClient, MentaLLaMAError
from tests.reliability.rel_launched import LaunchedServer

pytestmark = pytest.mark.server
STREAMS = 4
WITHIN_S = 8.0


def test_in_flight_streams_end_with_an_error_within_seconds_when_the_engine_dies(tiny_checkpoint, tmp_path):
    with LaunchedServer(tiny_checkpoint, tmp_path, "--max-output-len=2000", "--cache-num-blocks=512") as server:
        server.wait_ready()
        started = [threading.Event() for _ in range(STREAMS)]
        ended: dict[int, tuple[BaseException | None, float]] = {}
        client = MentaLLaMAClient(server.grpc_url, timeout=120, max_retries=0)

        def consume(i: int) -> None:
            error: BaseException | None = None
            try:
                for _ in client.generate_stream("Tell me a story", max_tokens=2000, min_tokens=2000,
                                                request_id=f"crash-{i}"):  # fmt: skip
                    started[i].set()
            except MentaLLaMAError as exc:
                error = exc
            ended[i] = (error, time.monotonic())

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(STREAMS)]
        for thread in threads:
            thread.start()
        assert all(event.wait(60) for event in started)
        server.stubs()["tensorrt_llm"].kill()
        killed_at = time.monotonic()
        for thread in threads:
            thread.join(WITHIN_S + 30)
        assert not any(thread.is_alive() for thread in threads), "a stream hung"
        for i, (error, at) in sorted(ended.items()):
            assert isinstance(error, APIConnectionError) and error.status is grpc.StatusCode.UNAVAILABLE, error
            assert error.request_id == f"crash-{i}"
            assert at - killed_at < WITHIN_S, at - killed_at
        assert server.proc.wait(30) == 3
        client.close()
    assert "tensorrt_llm" in server.output and "died" in server.output
