"""Value types of the CPU engine: what goes in (`GenerationRequest`), what comes out (`TokenEvent`),
what it reports (`EngineStats`), and the request validation that names the offending field.

Kept apart from `cpu_engine` so the Triton adapter and tests can build and check requests without
importing torch or transformers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "EngineStats",
    "FinishReason",
    "GenerationRequest",
    "SequenceOutput",
    "TokenEvent",
    "is_greedy",
    "validate_request",
]

FinishReason = Literal["length", "stop", "cancelled", "error"]

_UINT64_MAX = 2**64 - 1


@dataclass
class GenerationRequest:
    """One generation, in TensorRT-LLM's terms (the `tensorrt_llm` model's inputs, already tokenised).

    Sampling follows TensorRT-LLM: the request is greedy when `temperature == 0`, `top_k == 1`, or
    `top_k == 0 and top_p == 0` (the defaults: a request that sets nothing is greedy, as in TensorRT-LLM).
    Otherwise it samples; `top_k == 0` means no top-k limit, `top_p == 0` (with `top_k > 1`) no top-p limit.
    """

    request_id: str
    input_ids: list[int]
    max_new_tokens: int
    end_id: int | None = None
    """Token that ends generation and is not part of the output. None: the model's eos; negative: none."""
    pad_id: int | None = None
    """Accepted for interface parity; outputs are never padded, so it has no effect."""
    min_new_tokens: int = 0
    """end_id is banned and stop words do not end generation before this many tokens."""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    """Seed of this request's own random generator; None draws a fresh one."""
    stop_words: Sequence[Sequence[int]] = ()
    """Token sequences; generation ends once the output ends with one, which stays in the output."""
    bad_words: Sequence[Sequence[int]] = ()
    """Token sequences that are never completed: their last token is banned after the rest."""
    return_log_probs: bool = False
    streaming: bool = True
    beam_width: int = 1
    """Beams of a beam search (1: sampling or greedy, as the fields above say)."""
    num_return_sequences: int = 1
    """Sequences returned: the best beams in beam search (at most beam_width), else independent samples."""
    length_penalty: float = 1.0
    """Beam search ranks beams by cum_log_prob / length ** length_penalty (TensorRT-LLM's and transformers')."""

    @property
    def several(self) -> bool:
        """Beam search or several sequences: the engine returns them together when they are done."""
        return self.beam_width > 1 or self.num_return_sequences > 1


@dataclass(frozen=True)
class SequenceOutput:
    """One returned sequence of a beam search or of several samples: its tokens (end id left out, cut after a stop
    word), their log-probabilities when asked for, their sum, and why it ended."""

    token_ids: list[int]
    log_probs: list[float] | None
    cum_log_prob: float
    finish_reason: FinishReason


@dataclass(frozen=True)
class TokenEvent:
    """What the engine hands to a request's callback. The last event of a request has `finished=True`."""

    request_id: str
    new_token_ids: list[int]
    """Tokens produced since the previous event (several when the consumer lagged behind)."""
    log_probs: list[float] | None
    """Log-probability of each new token, when the request asked for them."""
    finished: bool = False
    finish_reason: FinishReason | None = None
    error: str | None = None
    sequences: tuple[SequenceOutput, ...] | None = None
    """The final event of a request with several sequences (`GenerationRequest.several`) carries them all, best
    beam first (OpenVINO GenAI's pipeline hands them over when done, so such a request streams no tokens)."""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load. Counts are read without stopping generation, so they may be one
    decode step apart from each other."""

    active_requests: int
    """Requests in the running batch (scheduled by continuous batching, holding cache blocks)."""
    waiting_requests: int
    """Submitted requests not scheduled yet."""
    unfinished_requests: int
    """Submitted requests whose final event has not been delivered yet."""
    cache_blocks_used: int
    """Cache blocks referenced by requests."""
    cache_blocks_cached: int
    """Free blocks kept for prefix reuse; they are evicted whenever space is needed."""
    cache_blocks_total: int
    tokens_generated: int
    """Output tokens delivered since start."""
    requests_finished: dict[str, int] = field(default_factory=dict)
    """Finished requests by finish reason."""
    tokens_produced: int = 0
    """Output tokens produced since start, counted at each step (running requests too): moves while the engine
    works, which tells a busy server from a wedged one (`launch/stall_watch.py`)."""


def is_greedy(request: GenerationRequest) -> bool:
    """TensorRT-LLM's rule: greedy when temperature is 0, top_k is 1, or both top_k and top_p are 0."""
    return request.temperature == 0.0 or request.top_k == 1 or (request.top_k == 0 and request.top_p == 0.0)


