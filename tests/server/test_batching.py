"""Requests of N prompts and upstream's unserved inputs, without Triton (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest

from mentallama_interface import ENSEMBLE_INPUTS, UNSERVED_INPUTS
from mentallama_server.models.batching import batch_size, refuse_unserved, split_batch, stack_padded
from mentallama_server.models.request_errors import Limits, RequestError
from mentallama_server.models.tensorrt_llm_cpu import ResponseAssembler, parse_batch, parse_sampling
from mentallama_server.models.word_lists import to_word_list

LIMITS = Limits(max_input_len=64, max_output_len=16)


def engine_request(rows: list[list[int]], **extra: np.ndarray) -> dict[str, np.ndarray]:
    n = len(rows)
    return {
        "input_ids": stack_padded([np.array(r, dtype=np.int32) for r in rows], 0),
        "input_lengths": np.array([[len(r)] for r in rows], dtype=np.int32),
        "request_output_len": np.full((n, 1), 4, dtype=np.int32),
        "stop_words_list": stack_padded([to_word_list([[5, 6]]), to_word_list([])][:n], -1),
        **extra,
    }


def test_parse_batch_gives_one_generation_per_prompt_with_its_index() -> None:
    steps = parse_batch(engine_request([[1, 10, 11], [1, 12]]), "req", LIMITS)
    assert [s.batch_index for s in steps] == [0, 1]
    assert [s.generation.input_ids for s in steps] == [[1, 10, 11], [1, 12]]  # padding cut by input_lengths
    assert [s.generation.request_id for s in steps] == ["req/0", "req/1"]
    assert [s.generation.stop_words for s in steps] == [[[5, 6]], []]
    single = parse_batch(engine_request([[1, 10]]), "one", LIMITS)
    assert len(single) == 1 and single[0].batch_index == 0


def test_response_of_a_prompt_carries_its_batch_index() -> None:
    step = parse_batch(engine_request([[1, 10], [1, 12]], streaming=np.array([[True], [True]])), "r", LIMITS)[1]

    class NoBytes:
        def safe_length(self, ids: list[int]) -> int:
            return len(ids)

    tensors = ResponseAssembler(step, NoBytes()).add([7, 8], None, final=True)
    assert tensors["batch_index"].tolist() == [[1]]
    assert tensors["output_ids"].shape == (1, 1, 2)


def test_a_bad_prompt_refuses_the_whole_batch() -> None:
    request = engine_request([[1, 10], [1, 12]])
    request["request_output_len"] = np.array([[4], [99]], dtype=np.int32)
    with pytest.raises(RequestError, match=r"max_tokens must be in \[1, 16\], got 99"):
        parse_batch(request, "r", LIMITS)


def test_rows_must_agree() -> None:
    with pytest.raises(RequestError, match="input_lengths has 1 row"):
        batch_size({"input_ids": np.zeros((2, 3)), "input_lengths": np.zeros((1, 1)), "end_id": None})
    assert batch_size({"x": None}) == 1
    rows = split_batch({"a": np.array([[1], [2], [3]]), "b": None})
    assert [r["a"].tolist() for r in rows] == [[[1]], [[2]], [[3]]] and rows[0]["b"] is None


def test_stack_padded_pads_the_last_dimension() -> None:
    out = stack_padded([to_word_list([[5, 6, 7]]), to_word_list([[8]])], -1)
    assert out.shape == (2, 2, 3)
    assert out[1].tolist() == [[8, -1, -1], [1, -1, -1]]


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("num_return_sequences", 5, "num_return_sequences is 5; this server serves at most 4"),
        ("return_perf_metrics", True, "return_perf_metrics is not supported"),
        ("beam_width", 0, "beam_width must be >= 1"),
    ],
)
def test_engine_refuses_what_it_cannot_serve(name: str, value: object, words: str) -> None:
    with pytest.raises(RequestError, match=words):
        parse_sampling({name: np.array([[value]])})


def test_engine_serves_the_neutral_values() -> None:
    parse_sampling(
        {
            "num_return_sequences": np.array([[1]], dtype=np.int32),
            "return_perf_metrics": np.array([[False]]),
            "len_penalty": np.array([[0.7]], dtype=np.float32),  # no effect without beam search, as upstream
        }
    )


def test_unserved_inputs_are_refused_by_name_with_a_reason() -> None:
    declared = {spec.name for spec in ENSEMBLE_INPUTS}
    assert set(UNSERVED_INPUTS) <= declared
    for name in UNSERVED_INPUTS:
        value = np.array([[True]]) if UNSERVED_INPUTS[name][0].data_type == "TYPE_BOOL" else np.array([[1]])
        with pytest.raises(RequestError) as info:
            refuse_unserved({name: value})
        assert str(info.value).startswith(f"{name} is not supported: ")
    refuse_unserved({"return_context_logits": np.array([[False]]), "text_input": np.array([[b"x"]])})
