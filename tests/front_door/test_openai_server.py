"""The OpenAI-compatible /v1 routes against the real server (issue 19), with the official `openai` package and
with raw HTTP for the SSE framing; the `tiny` checkpoint is random, so tests compare texts, not meanings."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request

import openai
import pytest

from tests.support.metrics import wait_engine

pytestmark = pytest.mark.server
MODEL = "mentallama"
USER = [{"role": "user", "content": "Consider this post: I cannot sleep and nothing helps. Does it show stress?"}]


@pytest.fixture
def client(cpu_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cpu_server.http_url}/v1", api_key="unused", max_retries=0)


def raw(cpu_server, path: str, body: dict | None = None) -> tuple[int, dict[str, str], str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{cpu_server.http_url}{path}", data=data, method="GET" if body is None else
                                     "POST", headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def test_models_lists_the_served_model(client) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion_sync_has_text_usage_and_finish_reason(client) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=8, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_max_tokens_reached_is_length(client) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_completion_tokens=3,
                                           extra_body={"min_tokens": 3})  # fmt: skip
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


def test_chat_completion_async(cpu_server) -> None:
    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{cpu_server.http_url}/v1", api_key="x", max_retries=0) as aclient:
            replies = await asyncio.gather(*(aclient.chat.completions.create(
                model=MODEL, messages=USER, max_tokens=6, temperature=0) for _ in range(3)))  # fmt: skip
            return [r.choices[0].message.content for r in replies]

    texts = asyncio.run(main())
    assert len(texts) == 3 and texts[0] and len(set(texts)) == 1  # greedy: one text


def test_streaming_joins_to_the_non_streamed_text_and_include_usage_comes_last(client) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_has_no_usage(client) -> None:
    chunks = list(client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, stream=True))
    assert chunks and all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_completions_takes_the_prompt_as_is(client) -> None:
    reply = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=5, temperature=0)
    assert reply.object == "text_completion" and reply.choices[0].text
    # The chat route wraps the same text in [INST] ... [/INST]: more prompt tokens.
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello there"}],
                                          max_tokens=5, temperature=0)  # fmt: skip
    assert chat.usage.prompt_tokens > reply.usage.prompt_tokens


def test_stop_string_ends_the_text_before_it(client) -> None:
    """The engine stops on a stop string's tokens (the tiny model's words are not always tokenised the way it
    generated them, so a few words are tried); the text ends before the string, as OpenAI's does."""
    free = client.completions.create(model=MODEL, prompt="Hello", max_tokens=24, temperature=0).choices[0].text
    stopped_at = []
    for word in free.split()[:6]:
        reply = client.completions.create(model=MODEL, prompt="Hello", max_tokens=24, temperature=0, stop=word)
        if reply.choices[0].finish_reason == "stop":
            text = reply.choices[0].text
            assert free.startswith(text + word) and word not in text
            stopped_at.append(word)
    assert stopped_at, f"no word of {free!r} stopped the generation"


def test_same_seed_and_temperature_give_the_same_text(client) -> None:
    def sample(seed: int) -> str:
        return client.chat.completions.create(model=MODEL, messages=USER, max_tokens=16, temperature=1.0,
                                              seed=seed).choices[0].message.content  # fmt: skip

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))  # sampling does happen


def test_unknown_model_is_404_in_openai_shape(client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=4)
    error = caught.value.body
    assert caught.value.status_code == 404 and error["code"] == "model_not_found" and error["param"] == "model"


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"n": 5}, "n"), ({"temperature": 5}, "temperature"), ({"logprobs": True}, "logprobs"),
     ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"), ({"guided_json": {}}, "guided_json"),
     ({"seed": -1}, "seed")],
)  # fmt: skip
def test_bad_fields_are_400_naming_them(client, extra, param) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, extra_body=extra)
    assert caught.value.body["param"] == param and caught.value.body["type"] == "invalid_request_error"
    assert param in caught.value.body["message"]


def test_fields_clients_commonly_send_are_ignored(client) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, user="u-1", store=False,
                                           metadata={"k": "v"}, stream_options=None)  # fmt: skip
    assert reply.choices[0].message.content


