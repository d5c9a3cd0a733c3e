"""Request ids a client controls cannot break the front model (issue 18, findings 1 and 6), on the real server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from mentallama._transport import SyncTransport, build_request
from tests.server.test_bad_input import assert_still_serving
from tests.server.triton_io import http_generate
from tests.support.metrics import wait_engine

pytestmark = pytest.mark.server


def _post_raw(base_url: str, model: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(
        f"{base_url}/v2/models/{model}/generate", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


@pytest.mark.parametrize("model", ["mentallama", "ensemble"])
@pytest.mark.parametrize(
    "raw_id",
    [b'"\\udc80"', b'"ab\xff\xfecd"'],  # a lone surrogate in pure-ASCII JSON; raw bytes that are not UTF-8
    ids=["lone-surrogate", "invalid-bytes"],
)
def test_a_request_id_that_is_not_utf8_is_refused_and_the_model_keeps_serving(cpu_server, model, raw_id) -> None:
    body = b'{"id": ' + raw_id + b', "text_input": "Hello", "max_tokens": 4}'
    for _ in range(3):  # the intake thread died on the first one before the fix
        status, text = _post_raw(cpu_server.http_url, model, body)
        assert status == 400, text
    if model == "mentallama":
        assert "UTF-8" in text
    status, events = http_generate(cpu_server.http_url, model, {"text_input": "Hello", "max_tokens": 4})
    assert status == 200 and events[0]["text_output"]
    assert_still_serving(cpu_server.grpc_url, model)


def test_a_request_id_longer_than_the_limit_is_refused(cpu_server) -> None:
    status, events = http_generate(
        cpu_server.http_url, "mentallama", {"id": "x" * 257, "text_input": "Hello", "max_tokens": 4}
    )
    assert status == 400 and "limit is 256" in events[0]["error"]
    assert_still_serving(cpu_server.grpc_url, "mentallama")


def test_a_stop_matches_the_request_id_exactly(cpu_server) -> None:
    """`stop` for `user7` must not end `user7#job3` (it did: the ids were matched as prefixes)."""
    transport = SyncTransport(None)
    try:
        inputs = {"text_input": "Tell me a story", "stream": True, "max_tokens": 1000, "min_tokens": 1000}
        events = transport.stream(
            cpu_server.grpc_url, build_request("mentallama", "user7#job3", inputs), timeout=60, headers={}
        )
        next(events)
        stop = build_request("mentallama", "user7", {"text_input": "", "max_tokens": 1, "stop": True})
        assert [(e.text, e.final) for e in transport.stream(cpu_server.grpc_url, stop, timeout=10, headers={})] == [
            ("", True)
        ]
        later = [next(events) for _ in range(5)]  # the victim keeps producing
        assert not any(event.final for event in later) and all(event.text for event in later)
        exact = build_request("mentallama", "user7#job3", {"text_input": "", "max_tokens": 1, "stop": True})
        list(transport.stream(cpu_server.grpc_url, exact, timeout=10, headers={}))
        rest = list(events)
        assert rest and rest[-1].final
    finally:
        transport.close()
    wait_engine(cpu_server.metrics_url, busy=False, within_s=5)


def test_json_of_the_request_is_not_echoed_in_errors(cpu_server) -> None:
    status, events = http_generate(
        cpu_server.http_url, "mentallama", {"id": "\udc80private", "text_input": "secret post", "max_tokens": 4}
    )
    assert status == 400 and "secret post" not in json.dumps(events)
