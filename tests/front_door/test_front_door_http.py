"""The front door's HTTP endpoint against what broke Triton 2.51's (issue 18, findings 1, 5, 8), on the real
server: each request is refused with a clear error, and the server keeps serving."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

import pytest

from tests.server.test_bad_input import assert_still_serving
from tests.server.triton_io import http_generate

pytestmark = pytest.mark.server


def post(url: str, body: bytes, content_type: str | None = "application/json", timeout: float = 60) -> tuple[int, str]:
    headers = {} if content_type is None else {"Content-Type": content_type}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def generate_url(server, model: str = "mentallama", endpoint: str = "generate") -> str:
    return f"{server.http_url}/v2/models/{model}/{endpoint}"


def still_serving(server) -> None:
    status, events = http_generate(server.http_url, "mentallama", {"text_input": "Hello", "max_tokens": 4})
    assert status == 200 and events[0]["text_output"]
    assert_still_serving(server.grpc_url, "mentallama")


def test_deeply_nested_json_is_refused_before_any_parser_recurses(cpu_server) -> None:
    body = b'{"text_input": ' + b"[" * 100_000 + b"]" * 100_000 + b', "max_tokens": 4}'  # ~200 KB (finding 5)
    status, text = post(generate_url(cpu_server), body)
    assert status == 400 and "nested 100001 levels" in text
    still_serving(cpu_server)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_tokens", 4294967297, "max_tokens is 4294967297, outside the range of INT32"),  # 2.51 wrapped it to 1
        ("max_tokens", 2**64, "max_tokens is 18446744073709551616, outside the range of INT32"),
        ("max_tokens", -(2**63), "max_tokens is -9223372036854775808, outside the range of INT32"),
        ("seed", -1, "seed is -1, outside the range of UINT64"),
        ("max_tokens", 3.5, "max_tokens must be an integer, got 3.5"),
        ("max_tokens", True, "max_tokens must be an integer, got true"),
        ("temperature", "hot", 'temperature must be a number, got "hot"'),
    ],
)
def test_values_out_of_their_inputs_range_are_refused_naming_field_and_value(cpu_server, field, value, expected):
    status, events = http_generate(cpu_server.http_url, "mentallama", {"text_input": "Hi", "max_tokens": 4,
                                                                       field: value})  # fmt: skip
    assert status == 400 and expected in events[0]["error"]


def test_generate_with_stream_true_is_refused_not_answered_200(cpu_server) -> None:
    status, events = http_generate(cpu_server.http_url, "mentallama", {"text_input": "Hi", "max_tokens": 4,
                                                                       "stream": True})  # fmt: skip
    assert status == 400 and "generate_stream" in events[0]["error"]


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x", "application/xml"])
def test_bodies_that_do_not_say_json_are_refused(cpu_server, content_type: str) -> None:
    status, text = post(generate_url(cpu_server), b'{"text_input": "Hi", "max_tokens": 4}', content_type)
    assert status == 415 and "application/json" in text


def test_curl_default_content_type_is_still_read_as_json(cpu_server) -> None:
    """`curl -d` (upstream's README examples) sends x-www-form-urlencoded; the body is JSON all the same."""
    status, text = post(generate_url(cpu_server), b'{"text_input": "Hi", "max_tokens": 4}',
                        "application/x-www-form-urlencoded")  # fmt: skip
    assert status == 200 and json.loads(text)["text_output"]


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read(cpu_server) -> None:
    """Finding 7 (50 MB prompts grew the shared-memory pool): refused on its Content-Length, unread."""
    host, port = cpu_server.http_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", "/v2/models/mentallama/generate")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(50 << 20))
        connection.endheaders()  # and no body at all
        response = connection.getresponse()
        assert response.status == 413 and "limit" in response.read().decode()
    finally:
        connection.close()
    body = json.dumps({"text_input": "x" * (2 << 20), "max_tokens": 4}).encode()  # no Content-Length: counted
    request = urllib.request.Request(generate_url(cpu_server), data=iter([body[:1000], body[1000:]]),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with pytest.raises((urllib.error.HTTPError, ConnectionError, urllib.error.URLError)) as info:
        urllib.request.urlopen(request, timeout=30)
    if isinstance(info.value, urllib.error.HTTPError):
        assert info.value.code == 413
    still_serving(cpu_server)


@pytest.mark.parametrize(
    "body",
    [b"[1]", b"not json", b'{"text_input": NaN, "max_tokens": 4}', b"\xff\xfe", b'{"text_input": {"a": 1}}'],
    ids=["array", "garbage", "nan", "not-utf8", "object-value"],
)
def test_malformed_bodies_are_400(cpu_server, body: bytes) -> None:
    status, text = post(generate_url(cpu_server), body)
    assert status == 400 and "error" in json.loads(text)


@pytest.mark.parametrize("raw_id", [b'"\\udc80"', b'"ab\xff\xfecd"'], ids=["lone-surrogate", "invalid-bytes"])
def test_a_request_id_that_is_not_utf8_is_refused_at_the_door(cpu_server, raw_id: bytes) -> None:
    status, text = post(generate_url(cpu_server), b'{"id": ' + raw_id + b', "text_input": "Hi", "max_tokens": 4}')
    assert status == 400 and "UTF-8" in text
    still_serving(cpu_server)


def test_only_the_entry_models_are_reachable(cpu_server) -> None:
    for model in ("tensorrt_llm", "preprocessing", "postprocessing"):
        status, text = post(generate_url(cpu_server, model), b'{"text_input": "Hi", "max_tokens": 4}')
        assert status == 404 and "unknown model" in text
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{cpu_server.http_url}/v2/models/{model}", timeout=10)
        assert info.value.code == 404
    with urllib.request.urlopen(f"{cpu_server.http_url}/v2/models/mentallama", timeout=10) as resp:
        names = {t["name"] for t in json.loads(resp.read())["inputs"]}
    assert {"text_input", "max_tokens", "stop"} <= names


def test_admin_apis_over_http_need_the_admin_key(cpu_server) -> None:
    """Closed here (no admin key given); with one they are forwarded: tests/reliability/test_rel_security.py."""
    for path in ("/v2/repository/index", "/v2/systemsharedmemory/region/x/register", "/v2/models/stats",
                 "/v2/logging", "/v2/models/mentallama/config"):  # fmt: skip
        status, text = post(cpu_server.http_url + path, b"{}")
        assert status == 403 and "expecting header 'admin-key'" in text, (path, status, text)


def test_infer_on_a_decoupled_model_answers_as_triton_does(cpu_server) -> None:
    status, text = post(generate_url(cpu_server, "mentallama", "infer"), b'{"inputs": []}')
    assert status == 501 and "decoupled" in text


def test_generate_stream_frames_events_as_triton_does(cpu_server) -> None:
    status, text = post(generate_url(cpu_server, "mentallama", "generate_stream"),
                        b'{"id": "s1", "text_input": "Hi", "max_tokens": 8, "stream": true}')  # fmt: skip
    assert status == 200
    frames = [f for f in text.split("\n\n") if f]
    assert len(frames) > 1 and all(f.startswith("data: {") for f in frames)
    events = [json.loads(f[len("data: ") :]) for f in frames]
    assert all(e["id"] == "s1" and e["model_name"] == "mentallama" for e in events)  # the client's own id back
    status, text = post(generate_url(cpu_server, "mentallama", "generate_stream"),
                        b'{"text_input": "Hi", "max_tokens": 0, "stream": true}')  # fmt: skip
    assert status == 400 and text.startswith("data: ") and "max_tokens" in text
