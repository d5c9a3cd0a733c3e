"""The launcher's wedge detection: a model with requests waiting and none executed is a health problem; a
request that waits unanswered is a wedge only while nothing in the server progresses (a busy server is not
wedged, issue 18 item 3)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mentallama_server.launch.stall_watch import (
    Canary,
    Liveness,
    ModelProgress,
    StallWatch,
    parse_progress,
    parse_work_done,
    read_progress,
    read_work_done,
)
from tests.support.http_double import QuietHandler, serving
from tests.support.metrics import scrape_metric

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


# --- liveness from progress ----------------------------------------------------------------------------

WORK_PAGE = """# TYPE mentallama_engine_tokens_total counter
mentallama_engine_tokens_total 5120
mentallama_front_responses_total 77
nv_inference_count{model="mentallama",version="1"} 120
nv_trt_llm_general_metrics{general_type="iteration_counter",model="tensorrt_llm",version="1"} 901
nv_trt_llm_general_metrics{general_type="timestamp",model="tensorrt_llm",version="1"} 1.7e+15
"""


def test_work_counters_are_read_from_the_prometheus_page() -> None:
    # Request counts are left out: a wedged stub still takes requests in (the canary's own among them).
    assert parse_work_done(WORK_PAGE) == {
        "mentallama_engine_tokens_total": 5120.0,
        "mentallama_front_responses_total": 77.0,
        'nv_trt_llm_general_metrics{general_type="iteration_counter",model="tensorrt_llm",version="1"}': 901.0,
    }


def test_a_request_waiting_behind_ten_minutes_of_work_is_never_a_wedge() -> None:
    liveness = Liveness(quiet_s=50)
    liveness.sent(now=0)
    for tick in range(0, 600 * 5 + 1, 5):  # a reading every 5 s, one more token each time
        liveness.observe({"mentallama_engine_tokens_total": float(tick)}, now=tick / 5)
        assert not liveness.wedged(now=tick / 5 + 4.9)
    assert liveness.waited_for(now=600) == 600


def test_a_request_waiting_while_nothing_progresses_is_a_wedge_after_quiet_s() -> None:
    liveness = Liveness(quiet_s=50)
    liveness.observe({"tokens": 1.0}, now=0)
    liveness.observe({"tokens": 2.0}, now=5)  # progress before the request does not excuse its wait
    liveness.sent(now=10)
    liveness.observe({"tokens": 2.0}, now=15)
    liveness.observe(None, now=20)  # an unreadable page is no progress
    liveness.sent(now=30)  # sent again: the wait goes on from the first
    assert not liveness.wedged(now=59.9)
    assert liveness.wedged(now=60)
    liveness.answered()
    assert not liveness.wedged(now=1000) and liveness.quiet_for(now=1000) == 0


def test_the_wedge_clock_starts_again_at_the_last_progress() -> None:
    liveness = Liveness(quiet_s=50)
    liveness.observe({"responses": 1.0}, now=0)
    liveness.sent(now=0)
    liveness.observe({"responses": 2.0}, now=40)  # the server finished something while the request waited
    assert not liveness.wedged(now=89.9)
    assert liveness.wedged(now=90)


def test_nothing_waiting_is_never_a_wedge() -> None:
    liveness = Liveness(quiet_s=1)
    liveness.observe({"tokens": 1.0}, now=0)
    assert not liveness.wedged(now=3600)


def test_default_canary_reports_a_wedge_within_90_s() -> None:
    canary = Canary("http://127.0.0.1:1", "mentallama", "http://127.0.0.1:1/metrics")
    # Worst case: the wedge comes just after an answer, and the last reading before it showed progress. Then the
    # next request starts interval_s later; quiet_s after it, the next reading (poll_s, plus a read of up to
    # 2 s) sees it; the launcher looks once a second.
    assert canary.interval_s + canary.quiet_s + canary.poll_s + canary.read_timeout_s + 1 < 90
    # And a busy server's request may wait a good while before anything is judged.
    assert canary.quiet_s >= 45


class _Answering(QuietHandler):
    """A test double of Triton's HTTP generate endpoint and metrics page: answers per its `mode`; the metrics
    page's token counter moves at each read while `busy` is set."""

    mode = "ok"
    busy = threading.Event()
    tokens = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.mode == "silent":
            time.sleep(30)
            return
        self.send_response(200 if self.mode == "ok" else 503)
        self.end_headers()
        self.wfile.write(b"{}")

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.busy.is_set():
            type(self).tokens += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(f"mentallama_engine_tokens_total {self.tokens}\n".encode())


