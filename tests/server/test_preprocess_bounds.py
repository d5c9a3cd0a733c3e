"""Size bounds checked before any tokenising (issue 15, findings 3 and 6), on a counting fake tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from mentallama_server.models.front_model import parse_front_request
from mentallama_server.models.preprocessing import MAX_BYTES_PER_TOKEN, MAX_WORD_BYTES, MAX_WORDS, Preprocessor
from mentallama_server.models.request_errors import Limits, RequestError


class CountingTokenizer:
    eos_token_id = 2
    pad_token_id = None

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.calls += 1
        return [1] + [5] * len(text.split()) if add_special_tokens else [5] * len(text.split())


@pytest.fixture()
def pre() -> Preprocessor:
    return Preprocessor(CountingTokenizer(), Limits(max_input_len=100, max_output_len=50))


def test_oversized_prompt_is_refused_before_tokenising(pre):
    limit = 100 * MAX_BYTES_PER_TOKEN
    with pytest.raises(RequestError, match=f"text_input is {limit + 1} bytes, above the {limit} bytes"):
        pre.prepare(b"a" * (limit + 1), 10)
    assert pre.tokenizer.calls == 0
    pre.prepare(b"a" * limit, 10)  # at the bound: tokenised, and one token here
    assert pre.tokenizer.calls == 1


def test_word_lists_are_bounded(pre):
    with pytest.raises(RequestError, match=f"stop_words holds {MAX_WORDS + 1} words"):
        pre.prepare(b"hi", 10, stop_words=[b"x"] * (MAX_WORDS + 1))
    with pytest.raises(RequestError, match=f"bad_words: a word of {MAX_WORD_BYTES + 1} bytes"):
        pre.prepare(b"hi", 10, bad_words=[b"x" * (MAX_WORD_BYTES + 1)])
    assert pre.prepare(b"hi", 10, stop_words=[b"x"] * MAX_WORDS).stop_words == [[5]] * MAX_WORDS


def test_min_tokens_above_max_tokens_is_refused(pre):
    inputs = {"text_input": np.array([[b"hi"]], dtype=object), "max_tokens": np.array([[4]], dtype=np.int32)}
    with pytest.raises(RequestError, match=r"min_tokens \(5\) is above max_tokens \(4\)"):
        parse_front_request({**inputs, "min_tokens": np.array([[5]], dtype=np.int32)}, pre)
    assert parse_front_request({**inputs, "min_tokens": np.array([[4]], dtype=np.int32)}, pre).max_tokens == 4
