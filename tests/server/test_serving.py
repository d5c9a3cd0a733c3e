"""The CPU profile on a real tritonserver: correctness of both entry models over gRPC and HTTP."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from tests.server.triton_io import StreamCall, http_generate, infer, make_inputs
from tests.support.metrics import scrape_metric

pytestmark = pytest.mark.server
MODELS = ("mentallama", "ensemble")
PROMPTS = [
    'Consider this post: "I can\'t sleep and nothing feels worth doing anymore." '
    "Question: Does the poster suffer from depression?",
    "Hello world",
    'Consider this post: "Exams next week, café shifts every night, no money left 😞" '
    "Question: What is the stress cause of this post?",
]


def reference_continuation(model, tokenizer, prompt: str, max_tokens: int) -> tuple[str, int]:
    """transformers generate() (greedy) and the text its tokens add after the prompt."""
    prompt_ids = tokenizer.encode(prompt)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=max_tokens,
            do_sample=False,
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        )
    generated = out[0, len(prompt_ids) :].tolist()
    if tokenizer.eos_token_id in generated:  # the server ends at end_id and leaves it out
        generated = generated[: generated.index(tokenizer.eos_token_id)]
    full = tokenizer.decode(prompt_ids + generated, skip_special_tokens=True)
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    assert full.startswith(head)
    return full[len(head) :], len(generated)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_greedy_grpc_matches_transformers_generate(cpu_server, reference_model, tiny_tokenizer, model, stream):
    for prompt in PROMPTS:
        expected, n = reference_continuation(reference_model, tiny_tokenizer, prompt, 24)
        result = infer(
            cpu_server.grpc_url,
            model,
            prompt,
            24,
            stream=stream,
            exclude_input_in_output=True,
            return_num_output_tokens=True,
            return_num_input_tokens=True,
        )
        assert result.error is None
        assert result.text == expected
        assert int(result.outputs["num_output_tokens"].reshape(-1)[0]) == n
        assert int(result.outputs["num_input_tokens"].reshape(-1)[0]) == len(tiny_tokenizer.encode(prompt))
        if stream:
            assert len([c for c in result.chunks if c]) > 1, "streaming must deliver several chunks"


@pytest.mark.parametrize("model", MODELS)
def test_greedy_http_generate_and_generate_stream_match(cpu_server, reference_model, tiny_tokenizer, model):
    prompt = PROMPTS[2]
    expected, _ = reference_continuation(reference_model, tiny_tokenizer, prompt, 20)
    payload = {"text_input": prompt, "max_tokens": 20, "exclude_input_in_output": True}
    status, events = http_generate(cpu_server.http_url, model, payload)
    assert status == 200 and events[0]["text_output"] == expected
    status, events = http_generate(cpu_server.http_url, model, {**payload, "stream": True}, stream=True)
    assert status == 200
    assert "".join(e.get("text_output", "") for e in events) == expected
    assert len(events) > 1


def test_streamed_chunks_never_split_a_character(cpu_server):
    # Byte-fallback tokens carry one byte each. A character split across two chunks would decode as
    # replacement characters in each chunk and the concatenation would differ from the text decoded
    # in one piece; the SSE JSON would also be invalid.
    for prompt in ("心 naïve 😊", "ça va? 大丈夫", "ünïcødé ✓"):
        payload = {"text_input": prompt, "max_tokens": 48, "exclude_input_in_output": True}
        _, whole = http_generate(cpu_server.http_url, "mentallama", payload)
        for model in ("mentallama", "ensemble"):
            status, events = http_generate(cpu_server.http_url, model, {**payload, "stream": True}, stream=True)
            assert status == 200
            assert "".join(e.get("text_output", "") for e in events) == whole[0]["text_output"]


def test_concurrent_requests_return_what_each_returns_alone(cpu_server):
    jobs = [(PROMPTS[i % 3] + " " * (i % 2), 8 + 5 * i) for i in range(8)]
    alone = [infer(cpu_server.grpc_url, "mentallama", p, n).text for p, n in jobs]
    together: list[str | None] = [None] * len(jobs)

    def run(i: int) -> None:
        together[i] = infer(cpu_server.grpc_url, "mentallama", jobs[i][0], jobs[i][1]).text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone


def test_short_request_gets_first_token_while_long_ones_run(cpu_server):
    long_calls = [
        StreamCall(cpu_server.grpc_url, "mentallama", make_inputs(PROMPTS[0], 1024, stream=True, min_tokens=1024))
        for _ in range(6)
    ]
    try:
        for call in long_calls:  # all six are generating
            call.next(60)
        short = StreamCall(cpu_server.grpc_url, "mentallama", make_inputs("Hello world", 4, stream=True))
        short_result = short.result()
        assert short_result.error is None and short_result.text
        # The short request did not wait for the long ones: some were still generating when it completed (the
        # tiny engine makes thousands of tokens/s, so a long one can finish while the short one is answered).
        finished = 0
        for call in long_calls:
            while not call.queue.empty():
                response, error = call.queue.get_nowait()
                assert error is None
                finished += response.get_response().parameters["triton_final_response"].bool_param
        assert finished < len(long_calls)
    finally:
        for call in long_calls:
            call.close()


@pytest.mark.parametrize("model", MODELS)
def test_max_tokens_end_id_and_exclude_input(cpu_server, tiny_tokenizer, model):
    prompt = PROMPTS[1]
    full = infer(cpu_server.grpc_url, model, prompt, 12, exclude_input_in_output=True, return_num_output_tokens=True)
    assert int(full.outputs["num_output_tokens"].reshape(-1)[0]) == 12
    with_input = infer(cpu_server.grpc_url, model, prompt, 12)
    assert with_input.text == prompt + full.text
    # Ending at the 4th generated token: the output stops before it.
    ids = tiny_tokenizer.encode(prompt + full.text, add_special_tokens=True)[len(tiny_tokenizer.encode(prompt)) :]
    cut = infer(
        cpu_server.grpc_url,
        model,
        prompt,
        12,
        end_id=ids[3],
        exclude_input_in_output=True,
        return_num_output_tokens=True,
    )
    n = int(cut.outputs["num_output_tokens"].reshape(-1)[0])
    assert n < 12 and full.text.startswith(cut.text) and len(cut.text) < len(full.text)


def engine_output_ids(url: str, prompt_ids: list[int], max_tokens: int, **extra) -> list[int]:
    """Call the `tensorrt_llm` engine step directly (TensorRT-LLM's tensor interface); `url`: tritonserver's own,
    as the front door does not let clients reach internal models."""
    inputs = make_inputs(
        None,
        None,
        input_ids=np.array([prompt_ids], dtype=np.int32),
        input_lengths=np.array([[len(prompt_ids)]], dtype=np.int32),
        request_output_len=np.array([[max_tokens]], dtype=np.int32),
        exclude_input_in_output=True,
        **extra,
    )
    result = StreamCall(url, "tensorrt_llm", inputs).result()
    assert result.error is None, result.error
    length = int(result.outputs["sequence_length"].reshape(-1)[0])
    return result.outputs["output_ids"].reshape(-1)[:length].tolist()


def test_engine_step_stop_words_list(cpu_server, tiny_tokenizer):
    prompt_ids = tiny_tokenizer.encode(PROMPTS[0])
    full = engine_output_ids(cpu_server.triton.grpc_url, prompt_ids, 32)
    stop = full[4:6]
    words = np.array([[stop, [len(stop), -1]]], dtype=np.int32)  # TensorRT-LLM word-list format
    cut = engine_output_ids(cpu_server.triton.grpc_url, prompt_ids, 32, stop_words_list=words)
    assert cut == full[:6]  # TensorRT-LLM keeps the stop word in the output


@pytest.mark.parametrize("model", MODELS)
def test_stop_words_end_generation(cpu_server, tiny_tokenizer, model):
    prompt_ids = tiny_tokenizer.encode(PROMPTS[0])
    full_ids = engine_output_ids(cpu_server.triton.grpc_url, prompt_ids, 32)
    # A stop word is tokenised on its own, so pick a generated token that is a whole word by itself.
    position, word = next(
        (i, tiny_tokenizer.decode([t]).strip())
        for i, t in enumerate(full_ids)
        if i >= 2
        and tiny_tokenizer.convert_ids_to_tokens(t).startswith("\u2581")
        and tiny_tokenizer.encode(tiny_tokenizer.decode([t]).strip(), add_special_tokens=False) == [t]
    )
    full = infer(cpu_server.grpc_url, model, PROMPTS[0], 32, exclude_input_in_output=True).text
    cut = infer(cpu_server.grpc_url, model, PROMPTS[0], 32, exclude_input_in_output=True, stop_words=[word]).text
    assert cut.endswith(word) and full.startswith(cut) and len(cut) < len(full)
    assert (
        cut
        == tiny_tokenizer.decode(prompt_ids + full_ids[: position + 1], skip_special_tokens=True)[
            len(tiny_tokenizer.decode(prompt_ids, skip_special_tokens=True)) :
        ]
    )


def test_cancelled_stream_frees_its_slot(cpu_server):
    # 1024 forced tokens each: far longer than the test needs to look at the engine and cancel.
    calls = [
        StreamCall(cpu_server.grpc_url, "mentallama", make_inputs(PROMPTS[0], 1024, stream=True, min_tokens=1024))
        for _ in range(6)
    ]
    for call in calls:
        call.next(60)
    # The gauges are sampled every 50 ms by the engine step's watcher: wait for a sample that shows the streams.
    deadline = time.monotonic() + 10
    active = None
    while not active and time.monotonic() < deadline:
        active = scrape_metric(cpu_server.metrics_url, "mentallama_engine_requests", 'state="active"')
        time.sleep(0.05)
    assert active is not None and active >= 1
    started = time.monotonic()
    for call in calls:
        call.close()  # cancels the gRPC stream and its request
    deadline = started + 20
    while time.monotonic() < deadline:
        active = scrape_metric(cpu_server.metrics_url, "mentallama_engine_requests", 'state="active"')
        tracked = scrape_metric(cpu_server.metrics_url, "mentallama_engine_tracked_requests")
        if active == 0 and tracked == 0:
            break
        time.sleep(0.2)
    assert (active, tracked) == (0, 0)
