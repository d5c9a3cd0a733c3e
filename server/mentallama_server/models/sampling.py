"""Sampling inputs (`tensorrt_llm` names) checked the same way by every model that reads them.

What each model can serve differs (beam search, several sequences, perf metrics): those rules stay with the
model (`tensorrt_llm_cpu.parse_sampling` for the CPU engine, `front_model.py` for the `mentallama` model); the value
ranges here hold for every engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mentallama_server.models.request_errors import RequestError, scalar

Inputs = Mapping[str, "np.ndarray | None"]


def input_value(inputs: Inputs, name: str, cast: type, default):
    """The single value of input `name` as `cast`, or `default` when the request does not send it."""
    value = scalar(inputs.get(name), name)
    return default if value is None else cast(value)


def require_one_sequence(inputs: Inputs, why: Mapping[str, str]) -> None:
    """Refuse beam search, several sequences per prompt and per-request perf metrics, each with the reason
    the calling model gives (`why`: field -> reason)."""
    beam_width = input_value(inputs, "beam_width", int, 1)
    if beam_width != 1:
        raise RequestError(f"beam_width must be 1, got {beam_width}: {why['beam_width']}")
    sequences = input_value(inputs, "num_return_sequences", int, 1)
    if sequences != 1:
        raise RequestError(f"num_return_sequences must be 1, got {sequences}: {why['num_return_sequences']}")
    if input_value(inputs, "return_perf_metrics", bool, False):
        raise RequestError(f"return_perf_metrics is not supported: {why['return_perf_metrics']}")


@dataclass(frozen=True)
class Sampling:
    top_k: int
    top_p: float
    temperature: float
    min_tokens: int


def check_sampling_values(inputs: Inputs) -> Sampling:
    """The sampling values of a request; out-of-range values are refused naming the field."""
    # len_penalty (length_penalty) only scores beams in beam search: with beam_width 1 TensorRT-LLM ignores
    # it too, so it is accepted and has no effect.
    input_value(inputs, "len_penalty", float, 1.0)
    top_k = input_value(inputs, "runtime_top_k", int, 0)
    if top_k < 0:
        raise RequestError(f"top_k must be >= 0, got {top_k}")
    # Absent top_k and top_p mean greedy decoding, as in TensorRT-LLM; an explicit top_p must be usable.
    top_p = input_value(inputs, "runtime_top_p", float, 0.0)
    if inputs.get("runtime_top_p") is not None and not 0.0 < top_p <= 1.0:
        raise RequestError(f"top_p must be in (0, 1], got {top_p}")
    temperature = input_value(inputs, "temperature", float, 1.0)
    if temperature < 0.0:
        raise RequestError(f"temperature must be >= 0, got {temperature}")
    min_tokens = input_value(inputs, "min_tokens", int, 0)
    if min_tokens < 0:
        raise RequestError(f"min_tokens must be >= 0, got {min_tokens}")
    return Sampling(top_k=top_k, top_p=top_p, temperature=temperature, min_tokens=min_tokens)