def test_raw_sse_framing(cpu_server) -> None:
    body = {"model": MODEL, "messages": USER, "max_tokens": 6, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    status, headers, text = raw(cpu_server, "/v1/chat/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert {p["id"] for p in payloads} == {payloads[0]["id"]}
    assert all(p["object"] == "chat.completion.chunk" and p["model"] == MODEL for p in payloads)
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["total_tokens"] > 0


def test_raw_errors_carry_retry_after_only_when_retryable(cpu_server) -> None:
    status, headers, text = raw(cpu_server, "/v1/chat/completions", {"model": MODEL, "messages": []})
    assert status == 400 and json.loads(text)["error"]["param"] == "messages" and "retry-after" not in {
        k.lower() for k in headers}  # fmt: skip


def test_too_long_prompt_is_a_400_from_the_model(client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="word " * 3000, max_tokens=4)
    assert caught.value.body["param"] in ("prompt", None) and caught.value.body["message"]


def test_a_disconnecting_streaming_client_frees_the_engine_within_a_second(cpu_server) -> None:
    host, port = cpu_server.http_url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"model": MODEL, "messages": USER, "max_tokens": 1000, "min_tokens": 1000,
                       "stream": True}).encode()  # fmt: skip
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    received = b""
    while received.count(b"data: ") < 3:  # the role chunk and two text chunks: generating
        received += sock.recv(65536)
    wait_engine(cpu_server.metrics_url, busy=True, within_s=5)
    sock.close()
    started = time.monotonic()
    wait_engine(cpu_server.metrics_url, busy=False, within_s=1)
    assert time.monotonic() - started <= 1.0


def test_a_disconnecting_non_streaming_client_frees_the_engine_within_a_second(cpu_server) -> None:
    host, port = cpu_server.http_url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 1000, "min_tokens": 1000}).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    wait_engine(cpu_server.metrics_url, busy=True, within_s=5)
    sock.close()
    wait_engine(cpu_server.metrics_url, busy=False, within_s=1)


def test_api_key_is_required_when_configured(front_door_with) -> None:
    door = front_door_with(api_keys=["sekret"])
    denied = openai.OpenAI(base_url=f"{door.http_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        denied.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
    assert caught.value.body["code"] == "invalid_api_key"
    allowed = openai.OpenAI(base_url=f"{door.http_url}/v1", api_key="sekret", max_retries=0)
    assert allowed.chat.completions.create(model=MODEL, messages=USER, max_tokens=2).choices[0].message.content


def test_per_client_limit_is_429_with_retry_after(front_door_with) -> None:
    door = front_door_with(api_keys=["k"], max_in_flight_per_client=1)
    url = f"{door.http_url}/v1/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}
    long = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 1000, "min_tokens": 1000, "stream": True})
    first = urllib.request.urlopen(urllib.request.Request(url, long.encode(), headers), timeout=60)
    try:
        first.read(20)  # admitted and streaming
        short = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 2}).encode()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(url, short, headers), timeout=60)
        assert caught.value.code == 429 and caught.value.headers["Retry-After"]
        assert json.loads(caught.value.read())["error"]["type"] == "rate_limit_error"
    finally:
        first.close()


def test_the_launcher_hands_the_front_door_the_served_checkpoints_tokenizer_folder(cpu_server) -> None:
    """/v1/chat/completions renders the served checkpoint's own chat template: the launcher writes its tokenizer
    folder into the front door's settings (Triton's ModelConfig API is closed to the front door)."""
    from pathlib import Path

    from mentallama_server.front_door.chat_template import load_chat_template

    settings = json.loads((cpu_server.run_dir / "front_door.json").read_text(encoding="utf-8"))
    folder = Path(settings["tokenizer_dir"])
    assert (folder / "tokenizer.json").is_file() and (folder / "openvino_model.xml").is_file()  # the engine's
    assert load_chat_template(folder).source is not None  # tiny's tokenizer_config.json carries a chat template
