"""Bad requests, beyond tests/server/test_bad_input.py: unknown versions, wrong shapes, types and sizes,
the status each one maps to, the server live *and ready* after each, and short-lived clients.

On a gRPC stream Triton 2.51 carries an error in-band (the response's `error_message`, no status code),
both for the models' own validation and for its core checks (unknown model or version, shape, data
type, byte size) that run before any model; the SDK maps the message to a status. Over HTTP each one is
a 4xx naming the field. Every call here opens and closes its own connection, as a short-lived client
does: that is the pattern that crashed Triton when the SDK still sent `triton_grpc_error`.
"""

from __future__ import annotations

import re

import grpc
import pytest

from mentallama import InvalidRequestError, MentaLLaMAClient
from mentallama._transport import error_from_status
from tests.reliability.rel_grpc import Tensor, live_and_ready, number, stream_infer, text
from tests.server.triton_io import http_generate

pytestmark = pytest.mark.server
MODELS = ("mentallama", "ensemble")
# Well past any limit the session `cpu_server` (tests/conftest.py) could be given; its exact limits are
# read from the repository it serves (`served_limit`).
TOO_LONG_PROMPT = "word " * 5000
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND

TEXT = text("text_input", "Hello")
TOKENS = number("max_tokens", "INT32", 4)


def _with(*tensors: Tensor, drop: str = "") -> list[Tensor]:
    """The valid request with some tensors replaced (same name) or added, and `drop` left out."""
    replaced = {t.name: t for t in tensors}
    base = [replaced.pop(t.name, t) for t in (TEXT, TOKENS) if t.name != drop]
    return base + list(replaced.values())


# (case id, tensors, text the message must contain). test_bad_input.py checks the messages of the
# value errors; here each one also gets its status, and a check that the server stays ready.
REFUSALS = [
    ("missing text_input", _with(drop="text_input"), "text_input"),
    ("missing max_tokens", _with(drop="max_tokens"), "max_tokens"),
    ("max_tokens 0", _with(number("max_tokens", "INT32", 0)), "max_tokens"),
    ("max_tokens negative", _with(number("max_tokens", "INT32", -3)), "max_tokens"),
    ("empty text", _with(text("text_input", "")), "text_input"),
    ("whitespace text", _with(text("text_input", " \n\t ")), "text_input"),
    ("invalid UTF-8", _with(text("text_input", b"\xff\xfe broken")), "UTF-8"),
    ("NUL byte", _with(text("text_input", "nul\x00byte")), "NUL"),
    ("prompt too long", _with(text("text_input", TOO_LONG_PROMPT)), "text_input"),
    ("top_p above 1", _with(number("top_p", "FP32", 1.5)), "top_p"),
    ("top_p 0", _with(number("top_p", "FP32", 0.0)), "top_p"),
    ("negative temperature", _with(number("temperature", "FP32", -1.0)), "temperature"),
    ("negative top_k", _with(number("top_k", "INT32", -1)), "top_k"),
    (  # a batch of prompts is served (issue 12); one bad prompt refuses the whole request
        "batch with a bad second prompt",
        [text("text_input", "one", "two", shape=(2, 1)), number("max_tokens", "INT32", 4, 0, shape=(2, 1))],
        "max_tokens",
    ),
    # Shapes, types and sizes: Triton's core checks, before any model runs.
    ("text_input without batch dim", _with(text("text_input", "Hello", shape=(1,))), "text_input"),
    ("text_input shape [1, 2]", _with(text("text_input", "Hello", "again")), "text_input"),
    ("max_tokens shape [1, 2]", _with(number("max_tokens", "INT32", 4, 4)), "max_tokens"),
    ("max_tokens as FP32", _with(number("max_tokens", "FP32", 4.0)), "max_tokens"),
    ("text_input as INT32", _with(number("text_input", "INT32", 7)), "text_input"),
    ("top_p as FP64", _with(number("top_p", "FP64", 0.5)), "top_p"),
    ("stream as INT32", _with(number("stream", "INT32", 1)), "stream"),
    ("max_tokens byte size", _with(Tensor("max_tokens", "INT32", (1, 1), b"\x04\x00")), "max_tokens"),
]


def served_limit(server, name: str) -> int:
    """A limit (`max_output_len`, `max_input_len`) as rendered into the server's repository."""
    config = (server.run_dir / "model_repository" / "mentallama" / "config.pbtxt").read_text()
    match = re.search(rf'key: "{name}" value: {{ string_value: "(\d+)" }}', config)
    assert match, f"{name} not in the rendered config"
    return int(match.group(1))


