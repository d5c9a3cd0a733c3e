"""Request parsing and response assembly of the CPU `tensorrt_llm` model, without Triton.

Inputs and outputs follow the TensorRT-LLM backend's tensor interface, so the shared ensemble and
the `mentallama` front model talk to the CPU and GPU profiles the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from mentallama_server.engine.types import GenerationRequest
from mentallama_server.models.batching import split_batch
from mentallama_server.models.detokenize import byte_token_map, utf8_safe_boundary
from mentallama_server.models.preprocess import Limits, RequestError, from_word_list, scalar
from mentallama_server.models.sampling import (
    Inputs,
    Sampling,
    check_sampling_values,
    input_value,
    require_one_sequence,
)

# What `parse_stop` and `parse_batch` read. The CPU model reads the inputs its config.pbtxt declares and
# refuses to load when they differ from these (an input declared but not read would be ignored silently);
# a test checks that the parsers read exactly these.
INPUTS = (
    "input_ids",
    "input_lengths",
    "request_output_len",
    "end_id",
    "pad_id",
    "streaming",
    "runtime_top_k",
    "runtime_top_p",
    "temperature",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "min_tokens",
    "seed",
    "stop_words_list",
    "bad_words_list",
    "beam_width",
    "return_log_probs",
    "exclude_input_in_output",
    "stop",
    "return_num_input_tokens",
    "return_num_output_tokens",
    "num_return_sequences",
    "len_penalty",
    "return_perf_metrics",
)


@dataclass
class StepRequest:
    """One parsed `tensorrt_llm` request."""

    generation: GenerationRequest
    streaming: bool
    exclude_input_in_output: bool
    return_log_probs: bool
    return_num_input_tokens: bool
    return_num_output_tokens: bool
    batch_index: int = 0
    """Row of this prompt in a request of N prompts (`[N, 1]` tensors); sent back as `batch_index`."""


def parse_stop(inputs: Inputs) -> bool:
    return bool(input_value(inputs, "stop", bool, False))


_CPU_ENGINE_LIMITS = {
    "beam_width": "the CPU profile has no beam search",
    "num_return_sequences": "the CPU engine returns one sequence per prompt (the `ensemble` on the GPU profile "
    "serves more; or send the prompt several times with different seeds)",
    "return_perf_metrics": "the CPU engine (OpenVINO GenAI) reports no per-request KV-cache blocks or scheduling "
    "times (the `ensemble` on the GPU profile serves them; Triton's metrics endpoint has the CPU engine's counters)",
}


def parse_sampling(inputs: Inputs) -> Sampling:
    """The CPU engine's sampling: one sequence per prompt, no beam search, no perf metrics; values as
    `check_sampling_values` allows."""
    require_one_sequence(inputs, _CPU_ENGINE_LIMITS)
    return check_sampling_values(inputs)


def parse_batch(inputs: Inputs, request_id: str, limits: Limits) -> list[StepRequest]:
    """Validate a request of one or more prompts (`[N, ...]` tensors): one StepRequest per prompt, with
    its `batch_index` and engine request id `<request_id>/<index>`. Any bad prompt refuses the request."""
    return [
        replace(parse_request(item, f"{request_id}/{i}", limits), batch_index=i)
        for i, item in enumerate(split_batch(inputs))
    ]


def parse_request(inputs: Inputs, request_id: str, limits: Limits) -> StepRequest:
    """Validate the engine inputs of one prompt; a `RequestError` names the bad field."""
    ids = inputs.get("input_ids")
    if ids is None:
        raise RequestError("input_ids is required")
    ids = np.asarray(ids)
    if ids.ndim == 2 and ids.shape[0] != 1:
        raise RequestError(f"one sequence per request is supported, got a batch of {ids.shape[0]}")
    input_ids = [int(i) for i in ids.reshape(-1)]
    length = input_value(inputs, "input_lengths", int, len(input_ids))
    if not 0 < length <= len(input_ids):
        raise RequestError(f"input_lengths is {length}, but input_ids holds {len(input_ids)} tokens")
    input_ids = input_ids[:length]
    if length > limits.max_input_len:
        raise RequestError(f"input is {length} tokens, above the limit of {limits.max_input_len}")
    max_new = input_value(inputs, "request_output_len", int, None)
    if max_new is None:
        raise RequestError("request_output_len (max_tokens) is required")
    if not 0 < max_new <= limits.max_output_len:
        raise RequestError(f"max_tokens must be in [1, {limits.max_output_len}], got {max_new}")
    sampling = parse_sampling(inputs)
    if sampling.min_tokens > max_new:
        raise RequestError(f"min_tokens ({sampling.min_tokens}) must not exceed max_tokens ({max_new})")
    seed = scalar(inputs.get("seed"), "seed")
    generation = GenerationRequest(
        request_id=request_id,
        input_ids=input_ids,
        max_new_tokens=max_new,
        end_id=input_value(inputs, "end_id", int, None),
        pad_id=input_value(inputs, "pad_id", int, None),
        min_new_tokens=sampling.min_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        repetition_penalty=input_value(inputs, "repetition_penalty", float, 1.0),
        presence_penalty=input_value(inputs, "presence_penalty", float, 0.0),
        frequency_penalty=input_value(inputs, "frequency_penalty", float, 0.0),
        seed=None if seed is None else int(seed),
        stop_words=from_word_list(inputs.get("stop_words_list")),
        bad_words=from_word_list(inputs.get("bad_words_list")),
        return_log_probs=bool(input_value(inputs, "return_log_probs", bool, False)),
        streaming=bool(input_value(inputs, "streaming", bool, False)),
    )
    return StepRequest(
        generation=generation,
        streaming=generation.streaming,
        exclude_input_in_output=bool(input_value(inputs, "exclude_input_in_output", bool, False)),
        return_log_probs=generation.return_log_probs,
        return_num_input_tokens=bool(input_value(inputs, "return_num_input_tokens", bool, False)),
        return_num_output_tokens=bool(input_value(inputs, "return_num_output_tokens", bool, False)),
    )


class Utf8Boundary:
    """How many tokens a streamed chunk may carry: never part of a run of byte-fallback tokens.

    The LLaMA decoder turns a whole run of byte pieces (`<0xE2>`...) into text at once (an invalid run
    becomes one U+FFFD per byte), so chunks end where runs end; see `detokenize.utf8_safe_boundary`.
    """

    def __init__(self, tokenizer) -> None:
        self.byte_of = byte_token_map(tokenizer)

    def safe_length(self, ids: list[int]) -> int:
        return utf8_safe_boundary(ids, self.byte_of)


@dataclass
class ResponseAssembler:
    """Turns engine token events into `tensorrt_llm` output tensors for one request."""

    request: StepRequest
    boundary: Utf8Boundary
    pending: list[int] = field(default_factory=list)
    pending_log_probs: list[float] = field(default_factory=list)
    all_output: list[int] = field(default_factory=list)
    all_log_probs: list[float] = field(default_factory=list)
    cum_log_prob: float = 0.0

    def add(
        self, new_ids: list[int], log_probs: list[float] | None, final: bool
    ) -> dict[str, np.ndarray] | None:
        """Tensors to send now, or None when nothing is ready (streaming hold-back or non-streaming)."""
        self.all_output.extend(new_ids)
        if log_probs:
            self.all_log_probs.extend(log_probs)
            self.cum_log_prob += float(sum(log_probs))
        if self.request.streaming:
            self.pending.extend(new_ids)
            self.pending_log_probs.extend(log_probs or [])
            cut = len(self.pending) if final else self.boundary.safe_length(self.pending)
            if cut == 0 and not final:
                return None
            chunk, self.pending = self.pending[:cut], self.pending[cut:]
            chunk_lp, self.pending_log_probs = self.pending_log_probs[:cut], self.pending_log_probs[cut:]
            return self._tensors(chunk, chunk_lp, final)
        if not final:
            return None
        tokens = self.all_output
        if not self.request.exclude_input_in_output:
            tokens = self.request.generation.input_ids + tokens
        return self._tensors(tokens, self.all_log_probs, final)

    def _tensors(
        self, tokens: list[int], chunk_log_probs: list[float] | None, final: bool
    ) -> dict[str, np.ndarray]:
        out = {
            "output_ids": np.array([[tokens]], dtype=np.int32).reshape(1, 1, len(tokens)),
            "sequence_length": np.array([[len(tokens)]], dtype=np.int32),
            "batch_index": np.array([[self.request.batch_index]], dtype=np.int32),
        }
        if self.request.return_log_probs:
            lp = chunk_log_probs if chunk_log_probs is not None else []
            out["cum_log_probs"] = np.array([[self.cum_log_prob]], dtype=np.float32)
            out["output_log_probs"] = np.array([[lp]], dtype=np.float32).reshape(1, 1, len(lp))
        if final and self.request.return_num_input_tokens:
            out["num_input_tokens"] = np.array([[len(self.request.generation.input_ids)]], dtype=np.int32)
        if final and self.request.return_num_output_tokens:
            out["num_output_tokens"] = np.array([[len(self.all_output)]], dtype=np.int32)
        return out
