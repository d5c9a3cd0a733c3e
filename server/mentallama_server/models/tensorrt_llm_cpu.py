"""The CPU profile's `tensorrt_llm` model logic (the CPU engine step), without Triton.

Parsing and assembly: inputs and outputs follow the TensorRT-LLM backend's tensor interface, so the shared
ensemble and the `mentallama` front model talk to the CPU and GPU profiles the same way. A request of N prompts
becomes N engine generations (`parse_batch`); engine events become output tensors through a `ResponseAssembler`
each. Beam search and several sequences come back in TensorRT-LLM's layout (`ResponseAssembler.sequences`): the
best `num_return_sequences` of `beam_width` beams in one response (`output_ids` [1, beams, len], `cum_log_probs`
[1, beams], `sequence_index` 0), or each sample in a response of its own with its `sequence_index`. A streamed
request with several sequences gets them in its final responses: OpenVINO GenAI hands them over when done (TensorRT-
LLM streams beams as whole sequences so far, which the last response is).

Life cycle (`CpuStep`): the model hands each request's tensors here with a `Channel` over its response sender;
engine events become `Reply`s; the request's stream ends (the final flag) with its last prompt's last reply. An
error ends the whole request and stops its other prompts. `watch_once` stops generations whose client went away;
a `stop` request ends the running requests with its request id (TensorRT-LLM semantics).

Locks: a request's own lock, then `active_lock` or the channel's (the model's `pb_utils` lock) inside it;
never the other way round.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import numpy as np

from mentallama_interface import ENGINE_ERROR_OUTPUT, ERRORS_IN_BAND
from mentallama_server.engine.types import GenerationRequest, SequenceOutput, TokenEvent
from mentallama_server.models.batching import split_batch
from mentallama_server.models.detokenize import byte_token_map, utf8_safe_boundary
from mentallama_server.models.request_errors import Limits, RequestError, scalar
from mentallama_server.models.sampling import (
    Inputs,
    Sampling,
    Sequences,
    check_sampling_values,
    check_sequences,
    input_value,
    refuse_perf_metrics,
)
from mentallama_server.models.word_lists import from_word_list

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


NO_PERF_METRICS = (
    "the CPU engine (OpenVINO GenAI) reports no per-request KV-cache blocks or scheduling times (the `ensemble` on "
    "the GPU profile serves them; Triton's metrics endpoint has the CPU engine's counters)"
)
DEFAULT_MAX_SEQUENCES = 4
"""Beams or sequences a prompt may ask for when the model config names no `max_sequences` (CpuSettings)."""


def parse_sampling(inputs: Inputs, max_sequences: int = DEFAULT_MAX_SEQUENCES) -> tuple[Sampling, Sequences]:
    """The CPU engine's sampling and sequences (beam search and several sequences as TensorRT-LLM serves them);
    no perf metrics; values as `check_sampling_values` allows."""
    refuse_perf_metrics(inputs, NO_PERF_METRICS)
    return check_sampling_values(inputs), check_sequences(inputs, max_sequences)


def parse_batch(
    inputs: Inputs, request_id: str, limits: Limits, max_sequences: int = DEFAULT_MAX_SEQUENCES
) -> list[StepRequest]:
    """Validate a request of one or more prompts (`[N, ...]` tensors): one StepRequest per prompt, with
    its `batch_index` and engine request id `<request_id>/<index>`. Any bad prompt refuses the request."""
    return [
        replace(parse_request(item, f"{request_id}/{i}", limits, max_sequences), batch_index=i)
        for i, item in enumerate(split_batch(inputs))
    ]


def parse_request(
    inputs: Inputs, request_id: str, limits: Limits, max_sequences: int = DEFAULT_MAX_SEQUENCES
) -> StepRequest:
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
    sampling, sequences = parse_sampling(inputs, max_sequences)
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
        beam_width=sequences.beam_width,
        num_return_sequences=sequences.num_return_sequences,
        length_penalty=sequences.length_penalty,
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

    def sequences(self, sequences: tuple[SequenceOutput, ...]) -> list[dict[str, np.ndarray]]:
        """The responses of a request's several sequences, in TensorRT-LLM's layout: beams together in one, samples
        one each with their `sequence_index`. Streamed beams are the generated tokens (TensorRT-LLM streams whole
        beams without the prompt); otherwise the prompt comes first unless `exclude_input_in_output`."""
        generation = self.request.generation
        prompt = [] if self.request.exclude_input_in_output or self.request.streaming else generation.input_ids
        if generation.beam_width > 1:
            return [self._beams([prompt + list(q.token_ids) for q in sequences], sequences)]
        return [
            {**self._beams([prompt + list(q.token_ids)], (q,)), "sequence_index": np.array([[i]], dtype=np.int32)}
            for i, q in enumerate(sequences)
        ]

    def _beams(self, beams: list[list[int]], sequences: tuple[SequenceOutput, ...]) -> dict[str, np.ndarray]:
        width = max(len(beam) for beam in beams)
        ids = np.full((1, len(beams), width), -1, dtype=np.int32)  # padding as TensorRT-LLM's Python backend
        for b, beam in enumerate(beams):
            ids[0, b, : len(beam)] = beam
        out = {
            "output_ids": ids,
            "sequence_length": np.array([[len(beam) for beam in beams]], dtype=np.int32),
            "batch_index": np.array([[self.request.batch_index]], dtype=np.int32),
        }
        if len(beams) > 1:  # TensorRT-LLM sends it with several sequences; beams share index 0
            out["sequence_index"] = np.zeros((1, 1), dtype=np.int32)
        if self.request.return_log_probs:
            longest = max(len(q.log_probs or ()) for q in sequences)
            log_probs = np.zeros((1, len(sequences), longest), dtype=np.float32)
            for b, q in enumerate(sequences):
                log_probs[0, b, : len(q.log_probs or ())] = q.log_probs or ()
            out["cum_log_probs"] = np.array([[q.cum_log_prob for q in sequences]], dtype=np.float32)
            out["output_log_probs"] = log_probs
        if self.request.return_num_input_tokens:
            out["num_input_tokens"] = np.array([[len(self.request.generation.input_ids)]], dtype=np.int32)
        if self.request.return_num_output_tokens:
            out["num_output_tokens"] = np.array([[sum(len(q.token_ids) for q in sequences)]], dtype=np.int32)
        return out

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


ErrorCode = Literal["INTERNAL", "INVALID_ARG", "UNAVAILABLE"]


@dataclass(frozen=True)
class Reply:
    """One response to send: output tensors, an error (a `TritonError` code's name), or neither (a bare final
    flag). `final` ends the request's stream."""

    outputs: Mapping[str, np.ndarray] | None = None
    error: str | None = None
    code: ErrorCode = "INTERNAL"
    final: bool = False

    def tensors(self) -> Mapping[str, np.ndarray]:
        return self.outputs or {}