@pytest.fixture
def double() -> Iterator[tuple[type[_Answering], str]]:
    """A fresh test double class (its own mode, busy flag and counter) serving on a free loopback port."""
    handler = type("Handler", (_Answering,), {"mode": "ok", "busy": threading.Event(), "tokens": 0})
    with serving(handler) as url:
        yield handler, url


@pytest.mark.parametrize(("mode", "answered"), [("ok", True), ("overloaded", True), ("silent", False)])
def test_canary_counts_any_answer_and_misses_silence(double, mode: str, answered: bool) -> None:
    handler, url = double
    handler.mode = mode
    assert Canary(url, "mentallama", request_timeout_s=0.5).probe() is answered


def _wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_an_unanswered_canary_is_busy_while_work_progresses_and_wedged_when_it_stops(double) -> None:
    handler, url = double
    handler.mode = "silent"
    handler.busy.set()
    canary = Canary(url, "mentallama", f"{url}/metrics", interval_s=0.01, quiet_s=0.5, poll_s=0.05).start()
    try:
        assert _wait_until(lambda: canary.liveness.waited_for(time.monotonic()) > 2.5, timeout_s=10)
        assert not canary.wedged  # five times quiet_s unanswered, but the counter moved: busy
        handler.busy.clear()
        stopped = time.monotonic()
        assert _wait_until(lambda: canary.wedged, timeout_s=10)
        assert 0.4 <= time.monotonic() - stopped < 5  # quiet_s from the last progress seen, a poll before
    finally:
        canary.stop()


def test_an_answering_canary_is_never_wedged_even_on_an_idle_server(double) -> None:
    _, url = double
    canary = Canary(url, "mentallama", f"{url}/metrics", interval_s=0.01, quiet_s=0.5, poll_s=0.02).start()
    try:
        assert _wait_until(lambda: canary.answers >= 20, timeout_s=10)
        assert not canary.wedged
    finally:
        canary.stop()


def test_canary_without_an_answer_or_a_metrics_page_is_wedged() -> None:
    from tests.support.endpoints import dead_endpoint

    canary = Canary(f"http://{dead_endpoint()}", "mentallama", interval_s=0.05, quiet_s=0.2, poll_s=0.05).start()
    try:
        assert _wait_until(lambda: canary.wedged, timeout_s=5)
    finally:
        canary.stop()


@pytest.mark.server
def test_canary_is_answered_by_the_real_front_model(cpu_server) -> None:
    assert Canary(cpu_server.http_url, "mentallama").probe()


@pytest.mark.server
def test_the_real_server_counts_the_work_it_does(cpu_server) -> None:
    from mentallama import MentaLLaMAClient

    before = read_work_done(cpu_server.metrics_url)
    assert before is not None and set(before) == {"mentallama_engine_tokens_total", "mentallama_front_responses_total"}
    with MentaLLaMAClient(cpu_server.grpc_url, timeout=60) as client:
        client.generate("Hello", max_tokens=8, min_tokens=8)

    def counted() -> bool:
        after = read_work_done(cpu_server.metrics_url) or {}
        tokens, responses = "mentallama_engine_tokens_total", "mentallama_front_responses_total"
        return after.get(tokens, 0) >= before[tokens] + 8 and after.get(responses, 0) > before[responses]

    assert _wait_until(counted, timeout_s=5)  # published by the models' watchers every 50 ms


