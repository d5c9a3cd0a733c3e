"""Sampling inputs (`tensorrt_llm` names) checked the same way by every model that reads them.

Beam search and several sequences per prompt (`check_sequences`) follow TensorRT-LLM's rules on every profile;
what else a model cannot serve (per-request perf metrics) stays with it (`tensorrt_llm_cpu.parse_sampling` for
the CPU engine, `front_model.py` for the `mentallama` model); the value ranges here hold for every engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mentallama_server.models.request_errors import RequestError, scalar

Inputs = Mapping[str, "np.ndarray | None"]


def input_value(inputs: Inputs, name: str, cast: type, default):
    """The single value of input `name` as `cast`, or `default` when the request does not send it."""
    value = scalar(inputs.get(name), name)
    return default if value is None else cast(value)


@dataclass(frozen=True)
class Sequences:
    """How many sequences a prompt gets, as TensorRT-LLM serves them: `beam_width` beams of which the best
    `num_return_sequences` come back in one response (default: all of them), or `num_return_sequences` independent
    samples, each in responses of its own with its `sequence_index`."""

    beam_width: int
    num_return_sequences: int
    length_penalty: float

    @property
    def several(self) -> bool:
        return self.beam_width > 1 or self.num_return_sequences > 1


def check_sequences(inputs: Inputs, max_sequences: int | None = None) -> Sequences:
    """Beam width, sequences per prompt and length penalty of a request, checked as TensorRT-LLM checks them
    (num_return_sequences <= beam_width in beam search) and against the server's `max_sequences`, if any."""
    beam_width = input_value(inputs, "beam_width", int, 1)
    if beam_width < 1:
        raise RequestError(f"beam_width must be >= 1, got {beam_width}")
    requested = input_value(inputs, "num_return_sequences", int, None)
    if requested is not None and requested < 1:
        raise RequestError(f"num_return_sequences must be >= 1, got {requested}")
    returned = requested or beam_width
    if beam_width > 1 and returned > beam_width:
        raise RequestError(
            f"num_return_sequences ({returned}) must not exceed beam_width ({beam_width}) in beam search: the "
            "best beams are returned, as in TensorRT-LLM"
        )
    for name, value in (("beam_width", beam_width), ("num_return_sequences", returned)):
        if max_sequences is not None and value > max_sequences:
            raise RequestError(f"{name} is {value}; this server serves at most {max_sequences} (max_sequences)")
    # len_penalty (length_penalty) only ranks beams: with beam_width 1 TensorRT-LLM ignores it too.
    length_penalty = input_value(inputs, "len_penalty", float, 1.0)
    if not math.isfinite(length_penalty):
        raise RequestError(f"length_penalty must be a finite number, got {length_penalty}")
    return Sequences(beam_width, returned, length_penalty)


def refuse_perf_metrics(inputs: Inputs, why: str) -> None:
    """Per-request perf metrics (KV-cache blocks, scheduling times) come from TensorRT-LLM's executor alone."""
    if input_value(inputs, "return_perf_metrics", bool, False):
        raise RequestError(f"return_perf_metrics is not supported: {why}")


@dataclass(frozen=True)
class Sampling:
    top_k: int
    top_p: float
    temperature: float
    min_tokens: int


def check_sampling_values(inputs: Inputs) -> Sampling:
    """The sampling values of a request; out-of-range values are refused naming the field."""
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
