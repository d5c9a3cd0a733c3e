"""The launcher's wedge detection: a model with requests waiting and none executed is a health problem."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from mentallama_server.launch.stall_watch import Canary, ModelProgress, StallWatch, parse_progress, read_progress

PAGE = """# HELP nv_inference_count Number of inferences performed
nv_inference_count{model="mentallama",version="1"} 120
nv_inference_count{model="tensorrt_llm",version="1"} 80
nv_inference_pending_request_count{model="mentallama",version="1"} 3
nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 0
nv_inference_exec_count{model="mentallama",version="1"} 999
"""


def test_progress_is_read_per_model_from_the_prometheus_page() -> None:
    assert parse_progress(PAGE) == {
        "mentallama": ModelProgress(pending=3.0, executed=120.0),
        "tensorrt_llm": ModelProgress(pending=0.0, executed=80.0),
    }


def test_waiting_requests_without_progress_for_the_timeout_are_a_stall() -> None:
    watch = StallWatch(stall_s=60)
    stuck = {"mentallama": ModelProgress(pending=3, executed=120)}
    assert watch.update(stuck, now=0) == []
    assert watch.update(stuck, now=59) == []
    assert watch.update(stuck, now=60) == ["mentallama"]


def test_progress_or_an_empty_queue_restarts_the_clock() -> None:
    watch = StallWatch(stall_s=60)
    watch.update({"m": ModelProgress(pending=2, executed=10)}, now=0)
    assert watch.update({"m": ModelProgress(pending=2, executed=11)}, now=50) == []  # executed one: not stuck
    assert watch.update({"m": ModelProgress(pending=2, executed=11)}, now=100) == []  # 50 s since progress
    assert watch.update({"m": ModelProgress(pending=0, executed=11)}, now=105) == []
    assert watch.update({"m": ModelProgress(pending=1, executed=11)}, now=106) == []  # a new wait
    assert watch.update({"m": ModelProgress(pending=1, executed=11)}, now=166) == ["m"]


def test_an_unreadable_metrics_page_judges_nothing() -> None:
    from tests.support.endpoints import dead_endpoint

    assert read_progress(f"http://{dead_endpoint()}/metrics", timeout_s=1) is None


@pytest.mark.server
def test_a_busy_healthy_server_is_not_stalled(cpu_server) -> None:
    from mentallama import MentaLLaMAClient

    progress = read_progress(cpu_server.metrics_url)
    assert progress is not None and {"mentallama", "tensorrt_llm", "ensemble"} <= set(progress)
    watch = StallWatch(stall_s=0.5)
    with MentaLLaMAClient(cpu_server.grpc_url, timeout=60) as client:
        for _ in range(3):
            client.generate("Hello", max_tokens=8)
            assert watch.update(read_progress(cpu_server.metrics_url), now=0) == []


class _Answering(http.server.BaseHTTPRequestHandler):
    """A test double of Triton's HTTP generate endpoint: answers per its `mode`."""

    mode = "ok"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.mode == "silent":
            time.sleep(2)
            return
        self.send_response(200 if self.mode == "ok" else 503)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize(("mode", "answered"), [("ok", True), ("overloaded", True), ("silent", False)])
def test_canary_counts_any_answer_and_misses_silence(mode: str, answered: bool) -> None:
    handler = type("Handler", (_Answering,), {"mode": mode})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        canary = Canary(f"http://127.0.0.1:{server.server_port}", "mentallama", timeout_s=0.5, misses=2)
        assert canary.probe() is answered
    finally:
        server.shutdown()


def test_canary_is_wedged_after_misses_in_a_row() -> None:
    from tests.support.endpoints import dead_endpoint

    canary = Canary(f"http://{dead_endpoint()}", "mentallama", interval_s=0.05, timeout_s=0.2, misses=2).start()
    try:
        deadline = time.monotonic() + 5
        while not canary.wedged and time.monotonic() < deadline:
            time.sleep(0.05)
        assert canary.wedged
    finally:
        canary.stop()


@pytest.mark.server
def test_canary_is_answered_by_the_real_front_model(cpu_server) -> None:
    assert Canary(cpu_server.http_url, "mentallama").probe()
