"""The `mentallama` front model's request rules, without Triton: what it relays on every profile."""

from __future__ import annotations

import numpy as np
import pytest

from mentallama_server.models.front_model import check_front_sampling
from mentallama_server.models.request_errors import RequestError
from mentallama_server.models.tensorrt_llm_cpu import parse_sampling


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [("beam_width", 2, "beam_width"), ("num_return_sequences", 3, "num_return_sequences"),
     ("return_perf_metrics", True, "return_perf_metrics")],
)  # fmt: skip
def test_front_refusals_name_the_front_model_not_a_profile(name: str, value, field: str) -> None:
    with pytest.raises(RequestError) as info:
        check_front_sampling({name: np.array([[value]])})
    message = str(info.value)
    assert message.startswith(field) and "`mentallama` model" in message
    assert "CPU" not in message  # a GPU client is not told about the CPU profile


def test_cpu_engine_keeps_its_own_reasons() -> None:
    with pytest.raises(RequestError, match="beam_width must be 1, got 2: the CPU profile has no beam search"):
        parse_sampling({"beam_width": np.array([[2]])})


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
    sampling = check_front_sampling({})
    assert (sampling.top_k, sampling.top_p, sampling.temperature, sampling.min_tokens) == (0, 0.0, 1.0, 0)
