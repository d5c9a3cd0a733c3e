"""Beam search and several sequences on the CPU profile (issue 21), on a real server through both entry models.

- Beam search is transformers' `generate(num_beams=2)` on the tiny checkpoint in float32, beam for beam, for
  short prompts.
- TensorRT-LLM's end-to-end gRPC client's requests with `--beam-width 2` and with `--num-return-sequences 2`
  (streamed or not, as it sends them) succeed, and come back in TensorRT-LLM's layout: the beams together in one
  response (`text_output` [2], `cum_log_probs` [1, 2] per beam), samples one response each with their
  `sequence_index`.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.server.test_trtllm_compat import run, upstream_inputs

MODELS = ("ensemble", "mentallama")
PROMPTS = ["Hello world", "I cannot sleep before exams.", "Question: does the poster suffer from stress?"]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def url(cpu_server) -> str:
    return cpu_server.grpc_url


@pytest.fixture(scope="module")
def transformers_beams(tiny_checkpoint) -> dict[str, list[tuple[str, float]]]:
    """transformers' two best beams per prompt (text after the prompt, cum log prob), float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint), dtype=torch.float32).eval()
    out = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            result = model.generate(ids, max_new_tokens=MAX_TOKENS, num_beams=2, num_return_sequences=2,
                                    do_sample=False, output_scores=True, return_dict_in_generate=True)  # fmt: skip
        beams = []
        for sequence, score in zip(result.sequences, result.sequences_scores, strict=True):
            whole = tokenizer.decode(sequence, skip_special_tokens=True)
            assert whole.startswith(prompt)
            # length_penalty 1: the score is the cum log prob over the generated length
            beams.append((whole[len(prompt) :], float(score) * (len(sequence) - ids.shape[1])))
        out[prompt] = beams
    return out


def beam_inputs(prompt: str, *, stream: bool, **extra: np.ndarray) -> dict[str, np.ndarray]:
    inputs = upstream_inputs(prompt, stream=stream, **extra)
    inputs["max_tokens"] = np.array([[MAX_TOKENS]], dtype=np.int32)
    inputs["beam_width"] = np.array([[2]], dtype=np.int32)
    inputs["exclude_input_in_output"] = np.array([[True]], dtype=bool)
    return inputs


@pytest.mark.parametrize("model", MODELS)
def test_beam_search_is_transformers_beam_search(url: str, model: str, transformers_beams) -> None:
    for prompt in PROMPTS:
        inputs = beam_inputs(prompt, stream=False, return_log_probs=np.array([[True]], dtype=bool))
        outcome = run(url, model, inputs, ["text_output", "cum_log_probs", "output_log_probs"], stream=False)
        assert outcome.errors == []
        (response,) = [r for r in outcome.results if r.as_numpy("text_output") is not None]
        texts = [t.decode("utf-8") for t in response.as_numpy("text_output")]
        assert texts == [text for text, _ in transformers_beams[prompt]], prompt
        cum = response.as_numpy("cum_log_probs")
        assert cum.shape == (1, 2)
        assert cum[0].tolist() == pytest.approx([score for _, score in transformers_beams[prompt]], abs=1e-3)
        per_token = response.as_numpy("output_log_probs")
        assert per_token.shape[:2] == (1, 2) and float(per_token[0, 0].sum()) == pytest.approx(float(cum[0, 0]), 1e-3)


