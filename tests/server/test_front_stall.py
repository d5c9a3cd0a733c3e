"""The `mentallama` front model when the engine goes silent after its first response (issue 15, finding 1), with a
stubbed `triton_python_backend_utils` and `EngineDouble` as the engine (no server): whatever the engine sends, or
fails to send, the client gets a final response. Engine errors and `stop`: tests/server/test_model_logic_front.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from mentallama_server.models.front_model import engine_declares_output
from tests.support import triton_stub
from tests.support.triton_stub import TRITONSERVER_RESPONSE_COMPLETE_FINAL as FINAL_FLAG
from tests.support.triton_stub import EngineDouble, InferenceResponse, Logger, LogLevel, ResponseSender, make_request

STALL_TIMEOUT_S = 0.3
TOKENS = [839, 3846, 308]  # "Je su" in the tiny vocabulary


@pytest.fixture(scope="module")
def front(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, Path]]:
    """The front model's module, imported against the stub, and its rendered folder."""
    out = tmp_path_factory.mktemp("front-stall") / "models"
    model_dir = triton_stub.render_cpu_repository(tiny_checkpoint, out, max_input_len=64, max_output_len=64)
    with triton_stub.install():
        yield triton_stub.load_model(model_dir / "mentallama"), model_dir / "mentallama"


@pytest.fixture()
def model(front: tuple[ModuleType, Path]) -> Iterator[Any]:
    model = triton_stub.start_model(*front, engine_stall_timeout_s=str(STALL_TIMEOUT_S))
    yield model
    model.finalize()


def send(model: Any, stream: bool) -> ResponseSender:
    inputs = {
        "text_input": np.array([[b"hello world"]], dtype=object),
        "max_tokens": np.array([[8]], dtype=np.int32),
        "stream": np.array([[stream]]),
    }
    request = make_request(inputs, request_id="req")
    model.execute([request])
    return request.get_response_sender()


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_engine_silent_after_a_chunk_ends_with_an_error_and_a_stop(model: Any) -> None:
    # A lost engine error: the stream stays open and a stop does not end it.
    engine = EngineDouble(lambda request: [EngineDouble.chunk(TOKENS[:1])], hold=True, stop_ends_stream=False)
    with triton_stub.bls_model("tensorrt_llm", engine):
        started = time.monotonic()
        sent = send(model, stream=True).wait_final(timeout=3)  # no final response: the front model hung
        response, flag = sent[-1]
        assert flag == FINAL_FLAG and "stopped answering" in response.error().message()
        assert STALL_TIMEOUT_S <= time.monotonic() - started < 2
        wait_for(lambda: engine.stops)  # the engine request was stopped, to free the engine
        assert engine.stops == [engine.requests[0].request_id()]
        assert model.calls.abandoned == 1 and not model.calls
        assert any("1 call thread(s) abandoned" in line for line in Logger.messages(LogLevel.ERROR))
        engine.release()  # the engine answers after all: the abandoned thread ends and says so
        wait_for(lambda: any("after the stall timeout" in line for line in Logger.messages(LogLevel.WARNING)))


def test_a_bare_final_flag_ends_the_call_normally(model: Any) -> None:
    engine = EngineDouble(lambda request: [EngineDouble.chunk(TOKENS), InferenceResponse()])
    with triton_stub.bls_model("tensorrt_llm", engine):
        sent = send(model, stream=False).wait_final(timeout=3)
    (response, flag) = sent[-1]
    assert flag == FINAL_FLAG and not response.has_error()
    assert response.as_dict()["text_output"].tolist() == [b"hello world Je su"]  # the prompt, then the output


def test_engine_declares_output_reads_the_engine_config(tmp_path: Path) -> None:
    (tmp_path / "mentallama").mkdir()
    (tmp_path / "tensorrt_llm").mkdir()
    config = tmp_path / "tensorrt_llm" / "config.pbtxt"
    config.write_text('input [ { name: "error_message" } ]\noutput [ { name: "output_ids" } ]')
    assert not engine_declares_output(tmp_path / "mentallama", "error_message")
    config.write_text('output [ { name: "output_ids" }, { name: "error_message" } ]')
    assert engine_declares_output(tmp_path / "mentallama", "error_message")
    assert not engine_declares_output(tmp_path / "elsewhere" / "mentallama", "error_message")
