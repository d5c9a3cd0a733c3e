"""`mentallama-bench`'s `openai` backend: its SSE handling without a server, and one request through the real
front door's /v1/chat/completions, measured like the other backends."""

from __future__ import annotations

import asyncio
import json

import pytest

from mentallama_bench.backends import OpenAIChatBackend, make_backend, openai_payload
from mentallama_bench.records import RequestOutcome, SampleRequest, SamplingParams

SAMPLE = SampleRequest(index=0, prompt="Consider this post: ...", task="DR", max_tokens=8)


def test_payload_streams_with_usage_and_forces_the_length() -> None:
    payload = openai_payload(SAMPLE, SamplingParams(force_output_len=True, temperature=0.0, seed=3), "mentallama")
    assert payload["stream"] is True and payload["stream_options"] == {"include_usage": True}
    assert payload["messages"] == [{"role": "user", "content": SAMPLE.prompt}]
    assert (payload["max_tokens"], payload["min_tokens"], payload["temperature"], payload["seed"]) == (8, 8, 0.0, 3)
    assert "top_p" not in payload


def test_events_give_chunk_times_text_counts_and_the_end() -> None:
    backend = make_backend("openai", "127.0.0.1:8000")
    assert isinstance(backend, OpenAIChatBackend) and backend.endpoint == "http://127.0.0.1:8000"
    out = RequestOutcome(start=0.0)
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": None}
    for at, event in enumerate([role, {"choices": [{"delta": {"content": "a"}}], "usage": None},
                                {"choices": [{"delta": {"content": "b"}}], "usage": None},
                                {"choices": [{"delta": {}, "finish_reason": "length"}], "usage": None},
                                {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}]):  # fmt: skip
        backend._handle_event(json.dumps(event), float(at), out)
    assert not out.final_seen
    backend._handle_event("[DONE]", 9.0, out)
    assert (out.text, out.chunk_times, out.server_input_tokens, out.server_output_tokens) == ("ab", [1.0, 2.0], 5, 2)
    assert out.final_seen and out.success
    failed = RequestOutcome(start=0.0)
    backend._handle_event(json.dumps({"error": {"message": "boom", "type": "server_error"}}), 1.0, failed)
    backend._handle_event("[DONE]", 2.0, failed)
    assert failed.error_code == "INFER_ERROR" and failed.error == "boom" and not failed.final_seen


@pytest.mark.server
def test_one_request_through_the_front_door(cpu_server) -> None:
    async def run() -> tuple[bool, RequestOutcome]:
        async with make_backend("openai", cpu_server.http_url) as backend:
            ready = await backend.is_ready()
            return ready, await backend.generate(SAMPLE, SamplingParams(force_output_len=True))

    ready, out = asyncio.run(run())
    assert ready and out.success and out.final_seen, out.error
    assert out.server_output_tokens == 8 and out.chunk_times and out.end > out.chunk_times[-1] >= out.start
    assert out.server_input_tokens and out.server_input_tokens > 5