class Channel(Protocol):
    """A request's response sender."""

    def send(self, reply: Reply) -> None: ...

    def is_cancelled(self) -> bool: ...


class Engine(Protocol):
    def submit(self, request: GenerationRequest, on_event: Callable[[TokenEvent], None]) -> None: ...

    def cancel(self, request_id: str) -> bool: ...


def asks_errors_in_band(parameters: str | None) -> bool:
    """The front model's request parameter (a JSON object): end a failure after output with an `error_message`
    response."""
    try:
        return json.loads(parameters or "{}").get(ERRORS_IN_BAND) is True
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        return False


class _Request:
    """One Triton request of N prompts (N generations) and its channel; `done` guards the channel, which must
    not be used after the final flag, sent with the last prompt's last reply."""

    def __init__(self, channel: Channel, prompts: int, errors_in_band: bool) -> None:
        self.channel = channel
        self.remaining = prompts
        self.done = False
        self.errors_in_band = errors_in_band
        self.sent_output = False
        self.lock = threading.Lock()


@dataclass(eq=False)
class _Active:
    """Per-generation state (one prompt of a request)."""

    request: _Request
    assembler: ResponseAssembler
    client_id: str


class CpuStep:
    """Submits requests to `engine` and sends their replies; holds at most `max_pending` generations at once
    (running + waiting), refusing more at once with UNAVAILABLE so clients back off or go to another replica
    instead of queueing without bound."""

    def __init__(
        self,
        engine: Engine,
        boundary: Utf8Boundary,
        limits: Limits,
        max_pending: int,
        max_sequences: int = DEFAULT_MAX_SEQUENCES,
    ) -> None:
        self.engine = engine
        self.boundary = boundary
        self.limits = limits
        self.max_pending = max_pending
        self.max_sequences = max_sequences
        self.active: dict[str, _Active] = {}
        self.active_lock = threading.Lock()

    def submit(self, inputs: Inputs, client_id: str, channel: Channel, errors_in_band: bool = False) -> None:
        """Start one request (or stop the ones named `client_id`, for a `stop` request); every refusal is a final
        error reply on `channel`."""
        try:
            if parse_stop(inputs):
                self.stop(client_id)
                channel.send(Reply(final=True))
                return
            steps = parse_batch(inputs, f"{client_id}#{uuid.uuid4().hex}", self.limits, self.max_sequences)
            with self.active_lock:
                pending = len(self.active)
            if pending + len(steps) > self.max_pending:
                message = f"server overloaded: {pending} requests in flight (limit {self.max_pending}); retry later"
                channel.send(Reply(error=message, code="UNAVAILABLE", final=True))
                return
            group = _Request(channel, len(steps), errors_in_band)
            states = [_Active(group, ResponseAssembler(step, self.boundary), client_id) for step in steps]
            with self.active_lock:
                for step, state in zip(steps, states, strict=True):
                    self.active[step.generation.request_id] = state
            for step, state in zip(steps, states, strict=True):
                self.engine.submit(step.generation, lambda event, s=state: self._on_event(s, event))
        except (RequestError, ValueError) as exc:  # the engine's refusals are ValueErrors naming the field
            with self.active_lock:
                mine = [k for k, v in self.active.items() if v.request.channel is channel]
                self.active = {k: v for k, v in self.active.items() if v.request.channel is not channel}
            for rid in mine:  # prompts of this request already submitted
                self.engine.cancel(rid)
            channel.send(Reply(error=str(exc), code="INVALID_ARG", final=True))

    def stop(self, client_id: str) -> None:
        """TensorRT-LLM semantics: a request with `stop` set ends the running request with the same id."""
        if not client_id:
            raise RequestError("a stop request needs the request id of the request to stop")
        with self.active_lock:
            targets = [rid for rid, s in self.active.items() if s.client_id == client_id]
        for rid in targets:
            self.engine.cancel(rid)

    def _on_event(self, state: _Active, event: TokenEvent) -> None:
        request = state.request
        siblings = []
        with request.lock:
            if request.done:
                return
            if event.error:
                # An error ends the whole request (the final flag): its other prompts are stopped.
                request.done = True
                with self.active_lock:
                    siblings = [rid for rid, s in self.active.items() if s.request is request]
                if request.errors_in_band and request.sent_output:
                    # Triton 2.51 loses an error response that follows a normal one on a BLS stream: the
                    # front model asked for the cause as an output of a final response instead.
                    message = np.array([[event.error.encode("utf-8")]], dtype=object)
                    request.channel.send(Reply(outputs={ENGINE_ERROR_OUTPUT: message}, final=True))
                else:
                    request.channel.send(Reply(error=event.error, final=True))
            else:
                last = event.finished and request.remaining == 1
                if event.sequences is not None:
                    replies = state.assembler.sequences(event.sequences)
                else:
                    tensors = state.assembler.add(list(event.new_token_ids), event.log_probs, event.finished)
                    replies = [] if tensors is None else [tensors]
                for i, tensors in enumerate(replies):
                    request.channel.send(Reply(outputs=tensors, final=last and i == len(replies) - 1))
                    request.sent_output = True
                if last and not replies:
                    request.channel.send(Reply(final=True))
                if event.finished:
                    request.remaining -= 1
                request.done = last
        for rid in siblings:
            if rid != event.request_id:
                self.engine.cancel(rid)
        if event.finished or event.error:
            with self.active_lock:
                for rid in siblings or [event.request_id]:
                    self.active.pop(rid, None)

    def watch_once(self) -> int:
        """Stop the generations whose client cancelled; returns how many generations are tracked."""
        with self.active_lock:
            items = list(self.active.items())
        for rid, state in items:
            with state.request.lock:
                cancelled = not state.request.done and state.request.channel.is_cancelled()
            if cancelled:
                self.engine.cancel(rid)
        return len(items)