def _assert_serving(url: str, model: str) -> None:
    assert live_and_ready(url, model)
    ok = stream_infer(url, model, _with())
    assert ok.status is grpc.StatusCode.OK and not ok.message and ok.responses >= 1


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("tensors", "field"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_bad_request_is_refused_as_invalid_argument_and_server_stays_ready(cpu_server, model, tensors, field):
    outcome = stream_infer(cpu_server.grpc_url, model, tensors)
    assert outcome.status is grpc.StatusCode.OK and outcome.message, outcome  # in-band, stream closed cleanly
    assert field in outcome.message
    error = error_from_status(None, outcome.message, "bad-1")  # what the SDK raises for it
    assert isinstance(error, InvalidRequestError) and error.status is INVALID, error
    _assert_serving(cpu_server.grpc_url, model)


@pytest.mark.parametrize("model", MODELS)
def test_max_tokens_just_above_the_configured_limit(cpu_server, model):
    limit = served_limit(cpu_server, "max_output_len")
    outcome = stream_infer(cpu_server.grpc_url, model, _with(number("max_tokens", "INT32", limit + 1)))
    assert f"above the limit of {limit}" in outcome.message and "max_tokens" in outcome.message, outcome
    assert error_from_status(None, outcome.message, "r").status is INVALID
    _assert_serving(cpu_server.grpc_url, model)


def test_unknown_model_and_version(cpu_server):
    for model, version, named in (("mentallama", "7", "'mentallama' version 7"), ("no_such_model", "", "no_such")):
        outcome = stream_infer(cpu_server.grpc_url, model, _with(), version=version)
        assert outcome.message and named in outcome.message, outcome
        error = error_from_status(None, outcome.message, "r")
        assert isinstance(error, InvalidRequestError) and error.status is NOT_FOUND
    assert stream_infer(cpu_server.grpc_url, "mentallama", _with(), version="1").responses >= 1
    status, body = http_generate(cpu_server.http_url, "mentallama/versions/7", {"text_input": "Hi", "max_tokens": 4})
    assert status == 404 and "version 7" in body[0]["error"]
    _assert_serving(cpu_server.grpc_url, "mentallama")


@pytest.mark.parametrize("model", MODELS)
def test_http_refuses_every_bad_value_with_400_naming_the_field(cpu_server, model):
    cases = [
        ({"max_tokens": 4}, "text_input"),
        ({"text_input": "Hi"}, "max_tokens"),
        ({"text_input": "Hi", "max_tokens": -3}, "max_tokens"),
        ({"text_input": "Hi", "max_tokens": served_limit(cpu_server, "max_output_len") + 1}, "max_tokens"),
        ({"text_input": "", "max_tokens": 4}, "text_input"),
        ({"text_input": "nul\u0000byte", "max_tokens": 4}, "NUL"),
        ({"text_input": TOO_LONG_PROMPT, "max_tokens": 4}, "text_input"),
        ({"text_input": "Hi", "max_tokens": 4, "top_p": 0.0}, "top_p"),
        ({"text_input": "Hi", "max_tokens": 4, "temperature": -0.5}, "temperature"),
        ({"text_input": "Hi", "max_tokens": 4, "top_k": -1}, "top_k"),
    ]
    for payload, field in cases:
        status, body = http_generate(cpu_server.http_url, model, payload)
        assert (status, field in body[0].get("error", "")) == (400, True), (payload, status, body)
    status, body = http_generate(cpu_server.http_url, model, {"text_input": "Hello", "max_tokens": 4})
    assert status == 200 and body[0]["text_output"]


@pytest.mark.parametrize("model", MODELS)
def test_http_wrong_json_types_are_refused_and_server_keeps_serving(cpu_server, model):
    # Triton 2.51's generate endpoint converts JSON to tensors before any model runs and answers a value
    # of the wrong JSON type with 500 "Unable to parse 'data'", without the field's name (a limitation
    # of Triton, listed in docs/RELIABILITY.md); what must hold is that it is refused and nothing breaks.
    for payload in (
        {"text_input": "Hi", "max_tokens": "four"},
        {"text_input": "Hi", "max_tokens": 4.5},
        {"text_input": 42, "max_tokens": 4},
        {"text_input": "Hi", "max_tokens": 4, "top_p": "high"},
    ):
        status, body = http_generate(cpu_server.http_url, model, payload)
        assert status in (400, 500) and body[0].get("error"), (payload, status, body)
    status, body = http_generate(cpu_server.http_url, model, {"text_input": "Hello", "max_tokens": 4})
    assert status == 200 and body[0]["text_output"]
    _assert_serving(cpu_server.grpc_url, model)


def test_short_lived_sdk_clients_sending_bad_requests_do_not_crash_the_server(cpu_server):
    # Regression: with the SDK's former `triton_grpc_error` header, tritonserver 2.51 segfaulted after
    # ~5-20 of these (a refused request, then the client's connection closing).
    for i in range(30):
        client = MentaLLaMAClient(cpu_server.grpc_url, max_retries=0, timeout=30)
        with client, pytest.raises(InvalidRequestError) as info:
            client.generate("Hello", max_tokens=0, request_id=f"short-lived-{i}")
        assert info.value.status is INVALID and "max_tokens" in info.value.message
    _assert_serving(cpu_server.grpc_url, "mentallama")
    assert "Signal (11)" not in cpu_server.log_path.read_text(errors="replace")
