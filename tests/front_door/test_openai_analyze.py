"""`POST /v1/analyze` and `GET /v1/tasks` against the real server: the same label and reasoning as the SDK for
every IMHI task (greedy decoding: the random `tiny` checkpoint says nothing sensible, but the same nonsense), and
the OpenAPI document of the /v1 routes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from mentallama import MentaLLaMAClient
from mentallama.tasks import TASKS

pytestmark = pytest.mark.server
POSTS = ["I have not slept properly in weeks and my exams are next month.", "Nobody calls me anymore."]


def post_json(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def sdk(cpu_server):
    with MentaLLaMAClient(cpu_server.grpc_url) as client:
        yield client


@pytest.mark.parametrize("task", list(TASKS))
def test_analyze_matches_the_sdk_for_every_imhi_task(cpu_server, sdk, task: str) -> None:
    aspect = TASKS[task].aspects[0] if TASKS[task].aspects else None
    status, body = post_json(f"{cpu_server.http_url}/v1/analyze",
                             {"post": POSTS, "task": task, "aspect": aspect, "max_tokens": 48})  # fmt: skip
    assert status == 200, body
    assert body["task"] == task and body["aspect"] == aspect and len(body["results"]) == len(POSTS)
    for post, result in zip(POSTS, body["results"], strict=True):
        expected = sdk.analyze(post, task, aspect=aspect, max_tokens=48)
        assert result["raw_text"] == expected.raw and result["raw_text"]
        assert (result["label"], result["reasoning"]) == (expected.label, expected.reasoning)
        assert (result["label_source"], result["confidence"]) == (expected.label_source, expected.confidence)
        assert (result["conflict"], result["off_task"], result["note"]) == (expected.conflict, expected.off_task,
                                                                            expected.note)  # fmt: skip
        assert result["finish_reason"] == expected.finish_reason
        assert result["usage"]["completion_tokens"] == expected.num_output_tokens
        assert result["usage"]["prompt_tokens"] == expected.num_input_tokens


def test_analyze_one_post_and_chat_format(cpu_server, sdk) -> None:
    status, body = post_json(f"{cpu_server.http_url}/v1/analyze", {"post": POSTS[0], "task": "stress", "chat": True,
                                                                   "max_tokens": 24})  # fmt: skip
    assert status == 200 and body["task"] == "dreaddit" and len(body["results"]) == 1
    assert body["results"][0]["raw_text"] == sdk.analyze(POSTS[0], "stress", chat=True, max_tokens=24).raw


@pytest.mark.parametrize(
    ("body", "param"),
    [({"post": "x", "task": "nope"}, "task"), ({"post": "x", "task": "Irf"}, "aspect"),
     ({"post": "  ", "task": "DR"}, "post"), ({"post": ["ok", ""], "task": "DR"}, "post[1]"),
     ({"post": ["x"] * 33, "task": "DR"}, "post"), ({"post": [], "task": "DR"}, "post"),
     ({"post": "x", "task": "DR", "system_prompt": "s"}, "system_prompt"), ({"post": "x", "task": "DR", "n": 2}, "n"),
     ({"post": "x", "task": "DR", "model": "other"}, "model"), ({"task": "DR"}, "post")],
)  # fmt: skip
def test_analyze_refusals_name_the_field(cpu_server, body, param) -> None:
    status, reply = post_json(f"{cpu_server.http_url}/v1/analyze", body)
    assert status == (404 if param == "model" else 400) and reply["error"]["param"] == param


def test_tasks_is_the_sdk_catalog(cpu_server) -> None:
    data = get_json(f"{cpu_server.http_url}/v1/tasks")["data"]
    assert [t["name"] for t in data] == list(TASKS)
    assert data[4]["aspects"] == list(TASKS["Irf"].aspects) and data[0]["is_binary"] is True


def test_openapi_document_describes_every_v1_route_and_no_v2_route(cpu_server) -> None:
    from openapi_spec_validator import validate

    document = get_json(f"{cpu_server.http_url}/openapi.json")
    assert document["openapi"].startswith("3.")
    validate(document)  # the OpenAPI 3.x schema itself: raises on any violation
    assert set(document["paths"]) == {"/v1/models", "/v1/models/{model}", "/v1/chat/completions", "/v1/completions",
                                      "/v1/analyze", "/v1/tasks"}  # fmt: skip
    schemas = document["components"]["schemas"]
    refs = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"].removeprefix("#/components/schemas/"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    assert refs and refs <= set(schemas), f"dangling references: {refs - set(schemas)}"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert method in ("get", "post") and "200" in operation["responses"], path
            if method == "post":
                assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert "messages" in schemas["ChatCompletionRequest"]["required"]
    assert {"label", "label_source", "confidence", "reasoning", "raw_text", "usage"} <= set(
        schemas["AnalyzeResult"]["properties"])  # fmt: skip
