"""Several choices per request (`n`, `best_of`) on the OpenAI-compatible routes, and the front door's cap on beams
and sequences per prompt on both KServe protocols, against the real server (issue 19): the official `openai`
package, raw HTTP for the SSE framing, tritonclient for gRPC. The `tiny` checkpoint is random: tests compare texts
with each other, not meanings."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest

from tests.server.test_trtllm_compat import run, upstream_inputs
from tests.support.metrics import scrape_metric, wait_engine

pytestmark = pytest.mark.server
MODEL = "mentallama"
USER = [{"role": "user", "content": "Consider this post: exams are close and I cannot sleep. Does it show stress?"}]
SAMPLED = {"temperature": 1.0, "seed": 7}
LIMIT = 4  # the cpu_server's --max-sequences (the CPU profile's default)


@pytest.fixture
def client(cpu_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cpu_server.http_url}/v1", api_key="unused", max_retries=0)


def post(url: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_greedy_n_is_n_copies_of_the_single_answer(client) -> None:
    one = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=10, temperature=0)
    two = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=10, temperature=0, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert [c.message.content for c in two.choices] == [one.choices[0].message.content] * 2
    assert [c.finish_reason for c in two.choices] == [one.choices[0].finish_reason] * 2
    assert two.usage.prompt_tokens == one.usage.prompt_tokens
    assert two.usage.completion_tokens == 2 * one.usage.completion_tokens  # every choice counts


def test_sampled_choices_differ_and_repeat_with_their_seed(client) -> None:
    def choices() -> list[str]:
        reply = client.completions.create(model=MODEL, prompt="I feel", max_tokens=12, n=3, **SAMPLED)
        assert [c.index for c in reply.choices] == [0, 1, 2] and all(c.finish_reason for c in reply.choices)
        return [c.text for c in reply.choices]

    first = choices()
    assert len(set(first)) > 1 and all(first)
    assert choices() == first


def test_streamed_choices_join_to_the_non_streamed_ones(client) -> None:
    """The official client with n=2, streamed: each chunk carries one choice and its index; per index the
    pieces join to the non-streamed choice of the same seed, and include_usage counts both."""
    whole = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=12, n=2, **SAMPLED)
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=12, n=2, stream=True,
                                                 stream_options={"include_usage": True}, **SAMPLED))  # fmt: skip
    texts: dict[int, str] = {0: "", 1: ""}
    finish: dict[int, str] = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finish[choice.index] = choice.finish_reason
    assert [texts[0], texts[1]] == [c.message.content for c in whole.choices]
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_raw_sse_framing_with_two_choices(cpu_server) -> None:
    body = {"model": MODEL, "messages": USER, "max_tokens": 6, "n": 2, "stream": True, **SAMPLED}
    request = urllib.request.Request(f"{cpu_server.http_url}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=120) as resp:
        assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
        text = resp.read().decode()
    events = text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]" and text.count("data: [DONE]") == 1
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(len(p["choices"]) == 1 for p in payloads)  # one choice per chunk, as OpenAI streams n > 1
    indexes = [p["choices"][0]["index"] for p in payloads]
    assert set(indexes) == {0, 1}
    roles = [p["choices"][0]["index"] for p in payloads if p["choices"][0]["delta"].get("role") == "assistant"]
    ends = [p["choices"][0]["index"] for p in payloads if p["choices"][0]["finish_reason"]]
    assert sorted(roles) == [0, 1] and sorted(ends) == [0, 1]  # each choice opened and ended once
    assert payloads[-1]["choices"][0]["finish_reason"]  # nothing of a choice after the ends


def test_best_of_returns_n_and_counts_every_sequence(client) -> None:
    reply = client.completions.create(model=MODEL, prompt="I feel", max_tokens=6, n=2, best_of=3,
                                      extra_body={"min_tokens": 6}, **SAMPLED)  # fmt: skip
    assert [c.index for c in reply.choices] == [0, 1] and all(c.text for c in reply.choices)
    assert reply.usage.completion_tokens == 3 * 6  # three sequences of exactly six tokens were generated
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="I feel", max_tokens=4, best_of=2, stream=True)
    assert caught.value.body["param"] == "best_of"


@pytest.mark.parametrize(
    ("value", "words"),
    [(LIMIT + 1, f"at most {LIMIT}"), (10**9, "n is 1000000000"), (0, "greater than or equal to 1"),
     (-1, "greater than or equal to 1"), ("2", "valid integer"), (True, "valid integer"), (2**70, "at most")],
)  # fmt: skip
def test_bad_n_is_a_400_naming_n(cpu_server, value, words) -> None:
    for route, prompt in (("chat/completions", {"messages": USER}), ("completions", {"prompt": "Hi"})):
        status, text = post(f"{cpu_server.http_url}/v1/{route}", {"model": MODEL, **prompt, "max_tokens": 2,
                                                                    "n": value})  # fmt: skip
        error = json.loads(text)["error"]
        assert (status, error["param"], error["type"]) == (400, "n", "invalid_request_error"), text
        assert words in error["message"] and error["message"].startswith("n")


def test_the_official_client_sees_the_limit(client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2, n=LIMIT + 1)
    assert caught.value.body["param"] == "n" and str(LIMIT) in caught.value.body["message"]
    assert len(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2, n=LIMIT).choices) == LIMIT


def test_a_client_that_leaves_while_its_choices_generate_stops_them_within_a_second(cpu_server) -> None:
    """On the CPU profile sampled choices arrive whole, when done, so this client leaves before any chunk came:
    the front door stops the request in band; the engine is idle within a second, having produced fewer tokens
    than the finished choices would have."""
    host, port = cpu_server.http_url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"model": MODEL, "messages": USER, "max_tokens": 1024, "min_tokens": 1024, "n": LIMIT,
                       "stream": True, **SAMPLED}).encode()  # fmt: skip
    before = scrape_metric(cpu_server.metrics_url, "mentallama_engine_tokens_total") or 0.0
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    wait_engine(cpu_server.metrics_url, busy=True, within_s=5)
    sock.close()
    wait_engine(cpu_server.metrics_url, busy=False, within_s=1)
    produced = (scrape_metric(cpu_server.metrics_url, "mentallama_engine_tokens_total") or 0.0) - before
    assert produced < LIMIT * 1024


# ---- the front door's cap on beam_width / num_return_sequences (KServe gRPC and HTTP) ------------------------


@pytest.mark.parametrize("model", ["ensemble", "mentallama"])
@pytest.mark.parametrize(("name", "value"), [("beam_width", 2**31 - 1), ("num_return_sequences", LIMIT + 1),
                                             ("beam_width", 0), ("num_return_sequences", -1)])  # fmt: skip
def test_grpc_refuses_beams_or_sequences_outside_the_cap_naming_the_input(cpu_server, model, name, value) -> None:
    extra = {name: np.array([[value]], dtype=np.int32)}
    outcome = run(cpu_server.grpc_url, model, upstream_inputs("Hi", stream=False, **extra), ["text_output"],
                  stream=False)  # fmt: skip
    assert len(outcome.errors) == 1 and outcome.errors[0].startswith(name), outcome.errors
    expected = f"this server serves at most {LIMIT}" if value > 0 else f"must be >= 1, got {value}"
    assert expected in outcome.errors[0]


@pytest.mark.parametrize("model", ["ensemble", "mentallama"])
def test_http_generate_refuses_beams_or_sequences_above_the_cap_naming_the_input(cpu_server, model) -> None:
    url = f"{cpu_server.http_url}/v2/models/{model}/generate"
    for name, value in (("beam_width", 10**9), ("num_return_sequences", LIMIT + 1)):
        status, text = post(url, {"text_input": "Hi", "max_tokens": 2, name: value})
        assert status == 400 and json.loads(text)["error"].startswith(f"{name} is {value}; this server serves at "
                                                                      f"most {LIMIT}"), text  # fmt: skip
    stream = f"{cpu_server.http_url}/v2/models/{model}/generate_stream"
    status, text = post(stream, {"text_input": "Hi", "max_tokens": 2, "beam_width": 10**9})
    assert status == 400 and "beam_width is 1000000000" in text


def test_a_front_door_with_a_lower_cap_refuses_above_it_on_every_route(front_door_with) -> None:
    door = front_door_with(max_sequences=2)
    client = openai.OpenAI(base_url=f"{door.http_url}/v1", api_key="unused", max_retries=0)
    assert len(client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, n=2).choices) == 2
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, n=3)
    assert caught.value.body["param"] == "n" and "at most 2" in caught.value.body["message"]
    three = {"num_return_sequences": np.array([[3]], dtype=np.int32)}
    outcome = run(door.grpc_url, "ensemble", upstream_inputs("Hi", stream=False, **three), ["text_output"],
                  stream=False)  # fmt: skip
    assert len(outcome.errors) == 1 and "num_return_sequences is 3; this server serves at most 2" in outcome.errors[0]
    two = {"num_return_sequences": np.array([[2]], dtype=np.int32)}
    outcome = run(door.grpc_url, "ensemble", upstream_inputs("Hi", stream=False, **two), ["text_output"],
                  stream=False)  # fmt: skip
    assert outcome.errors == [] and len(outcome.texts) == 1  # two sequences of one prompt (batch index 0)


def test_the_launcher_hands_the_front_door_the_profiles_cap(cpu_server) -> None:
    settings = json.loads((cpu_server.run_dir / "front_door.json").read_text(encoding="utf-8"))
    assert settings["max_sequences"] == LIMIT
