"""The `mentallama` front model with a stubbed `triton_python_backend_utils` (no server): whatever the engine
sends, or fails to send, the client gets a final response (issue 15, finding 1)."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

MODEL_PY = Path(__file__).resolve().parents[2] / "model_repository" / "mentallama" / "1" / "model.py"
FINAL = 1


class _Error:
    INTERNAL, INVALID_ARG, UNAVAILABLE = "INTERNAL", "INVALID_ARG", "UNAVAILABLE"

    def __init__(self, message, code="INTERNAL"):
        self._message, self._code = message, code

    def message(self):
        return self._message

    def code(self):
        return self._code


class _Response:
    def __init__(self, tensors=(), error=None):
        self.tensors = {t.name: t for t in tensors}
        self.error_ = error

    def has_error(self):
        return self.error_ is not None

    def error(self):
        return self.error_


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, np.asarray(array)

    def as_numpy(self):
        return self.array


def _pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    pb.TritonError = _Error
    pb.InferenceResponse = lambda tensors=(), error=None: _Response(tensors, error)
    pb.Tensor = _Tensor
    pb.get_output_tensor_by_name = lambda response, name: response.tensors.get(name)
    pb.Logger = mock.MagicMock()
    pb.InferenceRequest = mock.MagicMock()
    return pb


@pytest.fixture()
def front():
    pb = _pb_utils()
    with mock.patch.dict(sys.modules, {"triton_python_backend_utils": pb, "_bootstrap": types.ModuleType("_b")}):
        spec = importlib.util.spec_from_file_location("front_model_under_test", MODEL_PY)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.TritonPythonModel()
        model.preprocessor = mock.MagicMock()
        model.decoder = mock.MagicMock(raw=lambda ids: " x" * len(ids), first=lambda ids: " x" * len(ids))
        model.byte_of = {}  # no byte-fallback tokens: every chunk decodes at once
        model.max_calls = 8
        model.stall_timeout_s = 0.3
        model.abandoned = 0
        model.errors_in_band = True
        model.engine_outputs = [*module.ENGINE_OUTPUTS, "error_message"]
        model.calls, model.calls_lock, model.pb_lock = {}, threading.Lock(), threading.RLock()
        model.stopping = threading.Event()
        model.retired = module.collections.deque()
        watcher = threading.Thread(target=model._watch, daemon=True)
        watcher.start()
        yield module, model, pb
        model.stopping.set()


class _Sender:
    def __init__(self):
        self.sent: list[tuple[object, int]] = []
        self.finished = threading.Event()

    def send(self, response=None, flags=0):
        self.sent.append((response, flags))
        if flags & FINAL:
            self.finished.set()

    def is_cancelled(self):
        return False


def _chunk(n=1):
    return _Response([_Tensor("output_ids", np.full((1, 1, n), 7)), _Tensor("sequence_length", [[n]])])


def _engine(pb, responses, then_block: bool):
    """BLS requests whose iterator yields `responses`, then blocks forever (a lost response) or ends."""
    blocker = threading.Event()

    def iterate():
        yield from responses
        if then_block:
            blocker.wait()

    pb.InferenceRequest.return_value.exec.side_effect = lambda decoupled: iterate()
    return blocker


def _front_request(module, stream=True):
    return module.FrontRequest(input_ids=[1, 2], max_tokens=8, end_id=2, pad_id=2, stop_words=[], bad_words=[],
                               stream=stream, exclude_input_in_output=True, return_log_probs=False,
                               return_num_input_tokens=False, return_num_output_tokens=False)  # fmt: skip


def _run(module, model, stream=True) -> _Sender:
    sender = _Sender()
    call = module._Call(sender, "req#1")
    model.calls[call.engine_id] = call
    threading.Thread(target=model._run, args=(call, _front_request(module, stream)), daemon=True).start()
    return sender


def test_engine_silent_after_a_chunk_ends_with_an_error_and_a_stop(front):
    module, model, pb = front
    blocker = _engine(pb, [_chunk()], then_block=True)
    started = time.monotonic()
    sender = _run(module, model)
    assert sender.finished.wait(3), "no final response: the front model hung"
    response, flags = sender.sent[-1]
    assert flags == FINAL and "stopped answering" in response.error().message()
    assert 0.3 <= time.monotonic() - started < 2
    stops = [c for c in pb.InferenceRequest.call_args_list if any(t.name == "stop" for t in c.kwargs["inputs"])]
    assert stops, "the engine request was not stopped"
    assert model.abandoned == 1 and not model.calls
    blocker.set()


@pytest.mark.parametrize("stream", [True, False])
def test_engine_error_ends_the_call_with_its_message(front, stream):
    module, model, pb = front
    _engine(pb, [_chunk(), _Response(error=_Error("every token is banned"))], then_block=False)
    sender = _run(module, model, stream)
    assert sender.finished.wait(3)
    response, flags = sender.sent[-1]
    assert flags == FINAL and response.error().message() == "every token is banned"


def test_bare_final_ends_the_call_normally(front):
    module, model, pb = front
    _engine(pb, [_chunk(), _Response()], then_block=False)
    sender = _run(module, model, stream=False)
    assert sender.finished.wait(3)
    response, flags = sender.sent[-1]
    assert flags == FINAL and not response.has_error()
    assert response.tensors["text_output"].array.reshape(-1)[0] == b" x"


@pytest.mark.parametrize("stream", [True, False])
def test_engine_is_asked_to_stream_only_for_streaming_clients(front, stream):
    module, model, pb = front
    _engine(pb, [_chunk()], then_block=False)
    assert _run(module, model, stream).finished.wait(3)
    inputs = {t.name: t.array for t in pb.InferenceRequest.call_args.kwargs["inputs"]}
    assert bool(inputs["streaming"].reshape(-1)[0]) is stream


def test_engine_error_in_band_ends_the_call_with_its_message(front):
    module, model, pb = front
    failure = _Response([_Tensor("error_message", np.array([[b"every token is banned"]], dtype=object))])
    _engine(pb, [_chunk(), failure], then_block=True)  # nothing after it: the front must not wait
    sender = _run(module, model)
    assert sender.finished.wait(3)
    response, flags = sender.sent[-1]
    assert flags == FINAL and response.error().message() == "every token is banned"
    assert pb.InferenceRequest.call_args.kwargs["parameters"] == {"errors_in_band": True}
    assert "error_message" in pb.InferenceRequest.call_args.kwargs["requested_output_names"]


def test_engine_declares_output_reads_the_engine_config(tmp_path):
    from mentallama_server.models.front import engine_declares_output

    (tmp_path / "mentallama").mkdir()
    (tmp_path / "tensorrt_llm").mkdir()
    config = tmp_path / "tensorrt_llm" / "config.pbtxt"
    config.write_text('input [ { name: "error_message" } ]\noutput [ { name: "output_ids" } ]')
    assert not engine_declares_output(tmp_path / "mentallama", "error_message")
    config.write_text('output [ { name: "output_ids" }, { name: "error_message" } ]')
    assert engine_declares_output(tmp_path / "mentallama", "error_message")
    assert not engine_declares_output(tmp_path / "elsewhere" / "mentallama", "error_message")