@pytest.fixture
def small_server(tiny_checkpoint: Path, tmp_path: Path) -> Iterator:
    """A server of its own (the test fills it), with a KV cache of 2,048 tokens: long requests
    queue for it, and a new request waits behind them (about 3 s behind 12 in a measurement)."""
    from mentallama_server.launch.cpu_profile import CpuSettings
    from mentallama_server.launch.serve_cpu import start_cpu_server
    from tests.support.servers import loopback_options

    settings = CpuSettings(max_input_len=256, max_output_len=1024, cache_num_blocks=64)
    server = start_cpu_server(str(tiny_checkpoint), settings, loopback_options(), tmp_path)
    try:
        yield server
    finally:
        server.stop(grace_s=2)


@pytest.mark.server
def test_a_real_probe_queued_behind_work_is_not_a_wedge(small_server) -> None:
    """The canary's request waits in the engine's queue behind long generations, many times `quiet_s`: no
    wedge while tokens come (the old canary, two 30 s misses, killed such a server under full load)."""
    from mentallama import MentaLLaMAClient

    opts = small_server.opts
    quiet_s = 1.0
    story = {"max_tokens": 1000, "min_tokens": 1000}
    prompt = "Tell me a story " * 30  # about 210 tokens: seven blocks of the cache each before any output
    with MentaLLaMAClient(opts.grpc_url, timeout=120, max_retries=0) as client:
        load = [threading.Thread(target=client.generate, args=(prompt,), kwargs=story) for _ in range(16)]
        for thread in load:
            thread.start()
        assert _wait_until(lambda: (scrape_metric(opts.metrics_url, "mentallama_engine_requests", 'state="waiting"')
                                    or 0) >= 1, timeout_s=30)  # fmt: skip
        canary = Canary(opts.http_url, "mentallama", opts.metrics_url, interval_s=0.01, quiet_s=quiet_s, poll_s=0.1)
        canary.start()
        try:
            waited = 0.0
            while any(thread.is_alive() for thread in load):
                waited = max(waited, canary.liveness.waited_for(time.monotonic()))
                assert not canary.wedged, f"a busy server was called wedged after a {waited:.1f} s wait"
                time.sleep(0.05)
            print(f"the canary's request waited {waited:.1f} s behind the load (quiet_s {quiet_s:g} s)")
            assert waited > 2 * quiet_s  # it did wait, far longer than the wedge rule allows without progress
            assert _wait_until(lambda: canary.answers > 0, timeout_s=10)
            assert not canary.wedged
        finally:
            canary.stop()


# An engine step that takes requests and never answers: what a stuck engine looks like from outside. (A
# SIGSTOP of the front model's process is no such wedge: Triton answers its requests with an error within a
# second, and the launcher's stopped-process check names it.)
HUNG_ENGINE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.held = []

    def execute(self, requests):
        self.held.extend(request.get_response_sender() for request in requests)
        return None
"""


@pytest.mark.server
def test_a_server_whose_engine_answers_nothing_is_wedged(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from mentallama_server.launch.cpu_profile import CpuSettings
    from mentallama_server.launch.launcher import TritonProcess, bundled_server
    from mentallama_server.launch.serve_cpu import render_cpu
    from tests.support.servers import READY_TIMEOUT_S, loopback_options

    repository = render_cpu(tiny_checkpoint, CpuSettings(max_output_len=64, cache_num_blocks=64), tmp_path / "repo")
    (repository / "tensorrt_llm" / "1" / "model.py").write_text(HUNG_ENGINE)
    opts = loopback_options()
    argv, env = bundled_server(repository, tmp_path, opts)
    server = TritonProcess(argv, env, tmp_path, opts)
    try:
        server.wait_ready(READY_TIMEOUT_S)
        quiet_s = 1.0
        canary = Canary(opts.http_url, "mentallama", opts.metrics_url, interval_s=0.01, quiet_s=quiet_s, poll_s=0.1)
        started = time.monotonic()
        canary.start()
        try:
            assert _wait_until(lambda: canary.wedged, timeout_s=10)
            seconds = time.monotonic() - started
            print(f"wedge reported {seconds:.1f} s after the canary started (quiet_s {quiet_s:g} s)")
            assert quiet_s <= seconds < quiet_s + 3 and canary.answers == 0
        finally:
            canary.stop()
    finally:
        server.stop(grace_s=2)
