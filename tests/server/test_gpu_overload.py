"""Overload on the GPU path is retryable (issue 21), on the test double of TensorRT-LLM's C++ backend.

The `tensorrt_llm` model here is tests/server/cxx_chunking_double/model.py behind the real front door:
- refusing every request as the backend refuses one its executor will not take (an error response, code INTERNAL,
  "Maximum queue size of 320 has been reached, please try again later"): through `mentallama` and `ensemble`
  every client sees "server overloaded: ...; retry later": the SDK retries it and ends with ServerOverloadedError,
  HTTP answers 503 with Retry-After, the OpenAI API 503;
- holding requests (tokens never come): the front model admits its limit and refuses the next one as overloaded,
  which clients also retry. The trtllm profile sets that limit at most to what the engine takes
  (test_trtllm_foreign_engine.py), so the front model's refusal, not the engine's, is what clients meet first.
"""

from __future__ import annotations

import json
import queue
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mentallama import MentaLLaMAClient, ServerOverloadedError
from mentallama_server.front_door.admission import Ticket
from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.front_door_process import FrontDoorProcess, upstream_options
from mentallama_server.launch.launcher import TritonProcess, bundled_server
from mentallama_server.launch.serve_cpu import render_cpu
from mentallama_server.overload import as_overload
from tests.server.triton_io import StreamCall, infer, make_inputs
from tests.support.servers import READY_TIMEOUT_S, loopback_options

pytestmark = pytest.mark.server
DOUBLE = Path(__file__).parent / "cxx_chunking_double" / "model.py"
EXECUTOR_FULL = "[TensorRT-LLM][ERROR] Maximum queue size of 320 has been reached, please try again later"
TRITON_FULL = "Exceeds maximum queue size"


def test_engine_queue_refusals_become_retryable_in_one_place() -> None:
    for text in (EXECUTOR_FULL, TRITON_FULL, "exceeds maximum queue size of 8 for tensorrt_llm"):
        overload = as_overload(text)
        assert overload is not None and overload.startswith("server overloaded: the engine's queue is full (")
        assert overload.endswith("; retry later") and " ".join(text.split()) in overload
    assert as_overload("server overloaded: 4 requests in flight; retry later") == (
        "server overloaded: 4 requests in flight; retry later"
    )
    assert as_overload("max_tokens: must be at least 1") is None
    ticket = Ticket("tag", "client-7", "up.12", "ensemble")
    assert ticket.own_words(f"request up.12: {EXECUTOR_FULL}").startswith("server overloaded")
    assert ticket.own_words("request up.12: bad input") == "request client-7: bad input"


class DoubleServer:
    def __init__(self, triton: TritonProcess, front: FrontDoorProcess, public, engine_dir: Path) -> None:
        self.triton, self.front, self.public, self.engine_dir = triton, front, public, engine_dir


def start_double(mode: str, tiny_checkpoint: Path, tmp_path_factory) -> Iterator[DoubleServer]:
    run_dir = tmp_path_factory.mktemp(f"gpu-double-{mode}")
    settings = CpuSettings(cache_num_blocks=64, front_max_concurrent_requests=2)
    repository = render_cpu(tiny_checkpoint, settings, run_dir / "model_repository")
    engine = repository / "tensorrt_llm" / "1"
    shutil.copy2(DOUBLE, engine / "model.py")
    (engine / "tokens.json").write_text(json.dumps([100, 200, 300]))
    if mode == "refuse":
        (engine / "refuse.txt").write_text(EXECUTOR_FULL)
    else:
        (engine / "hold").touch()
    public = loopback_options()
    triton_opts = upstream_options(public)
    argv, env = bundled_server(repository, run_dir, triton_opts)
    triton = TritonProcess(argv, env, run_dir, triton_opts)
    front = None
    try:
        triton.wait_ready(READY_TIMEOUT_S)
        front = FrontDoorProcess.start(public, triton_opts, run_dir)
        yield DoubleServer(triton, front, public, engine)
    finally:
        if front is not None:
            front.stop()
        triton.stop()


@pytest.fixture(scope="module")
def refusing(tiny_checkpoint: Path, tmp_path_factory) -> Iterator[DoubleServer]:
    yield from start_double("refuse", tiny_checkpoint, tmp_path_factory)


@pytest.fixture(scope="module")
def holding(tiny_checkpoint: Path, tmp_path_factory) -> Iterator[DoubleServer]:
    yield from start_double("hold", tiny_checkpoint, tmp_path_factory)


def http_post(url: str, body: dict) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, json.loads(exc.read())


@pytest.mark.parametrize("model", ["mentallama", "ensemble"])
def test_a_full_engine_queue_is_retryable_for_every_client(refusing: DoubleServer, model: str) -> None:
    server = refusing
    url = server.public.grpc_url
    result = infer(url, model, "Hello", 8)
    assert result.error is not None and "server overloaded: the engine's queue is full" in result.error
    assert "Maximum queue size of 320" in result.error
    status, headers, body = http_post(f"{server.public.http_url}/v2/models/{model}/generate",
                                      {"text_input": "Hello", "max_tokens": 8})  # fmt: skip
    assert status == 503 and headers.get("retry-after") == "1" and body["error"].startswith("server overloaded")
    with MentaLLaMAClient(url, model=model, timeout=60, max_retries=2) as client:
        started = time.monotonic()
        with pytest.raises(ServerOverloadedError):
            client.analyze("I cannot sleep.", "stress", max_tokens=8)
        assert time.monotonic() - started < 30  # retried with backoff, then given up


def test_the_openai_api_answers_503(refusing: DoubleServer) -> None:
    server = refusing
    status, headers, body = http_post(f"{server.public.http_url}/v1/completions",
                                      {"model": "mentallama", "prompt": "Hello", "max_tokens": 8})  # fmt: skip
    assert status == 503 and headers.get("retry-after") == "1"
    assert body["error"]["message"].startswith("server overloaded")


def test_the_front_model_admits_its_limit_then_refuses_retryably(holding: DoubleServer) -> None:
    server = holding
    url = server.public.grpc_url
    held = [StreamCall(url, "mentallama", make_inputs("Hello", 8, stream=True)) for _ in range(2)]
    try:
        deadline = time.monotonic() + 30
        while True:  # the held calls reach the front model in their own time
            probe = StreamCall(url, "mentallama", make_inputs("Hello", 8, stream=True))
            try:
                _, error = probe.next(timeout=5)
            except queue.Empty:
                # It came in ahead of a held call and is held itself: keep it open (closing it would free its
                # place a moment later, after the next probe was refused) and send another.
                held.append(probe)
                assert time.monotonic() < deadline, "no request was refused"
                continue
            probe.finished = True
            probe.close()
            break
        assert error is not None and "server overloaded: 2 requests in flight" in str(error), error
        with MentaLLaMAClient(url, timeout=60, max_retries=1) as client, pytest.raises(ServerOverloadedError):
            client.analyze("I cannot sleep.", "stress", max_tokens=8)
    finally:
        for call in held:
            call.close()  # the front door stops them in band; the front model stops the engine's