def _check_token(name: str, token: int, vocab_size: int) -> None:
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
        raise ValueError(f"{name} must be a token id in [0, {vocab_size}), got {token!r}")


def _check_word_list(name: str, words: Sequence[Sequence[int]], vocab_size: int) -> None:
    for i, word in enumerate(words):
        if len(word) == 0:
            raise ValueError(f"{name}[{i}] is empty")
        for token in word:
            _check_token(f"{name}[{i}]", token, vocab_size)


def validate_request(request: GenerationRequest, *, vocab_size: int, max_sequence_tokens: int) -> None:
    """Raise ValueError naming the first invalid field of `request`.

    `max_sequence_tokens` is the longest prompt + output the engine can hold (position embeddings and
    KV cache capacity, whichever is smaller).
    """
    if not isinstance(request.request_id, str) or not request.request_id:
        raise ValueError("request_id must be a non-empty string")
    if len(request.input_ids) == 0:
        raise ValueError("input_ids is empty")
    for token in request.input_ids:
        _check_token("input_ids", token, vocab_size)
    if isinstance(request.max_new_tokens, bool) or not isinstance(request.max_new_tokens, int):
        raise ValueError(f"max_new_tokens must be an int, got {request.max_new_tokens!r}")
    if request.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {request.max_new_tokens}")
    total = len(request.input_ids) + request.max_new_tokens
    if total > max_sequence_tokens:
        raise ValueError(
            f"input_ids ({len(request.input_ids)} tokens) + max_new_tokens ({request.max_new_tokens}) = "
            f"{total} exceeds the engine's maximum sequence length of {max_sequence_tokens} tokens"
        )
    if request.end_id is not None and request.end_id >= 0:
        _check_token("end_id", request.end_id, vocab_size)
    if request.pad_id is not None and request.pad_id >= 0:
        _check_token("pad_id", request.pad_id, vocab_size)
    if request.min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be >= 0, got {request.min_new_tokens}")
    if not (math.isfinite(request.temperature) and request.temperature >= 0.0):
        raise ValueError(f"temperature must be a finite number >= 0, got {request.temperature}")
    if request.top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {request.top_k}")
    if not 0.0 <= request.top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {request.top_p}")
    if not (math.isfinite(request.repetition_penalty) and request.repetition_penalty > 0.0):
        raise ValueError(f"repetition_penalty must be a finite number > 0, got {request.repetition_penalty}")
    for name in ("presence_penalty", "frequency_penalty"):
        if not math.isfinite(getattr(request, name)):
            raise ValueError(f"{name} must be a finite number, got {getattr(request, name)}")
    if request.seed is not None and not 0 <= request.seed <= _UINT64_MAX:
        raise ValueError(f"seed must be in [0, 2**64), got {request.seed}")
    _check_word_list("stop_words", request.stop_words, vocab_size)
    _check_word_list("bad_words", request.bad_words, vocab_size)
    if request.beam_width < 1 or request.num_return_sequences < 1:
        raise ValueError("beam_width and num_return_sequences must be >= 1")
    if request.beam_width > 1 and request.num_return_sequences > request.beam_width:
        raise ValueError(
            f"num_return_sequences ({request.num_return_sequences}) must not exceed beam_width ({request.beam_width})"
        )
    if not math.isfinite(request.length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {request.length_penalty}")
