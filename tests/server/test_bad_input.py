"""Bad requests get a clear error naming the field, and the server keeps serving."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.server.triton_io import StreamCall, http_generate, infer, make_inputs

pytestmark = pytest.mark.server
MODELS = ("mentallama", "ensemble")


def assert_still_serving(url: str, model: str) -> None:
    ok = infer(url, model, "Hello world", 4)
    assert ok.error is None and ok.text


def _error_of(url: str, model: str, inputs) -> str:
    result = StreamCall(url, model, inputs).result()
    assert result.error is not None, "the request should have been refused"
    return result.error


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    ("text", "max_tokens", "extra", "field"),
    [
        ("Hello", 0, {}, "max_tokens"),
        ("Hello", -3, {}, "max_tokens"),
        ("Hello", 100_000, {}, "max_tokens"),
        ("", 4, {}, "text_input"),
        ("   \n\t", 4, {}, "text_input"),
        (b"\xff\xfe broken", 4, {}, "UTF-8"),
        ("nul\x00byte", 4, {}, "NUL"),
        ("word " * 3000, 4, {}, "text_input"),
        ("Hello", 4, {"top_p": 1.5}, "top_p"),
        ("Hello", 4, {"top_p": 0.0}, "top_p"),
        ("Hello", 4, {"temperature": -1.0}, "temperature"),
        ("Hello", 4, {"top_k": -1}, "top_k"),
        ("Hello", 4, {"beam_width": 0}, "beam_width"),
        ("Hello", 4, {"beam_width": 5}, "beam_width"),  # above max_sequences
    ],
)
def test_bad_values_are_refused_with_the_field_named(cpu_server, model, text, max_tokens, extra, field):
    # Triton's gRPC stream carries only the message of an in-stream error; HTTP carries the status too.
    message = _error_of(cpu_server.grpc_url, model, make_inputs(text, max_tokens, **extra))
    assert field in message
    assert_still_serving(cpu_server.grpc_url, model)


@pytest.mark.parametrize("model", MODELS)
def test_http_generate_refuses_bad_values_with_400(cpu_server, model):
    for payload, field in (
        ({"text_input": "Hello", "max_tokens": 0}, "max_tokens"),
        ({"text_input": " ", "max_tokens": 4}, "text_input"),
        ({"text_input": "Hello", "max_tokens": 4, "top_p": 2.0}, "top_p"),
    ):
        status, body = http_generate(cpu_server.http_url, model, payload)
        assert status == 400 and field in body[0]["error"]
    status, body = http_generate(cpu_server.http_url, model, {"text_input": "Hello", "max_tokens": 4})
    assert status == 200 and body[0]["text_output"]


@pytest.mark.parametrize("model", MODELS)
def test_missing_required_inputs(cpu_server, model):
    assert "text_input" in _error_of(cpu_server.grpc_url, model, make_inputs(None, 4))
    assert "max_tokens" in _error_of(cpu_server.grpc_url, model, make_inputs("Hello", None))
    assert_still_serving(cpu_server.grpc_url, model)


@pytest.mark.parametrize("model", MODELS)
def test_wrong_data_type(cpu_server, model):
    bad = make_inputs("Hello", None)
    wrong = grpcclient.InferInput("max_tokens", [1, 1], "FP32")
    wrong.set_data_from_numpy(np.array([[4.0]], dtype=np.float32))
    bad.append(wrong)
    message = _error_of(cpu_server.grpc_url, model, bad)
    assert "max_tokens" in message and "INT32" in message
    assert_still_serving(cpu_server.grpc_url, model)


@pytest.mark.parametrize("model", MODELS)
def test_batch_whose_rows_disagree_is_refused(cpu_server, model):
    """A batch of prompts is served (tests/server/test_trtllm_compat.py); its tensors must agree on N."""
    texts = grpcclient.InferInput("text_input", [2, 1], "BYTES")
    texts.set_data_from_numpy(np.array([[b"one"], [b"two"]], dtype=object))
    tokens = grpcclient.InferInput("max_tokens", [1, 1], "INT32")
    tokens.set_data_from_numpy(np.array([[4]], dtype=np.int32))
    message = _error_of(cpu_server.grpc_url, model, [texts, tokens])
    assert "batch size does not match" in message
    assert_still_serving(cpu_server.grpc_url, model)


def test_unknown_model(cpu_server):
    message = _error_of(cpu_server.grpc_url, "no_such_model", make_inputs("Hello", 4))
    assert "no_such_model" in message
    assert_still_serving(cpu_server.grpc_url, "mentallama")