@pytest.mark.parametrize("model", MODELS)
def test_the_e2e_clients_beam_width_2_request(url: str, model: str, transformers_beams) -> None:
    """As end_to_end_grpc_client.py -b 2 sends it (prompt in the output; streamed or not): the first text_output
    is the best beam; streamed beams are whole beams (the client overwrites), the last response the final."""
    prompt = PROMPTS[1]
    best = transformers_beams[prompt][0][0]
    for stream in (False, True):
        inputs = upstream_inputs(prompt, stream=stream, beam_width=np.array([[2]], dtype=np.int32))
        inputs["max_tokens"] = np.array([[MAX_TOKENS]], dtype=np.int32)
        outcome = run(url, model, inputs, ["text_output"], stream=stream)
        assert outcome.errors == []
        with_text = [r for r in outcome.results if r.as_numpy("text_output") is not None]
        last = [t.decode("utf-8") for t in with_text[-1].as_numpy("text_output")]
        assert len(last) == 2
        assert last[0] == (best if stream else prompt + best)  # streamed beams carry no prompt, as TensorRT-LLM's


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_the_e2e_clients_two_sequences_request(url: str, model: str, stream: bool) -> None:
    """As end_to_end_grpc_client.py -n 2 sends it (greedy, as the client sets no top_k/top_p): two sequences, each
    in responses of its own with its sequence_index; greedy ones are the same sequence twice."""
    prompt = PROMPTS[0]
    extra = {"num_return_sequences": np.array([[2]], dtype=np.int32)}
    outcome = run(url, model, upstream_inputs(prompt, stream=stream, **extra), ["text_output", "sequence_index"],
                  stream=stream)  # fmt: skip
    assert outcome.errors == []
    texts: dict[int, str] = {}
    for r in outcome.results:
        if r.as_numpy("text_output") is not None:
            i, text = int(r.as_numpy("sequence_index")[0][0]), r.as_numpy("text_output")[0].decode("utf-8")
            texts[i] = texts.get(i, "") + text if stream else text  # streamed: chunks per sequence
    assert sorted(texts) == [0, 1]
    single = run(url, model, upstream_inputs(prompt, stream=stream), ["text_output"], stream=stream)
    assert texts[0] == texts[1] == single.texts[0]  # each copy is the whole greedy answer
    assert len(texts[0]) > len(prompt) + 10


@pytest.mark.parametrize("model", MODELS)
def test_sampled_sequences_differ_and_repeat_with_their_seed(url: str, model: str) -> None:
    prompt = PROMPTS[2]
    extra = {"num_return_sequences": np.array([[3]], dtype=np.int32), "top_k": np.array([[50]], np.int32),
             "seed": np.array([[11]], dtype=np.uint64)}  # fmt: skip

    def texts() -> dict[int, str]:
        outcome = run(url, model, upstream_inputs(prompt, stream=False, **extra), ["text_output", "sequence_index"],
                      stream=False)  # fmt: skip
        assert outcome.errors == []
        return {int(r.as_numpy("sequence_index")[0][0]): r.as_numpy("text_output")[0].decode("utf-8")
                for r in outcome.results if r.as_numpy("text_output") is not None}  # fmt: skip

    first = texts()
    assert sorted(first) == [0, 1, 2] and len(set(first.values())) > 1
    assert texts() == first


@pytest.mark.parametrize("model", MODELS)
def test_impossible_sequences_and_bad_words_are_refused_by_name(url: str, model: str) -> None:
    cases = [
        ({"beam_width": np.array([[2]], np.int32), "num_return_sequences": np.array([[3]], np.int32)},
         "num_return_sequences (3) must not exceed beam_width (2)"),
        ({"beam_width": np.array([[2]], np.int32), "bad_words": np.array([["sleep"]], dtype=object)}, "bad_words"),
    ]  # fmt: skip
    for extra, words in cases:
        outcome = run(url, model, upstream_inputs(PROMPTS[0], stream=False, **extra), ["text_output"], stream=False)
        assert len(outcome.errors) == 1 and words in outcome.errors[0], outcome.errors


def test_the_sdk_exposes_several_sequences_and_beams(url: str, transformers_beams) -> None:
    from mentallama import MentaLLaMAClient

    prompt = PROMPTS[1]
    with MentaLLaMAClient(url, timeout=60) as client:
        beams = client.generate(prompt, max_tokens=MAX_TOKENS, beam_width=2)
        assert list(beams.texts) == [text for text, _ in transformers_beams[prompt]]
        assert beams.text == beams.texts[0]
        sampled = client.generate(prompt, max_tokens=MAX_TOKENS, n=3, top_k=50, seed=5)
        assert len(sampled.texts) == 3 and len(set(sampled.texts)) > 1 and sampled.text == sampled.texts[0]
        streamed = client.generate(prompt, max_tokens=MAX_TOKENS, n=3, top_k=50, seed=5, stream=True)
        assert streamed.texts == sampled.texts  # the same seed, the same samples, streamed or not
        single = client.generate(prompt, max_tokens=MAX_TOKENS)
        assert single.texts == () and single.text  # one sequence: `text` alone
