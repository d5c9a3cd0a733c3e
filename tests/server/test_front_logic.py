"""The `mentallama` front model's request rules, without Triton: what it relays on every profile."""

from __future__ import annotations

import numpy as np
import pytest

from mentallama_server.models.front_model import check_front_sampling
from mentallama_server.models.request_errors import RequestError
from mentallama_server.models.tensorrt_llm_cpu import parse_sampling


def test_front_refuses_perf_metrics_naming_the_front_model_not_a_profile() -> None:
    with pytest.raises(RequestError) as info:
        check_front_sampling({"return_perf_metrics": np.array([[True]])})
    message = str(info.value)
    assert message.startswith("return_perf_metrics") and "`mentallama` model" in message
    assert "CPU" not in message  # a GPU client is not told about the CPU profile


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [({}, (1, 1)), ({"beam_width": 2}, (2, 2)), ({"beam_width": 3, "num_return_sequences": 2}, (3, 2)),
     ({"num_return_sequences": 3}, (1, 3))],
)  # fmt: skip
def test_beams_and_sequences_follow_tensorrt_llm(inputs: dict, expected: tuple[int, int]) -> None:
    """Beam search returns every beam unless num_return_sequences says fewer; samples as many as asked."""
    arrays = {name: np.array([[value]]) for name, value in inputs.items()}
    for check in (check_front_sampling, parse_sampling):
        _, sequences = check(arrays)
        assert (sequences.beam_width, sequences.num_return_sequences) == expected


@pytest.mark.parametrize(
    ("inputs", "message"),
    [({"beam_width": 2, "num_return_sequences": 3}, "num_return_sequences (3) must not exceed beam_width (2)"),
     ({"beam_width": 0}, "beam_width must be >= 1"), ({"num_return_sequences": 0}, "num_return_sequences must be >= 1"),
     ({"len_penalty": float("nan")}, "length_penalty must be a finite number")],
)  # fmt: skip
def test_impossible_sequences_are_refused_by_both(inputs: dict, message: str) -> None:
    arrays = {name: np.array([[value]]) for name, value in inputs.items()}
    for check in (check_front_sampling, parse_sampling):
        with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check(arrays)


def test_cpu_engine_keeps_its_own_limits_and_reasons() -> None:
    with pytest.raises(RequestError, match=r"beam_width is 5; this server serves at most 4 \(max_sequences\)"):
        parse_sampling({"beam_width": np.array([[5]])})
    with pytest.raises(RequestError, match="return_perf_metrics is not supported: the CPU engine"):
        parse_sampling({"return_perf_metrics": np.array([[True]])})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [("runtime_top_k", -1, "top_k must be >= 0"), ("runtime_top_p", 1.5, "top_p must be in (0, 1]"),
     ("temperature", -0.1, "temperature must be >= 0"), ("min_tokens", -2, "min_tokens must be >= 0")],
)  # fmt: skip
def test_value_ranges_are_the_same_for_the_front_and_the_cpu_engine(name: str, value, message: str) -> None:
    for check in (check_front_sampling, parse_sampling):
        with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
            check({name: np.array([[value]])})


def test_defaults_mean_greedy() -> None:
    sampling, sequences = check_front_sampling({})
    assert not sequences.several
    assert (sampling.top_k, sampling.top_p, sampling.temperature, sampling.min_tokens) == (0, 0.0, 1.0, 0)
