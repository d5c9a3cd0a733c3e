"""TensorRT-LLM's own clients against the CPU profile (issue 12): requests shaped exactly as upstream sends them.

Our own client code, written from the facts of two upstream clients:
- tensorrtllm_backend `inflight_batcher_llm/client/end_to_end_grpc_client.py` (last engine-flow version):
  every tensor `[1, 1]` per prompt (`text_input` BYTES, `max_tokens` INT32, `stream`, `beam_width`,
  `temperature`, `exclude_input_in_output` always sent; penalties, `stop_words` `[1, n]`,
  `return_log_probs` ... when asked), one gRPC stream per request, `--batch-inputs` concatenating the
  prompts' tensors to `[N, 1]` in one request. It reads `text_output` as `output[0].decode()` (flat) and
  `batch_index` as `[0][0]`, appends streamed chunks per batch index, and prints an error response's message.
- vLLM's `tensorrt-llm` benchmark backend: HTTP POST `.../generate_stream` with `accumulate_tokens`,
  `text_input`, `temperature` 0, `top_p` 1, `max_tokens`, `stream` true; it sums the events' `text_output`.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from mentallama_bench.gpu_smoke_client import stream_responses

pytestmark = pytest.mark.server
MODELS = ("ensemble", "mentallama")  # upstream's client takes ensemble or tensorrt_llm_bls: mentallama is ours
PROMPTS = ["Hello world", "Question: does the poster suffer from stress?", "Exams next week and I cannot sleep"]
MAX_TOKENS = 24


def upstream_inputs(prompt: str, *, stream: bool, **extra: np.ndarray) -> dict[str, np.ndarray]:
    """One prompt's tensors as the end-to-end client's prepare_inputs builds them."""
    inputs = {
        "text_input": np.array([[prompt]]).astype(object),
        "max_tokens": np.ones((1, 1), dtype=np.int32) * MAX_TOKENS,
        "stream": np.array([[stream]], dtype=bool),
        "beam_width": np.array([[1]], dtype=np.int32),
        "temperature": np.array([[1.0]], dtype=np.float32),
        "exclude_input_in_output": np.array([[False]], dtype=bool),
    }
    return {**inputs, **extra}


@dataclass
class Outcome:
    texts: dict[int, str] = field(default_factory=dict)  # batch_index -> text (streamed chunks appended)
    errors: list[str] = field(default_factory=list)
    results: list = field(default_factory=list)


def run(url: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str], *, stream: bool) -> Outcome:
    """One request on one gRPC stream (sent as gpu-smoke sends it), parsed as the end-to-end client parses it."""
    responses = stream_responses(url, model, inputs, outputs, timeout_s=None, request_id="compat-1")
    outcome = Outcome()
    for result in responses:
        if isinstance(result, InferenceServerException):
            outcome.errors.append(result.message())
            continue
        outcome.results.append(result)
        output = result.as_numpy("text_output")
        if output is None:  # the empty final response of a decoupled model
            continue
        batch_index = result.as_numpy("batch_index")
        index = 0 if batch_index is None else int(batch_index[0][0])
        text = output[0].decode("utf-8")  # upstream: flat text_output, one string per (prompt, sequence)
        outcome.texts[index] = outcome.texts.get(index, "") + text if stream else text
    return outcome


def stacked(per_prompt: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`--batch-inputs`: every tensor concatenated over the prompts (axis 0)."""
    return {key: np.concatenate([p[key] for p in per_prompt], axis=0) for key in per_prompt[0]}


@pytest.fixture(scope="module")
def url(cpu_server) -> str:
    return cpu_server.grpc_url


@pytest.fixture(scope="module", params=MODELS)
def model(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def whole(url: str, model: str) -> dict[str, str]:
    """Non-streamed greedy answers of each prompt, prompt included (exclude_input_in_output false)."""
    out = {}
    for prompt in PROMPTS:
        outcome = run(url, model, upstream_inputs(prompt, stream=False), ["text_output"], stream=False)
        assert outcome.errors == []
        out[prompt] = outcome.texts[0]
    return out


def test_text_output_is_flat_as_upstream(url: str, model: str, whole: dict[str, str]) -> None:
    outcome = run(url, model, upstream_inputs(PROMPTS[0], stream=False), ["text_output"], stream=False)
    shapes = [r.as_numpy("text_output").shape for r in outcome.results if r.as_numpy("text_output") is not None]
    assert shapes == [(1,)]
    for prompt, text in whole.items():
        assert text.startswith(prompt) and len(text) > len(prompt)


def test_streaming_chunks_are_the_continuation(url: str, model: str, whole: dict[str, str]) -> None:
    for prompt in PROMPTS:
        outcome = run(url, model, upstream_inputs(prompt, stream=True), ["text_output"], stream=True)
        assert outcome.errors == []
        assert len([r for r in outcome.results if r.as_numpy("text_output") is not None]) > 1
        assert prompt + outcome.texts[0] == whole[prompt]


@pytest.mark.parametrize("stream", [False, True])
def test_batch_inputs(url: str, model: str, whole: dict[str, str], stream: bool) -> None:
    batch = stacked([upstream_inputs(p, stream=stream) for p in PROMPTS])
    assert batch["text_input"].shape == (3, 1)
    outcome = run(url, model, batch, ["text_output", "batch_index"], stream=stream)
    assert outcome.errors == []
    assert sorted(outcome.texts) == [0, 1, 2]
    for i, prompt in enumerate(PROMPTS):
        assert (prompt + outcome.texts[i] if stream else outcome.texts[i]) == whole[prompt]


def test_batch_with_a_bad_prompt_is_refused_whole(url: str, model: str) -> None:
    batch = stacked([upstream_inputs(p, stream=False) for p in PROMPTS[:2]])
    batch["max_tokens"] = np.array([[MAX_TOKENS], [0]], dtype=np.int32)
    outcome = run(url, model, batch, ["text_output", "batch_index"], stream=False)
    assert len(outcome.errors) == 1 and "max_tokens" in outcome.errors[0] and outcome.texts == {}


def test_penalties_stop_words_and_exclude_input(url: str, model: str, whole: dict[str, str]) -> None:
    prompt = PROMPTS[1]
    penalties = {
        "repetition_penalty": np.array([[1.1]], dtype=np.float32),
        "presence_penalty": np.array([[0.2]], dtype=np.float32),
        "frequency_penalty": np.array([[0.2]], dtype=np.float32),
    }
    outcome = run(url, model, upstream_inputs(prompt, stream=False, **penalties), ["text_output"], stream=False)
    assert outcome.errors == [] and outcome.texts[0].startswith(prompt)

    continuation = whole[prompt][len(prompt) :]
    word = continuation.split()[len(continuation.split()) // 2]
    stop = {"stop_words": np.array([[word]], dtype=object)}
    outcome = run(url, model, upstream_inputs(prompt, stream=False, **stop), ["text_output"], stream=False)
    assert outcome.errors == []
    stopped = outcome.texts[0]
    assert whole[prompt].startswith(stopped) and len(stopped) < len(whole[prompt]) and stopped.endswith(word)

    exclude = {"exclude_input_in_output": np.array([[True]], dtype=bool)}
    outcome = run(url, model, upstream_inputs(prompt, stream=False, **exclude), ["text_output"], stream=False)
    assert outcome.texts[0] == continuation


@pytest.mark.parametrize("stream", [False, True])
def test_return_log_probs(url: str, model: str, stream: bool) -> None:
    inputs = upstream_inputs(PROMPTS[0], stream=stream, return_log_probs=np.array([[True]], dtype=bool))
    outcome = run(url, model, inputs, ["text_output", "cum_log_probs", "output_log_probs"], stream=stream)
    assert outcome.errors == []
    with_text = [r for r in outcome.results if r.as_numpy("text_output") is not None]
    cum = with_text[-1].as_numpy("cum_log_probs")
    per_token = np.concatenate([r.as_numpy("output_log_probs").reshape(-1) for r in with_text])
    assert cum.shape == (1, 1) and with_text[0].as_numpy("output_log_probs").ndim == 3
    assert len(per_token) == MAX_TOKENS or float(per_token.sum()) == pytest.approx(float(cum[0][0]), abs=1e-3)
    assert np.all(per_token <= 0.0)


# What the end-to-end client sends for a flag, with the outputs it then asks for, and a word the refusal names.
REFUSED = [
    # beam_width and num_return_sequences are served (tests/server/test_beam_search.py)
    ({"return_context_logits": np.array([[True]], dtype=bool)}, ["context_logits"], "gather_context_logits"),
    ({"return_generation_logits": np.array([[True]], dtype=bool)}, ["generation_logits"], "generation logits"),
    (
        {"return_perf_metrics": np.array([[True]], dtype=bool)},
        ["kv_cache_alloc_new_blocks", "arrival_time_ns", "first_token_time_ns", "total_draft_tokens"],
        "return_perf_metrics",
    ),
    ({"bad_words": np.array([["sleep"]], dtype=object)}, [], "bad_words"),
    ({"lora_task_id": np.array([[7]], dtype=np.uint64)}, [], "LoRA"),
    ({"num_draft_tokens": np.array([[4]], dtype=np.int32)}, [], "draft model"),
    (
        {
            "embedding_bias_words": np.array([["sleep"]], dtype=object),
            "embedding_bias_weights": np.array([[1.0]], dtype=np.float32),
        },
        [],
        "embedding bias",
    ),
    ({"guided_decoding_guide_type": np.array([["json"]], dtype=object)}, [], "guided decoding"),
    ({"image_url_input": np.array([["http://x/y.png"]], dtype=object)}, [], "vision encoder"),
    ({"lookahead_window_size": np.array([[4]], dtype=np.int32)}, [], "lookahead decoding"),
]


@pytest.mark.parametrize(("extra", "outputs", "reason"), REFUSED, ids=[next(iter(r[0])) for r in REFUSED])
def test_what_the_cpu_engine_cannot_do_is_refused_with_its_reason(
    url: str, model: str, extra: dict[str, np.ndarray], outputs: list[str], reason: str
) -> None:
    outcome = run(
        url, model, upstream_inputs(PROMPTS[0], stream=False, **extra), ["text_output", *outputs], stream=False
    )
    assert len(outcome.errors) == 1, outcome
    assert reason in outcome.errors[0]
    assert "unexpected inference" not in outcome.errors[0]


def test_false_flags_ask_for_nothing(url: str, model: str, whole: dict[str, str]) -> None:
    """Clients send `return_context_logits: false` and the like by default: served as if absent."""
    off = {
        name: np.array([[False]], dtype=bool)
        for name in ("return_context_logits", "return_generation_logits", "return_perf_metrics")
    }
    outcome = run(url, model, upstream_inputs(PROMPTS[0], stream=False, **off), ["text_output"], stream=False)
    assert outcome.errors == [] and outcome.texts[0] == whole[PROMPTS[0]]


def test_vllm_trt_llm_benchmark_request(cpu_server, model: str, whole: dict[str, str]) -> None:
    """vLLM's `tensorrt-llm` backend: generate_stream with accumulate_tokens, greedy by temperature 0."""
    prompt = PROMPTS[2]
    payload = {
        "accumulate_tokens": True,
        "text_input": prompt,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": MAX_TOKENS,
        "stream": True,
    }
    request = urllib.request.Request(
        f"{cpu_server.http_url}/v2/models/{model}/generate_stream",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        assert resp.status == 200
        body = resp.read().decode("utf-8")
    events = [json.loads(line[len("data:") :]) for line in body.splitlines() if line.startswith("data:")]
    assert events and all("error" not in e for e in events)
    assert len(events) > 1
    assert prompt + "".join(e["text_output"] for e in events) == whole[prompt]
