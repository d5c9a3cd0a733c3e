"""The `mentallama` front model's logic, without Triton: ensemble inputs in, engine requests out; engine chunks in,
client replies out.

Requests: `parse_front_batch` validates and tokenises a request of N prompts (`[N, 1]`) into `FrontRequest`s;
`engine_inputs` is the `tensorrt_llm` request of one.

Calls: a request of N prompts runs N calls, one per prompt, each on a thread of its own, sharing a `BatchSender`
over the client's channel, as TensorRT-LLM serves them. `FrontCall.run` is a call's whole walk: it issues the
engine request, reads each engine response into an `EngineChunk`, turns it into the `Reply` it makes and sends it
on the call's channel, and ends with the final reply. The model (model_repository/mentallama/1/model.py) is the
calls' `Engine`: it builds and issues the BLS requests, reads their responses' tensors and stops engine requests.
`FrontCalls` holds the running calls: it admits them (at most `max_calls`), picks the ones a `stop` request ends,
and in the model's watcher (`watch_once`) ends stalled calls and stops those whose client went away.

Text: each call decodes its chunks incrementally behind an anchor (`detokenize.IncrementalDetokenizer`). The
C++ engine ends chunks anywhere, even inside the byte-fallback tokens of one character, so a character's bytes
(and their log probs) are held back until it is complete: streamed text never carries a partial character and
concatenates to exactly the non-streamed text.

Several sequences (beam search, `num_return_sequences`) are relayed in TensorRT-LLM's layout on every profile
(front_sequences.py): beams together and whole, samples each with their `sequence_index`.

Locks (the model's docstring says why): whatever may send or ask `is_cancelled` here (`FrontCall.send`,
`FrontCall.cancel_if_client_gone`, `FrontCalls.open`) is called with the model's `pb_utils` lock (`pb_lock`, re-entrant)
held; a call's lock is taken inside it, a batch sender's inside that. The lock of `FrontCalls` is held alone. Only
the waits on the engine (`Engine.issue` and the next response) are outside `pb_lock`.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mentallama_interface import ENGINE_INPUT_NAMES, FRONT_INPUTS
from mentallama_server.models.batching import refuse_unserved, split_batch
from mentallama_server.models.detokenize import AnchoredDecoder, IncrementalDetokenizer, byte_token_map
from mentallama_server.models.front_messages import EngineChunk, ErrorCode, Reply
from mentallama_server.models.front_sequences import several_texts
from mentallama_server.models.preprocessing import Preprocessor
from mentallama_server.models.request_errors import RequestError, scalar
from mentallama_server.models.sampling import (
    Inputs,
    Sampling,
    Sequences,
    check_sampling_values,
    check_sequences,
    refuse_perf_metrics,
)
from mentallama_server.models.word_lists import to_word_list
from mentallama_server.overload import OVERLOADED

# EngineChunk, ErrorCode and Reply live in front_messages.py (front_sequences.py builds replies too); the model's
# glue imports them from here, with the rest of the front model.
__all__ = ["EngineChunk", "ErrorCode", "Reply"]

INPUT_NAMES = tuple(spec.name for spec in FRONT_INPUTS)
# The front model always streams from the engine (to watch for cancellation between chunks) and
# adds the prompt text itself, so these two ensemble inputs are not passed through.
_NOT_PASSED = {"stream", "exclude_input_in_output"}


def engine_declares_output(model_repository: str | Path, name: str, engine: str = "tensorrt_llm") -> bool:
    """Whether the engine model's config.pbtxt, beside the front model's folder `model_repository` (the
    path Triton passes to `initialize`) or inside it, declares an output `name`."""
    folder = Path(model_repository)
    for config in (folder.parent / engine / "config.pbtxt", folder / engine / "config.pbtxt"):
        if config.is_file():
            text = config.read_text(encoding="utf-8")
            block = re.search(r"^\s*output\s*\[", text, re.MULTILINE)
            return block is not None and re.search(rf'name:\s*"{re.escape(name)}"', text[block.start() :]) is not None
    return False


@dataclass
class FrontRequest:
    input_ids: list[int]
    max_tokens: int
    end_id: int
    pad_id: int
    stop_words: list[list[int]]
    bad_words: list[list[int]]
    stream: bool
    exclude_input_in_output: bool
    return_log_probs: bool
    return_num_input_tokens: bool
    return_num_output_tokens: bool
    passthrough: dict[str, np.ndarray] = field(default_factory=dict)
    batch_index: int = 0
    """Row of this prompt in a request of N prompts; sent back as `batch_index`."""
    sequences: Sequences = Sequences(1, 1, 1.0)
    """Beam search or several sequences (front_sequences.py), passed to the engine as asked."""


def _flag(inputs: Mapping[str, np.ndarray | None], name: str) -> bool:
    value = scalar(inputs.get(name), name)
    return bool(value) if value is not None else False


def is_stop_request(inputs: Mapping[str, np.ndarray | None]) -> bool:
    """Whether the request asks to stop the running request with its id (input `stop` true)."""
    return _flag(inputs, "stop")


NO_PERF_METRICS = (
    "the `mentallama` model does not relay the engine's per-request metrics; the `ensemble` on the GPU profile "
    "serves them"
)


def check_front_sampling(inputs: Inputs) -> tuple[Sampling, Sequences]:
    """What the front model relays, on every profile: beam search and several sequences as the engine serves them
    (TensorRT-LLM's rules, the engine's limits), no per-request perf metrics; values as every engine allows them."""
    refuse_perf_metrics(inputs, NO_PERF_METRICS)
    return check_sampling_values(inputs), check_sequences(inputs)


def parse_front_batch(inputs: Mapping[str, np.ndarray | None], preprocessor: Preprocessor) -> list[FrontRequest]:
    """A request of N prompts (`[N, 1]` tensors, `[1, 1]` for one): one FrontRequest per prompt, with its
    `batch_index`, as TensorRT-LLM serves them; any bad prompt refuses the request (`RequestError`)."""
    refuse_unserved(inputs)
    fronts = [parse_front_request(item, preprocessor) for item in split_batch(inputs)]
    for i, front in enumerate(fronts):
        front.batch_index = i
    return fronts


def parse_front_request(inputs: Mapping[str, np.ndarray | None], preprocessor: Preprocessor) -> FrontRequest:
    """Validate and tokenise one prompt; raises `RequestError` naming the bad field."""
    refuse_unserved(inputs)
    for name, array in inputs.items():
        if array is not None and np.asarray(array).ndim >= 1 and np.asarray(array).shape[0] != 1:
            raise RequestError(
                f"{name}: one text per request is supported, got a batch of {np.asarray(array).shape[0]}"
            )

    def words(name: str):
        array = inputs.get(name)
        return None if array is None else np.asarray(array).reshape(-1).tolist()

    prepared = preprocessor.prepare(
        scalar(inputs.get("text_input"), "text_input"),
        scalar(inputs.get("max_tokens"), "max_tokens"),
        stop_words=words("stop_words"),
        bad_words=words("bad_words"),
        end_id=scalar(inputs.get("end_id"), "end_id"),
        pad_id=scalar(inputs.get("pad_id"), "pad_id"),
    )
    passthrough = {
        ENGINE_INPUT_NAMES[name]: np.asarray(inputs[name]).reshape(1, 1)
        for name in ENGINE_INPUT_NAMES
        if name not in _NOT_PASSED and inputs.get(name) is not None
    }
    sampling, sequences = check_front_sampling(passthrough)  # refuse bad values here, with INVALID_ARGUMENT
    if sampling.min_tokens > prepared.max_tokens:
        raise RequestError(f"min_tokens ({sampling.min_tokens}) is above max_tokens ({prepared.max_tokens})")
    return FrontRequest(
        input_ids=prepared.input_ids,
        max_tokens=prepared.max_tokens,
        end_id=prepared.end_id,
        pad_id=prepared.pad_id,
        stop_words=prepared.stop_words,
        bad_words=prepared.bad_words,
        stream=_flag(inputs, "stream"),
        exclude_input_in_output=_flag(inputs, "exclude_input_in_output"),
        return_log_probs=_flag(inputs, "return_log_probs"),
        return_num_input_tokens=_flag(inputs, "return_num_input_tokens"),
        return_num_output_tokens=_flag(inputs, "return_num_output_tokens"),
        passthrough=passthrough,
        sequences=sequences,
    )


def engine_inputs(front: FrontRequest, streaming: bool = True) -> dict[str, np.ndarray]:
    """The `tensorrt_llm` request for a front request (output without the prompt). The front model streams
    from the engine only for clients that stream: with one engine response, an engine failure is that first
    response, the only kind a BLS caller of Triton 2.51 receives (model.py)."""
    tensors = {
        "input_ids": np.array([front.input_ids], dtype=np.int32),
        "input_lengths": np.array([[len(front.input_ids)]], dtype=np.int32),
        "request_output_len": np.array([[front.max_tokens]], dtype=np.int32),
        "end_id": np.array([[front.end_id]], dtype=np.int32),
        "pad_id": np.array([[front.pad_id]], dtype=np.int32),
        "streaming": np.array([[streaming]]),
        "exclude_input_in_output": np.array([[True]]),
        **front.passthrough,
    }
    if front.stop_words:
        tensors["stop_words_list"] = to_word_list(front.stop_words)[None]
    if front.bad_words:
        tensors["bad_words_list"] = to_word_list(front.bad_words)[None]
    return tensors


# Longer ids are refused: an engine request id (`<id>#<32 hex>`) must fit one stop datagram (stop_channel).
MAX_REQUEST_ID_CHARS = 256


def client_request_id(read_id: Callable[[], str]) -> str:
    """The request's id, read with `read_id` (`pb_utils`' `request.request_id`): the Python backend decodes the
    id as UTF-8 and raises on anything else, which a client can send (issue 18, finding 1)."""
    try:
        request_id = read_id()
    except UnicodeDecodeError:
        raise RequestError("the request id is not valid UTF-8") from None
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise RequestError(f"the request id is {len(request_id)} characters long; the limit is {MAX_REQUEST_ID_CHARS}")
    return request_id


class Channel(Protocol):
    """A client's response sender (called with the model's `pb_utils` lock held)."""

    def send(self, reply: Reply) -> None: ...

    def is_cancelled(self) -> bool: ...


class Engine(Protocol):
    """The model's side of its calls (model_repository/mentallama/1/model.py, over `pb_utils`): requests to the
    `tensorrt_llm` model and its responses. `pb_lock` is the model's `pb_utils` lock (re-entrant); the calls hold it
    to read responses and to send replies, never while they wait on the engine."""

    pb_lock: AbstractContextManager[Any]

    def issue(self, engine_id: str, tensors: Mapping[str, np.ndarray]) -> Iterator[Any]:
        """Send an engine request; its responses (waits on the engine: called without the lock)."""
        ...

    def read(self, response: Any, log_probs: bool) -> EngineChunk:
        """One engine response's tensors (called with the lock held; `EngineChunk.of_outputs`); log probs only when
        asked for."""
        ...

    def stop(self, engine_id: str, wait: bool) -> None:
        """Stop an engine request; without waiting on the engine unless `wait`."""
        ...

    def retire(self, responses: Iterator[Any]) -> None:
        """Let go of a finished response iterator (model.py says why it is kept a while)."""
        ...

    def log(self, message: str, error: bool = False) -> None: ...


class BatchSender:
    """The channel of a request of N prompts, shared by its N calls: a call's final reply goes out without the
    final flag until the last call ends; an error ends the whole request, and the watcher then stops the other
    calls (`is_cancelled`)."""

    def __init__(self, channel: Channel, prompts: int) -> None:
        self.channel = channel
        self.remaining = prompts
        self.closed = False
        self.lock = threading.Lock()

    def send(self, reply: Reply) -> None:
        with self.lock:
            if self.closed:
                return
            if reply.final:
                self.remaining -= 1
                if self.remaining == 0 or reply.error is not None:
                    self.closed = True
                else:
                    reply = replace(reply, final=False)
            if not reply.bare or reply.final:  # a bare flag that is no longer final says nothing
                self.channel.send(reply)

    def is_cancelled(self) -> bool:
        return self.closed or self.channel.is_cancelled()


@dataclass(frozen=True)
class TextDecoding:
    """What every call decodes with; built once per model, as building it scans the vocabulary."""

    tokenizer: Any
    decoder: AnchoredDecoder
    byte_of: Mapping[int, int]

    @classmethod
    def of(cls, tokenizer: Any) -> TextDecoding:
        return cls(tokenizer, AnchoredDecoder(tokenizer, skip_special_tokens=True), byte_token_map(tokenizer))

    def prompt_text(self, input_ids: Sequence[int]) -> str:
        """The prompt's text as the start of the output (`exclude_input_in_output` false)."""
        return self.decoder.first([self.tokenizer.bos_token_id, *input_ids])


class FrontCall:
    """One prompt's engine call: what its engine sent and what its client was sent. `cancelled`: the client
    went away or a `stop` came (the engine request is stopped, the client gets a bare final flag); `done`: the
    client's final reply went out; `stalled`: the watcher ended it while its thread waited on the engine."""

    def __init__(
        self, front: FrontRequest, request_id: str, sender: Channel, decoding: TextDecoding, engine_id: str = ""
    ) -> None:
        self.front = front
        self.request_id = request_id  # the client's
        self.engine_id = engine_id or f"{request_id}#{uuid.uuid4().hex}"  # unique: one per prompt
        self.sender = sender
        self.decoding = decoding
        self.detokenizer: IncrementalDetokenizer | None = None  # set when the engine request is issued
        self.pending_log_probs: list[float] = []  # of tokens whose text is held back (partial character)
        self.texts: list[str] = []  # text not streamed (all of it for a client that does not stream)
        self.log_probs: list[float] = []
        self.cum_log_prob = 0.0
        self.num_output = 0
        self.cancelled = False
        self.done = False
        self.stalled = False
        self.lock = threading.Lock()
        self.responses = 0  # engine responses seen
        self.last_response = time.monotonic()
        self.several = several_texts(front, decoding)  # beams or several samples; None for one sequence

    def run(self, engine: Engine) -> None:
        """The call's whole walk, on its own thread: issue its engine request, turn each engine response into
        the reply it makes, end with the final reply. Only the waits on the engine are outside `engine.pb_lock`."""
        with engine.pb_lock:
            if self.cancelled:  # stopped before it reached the engine
                self.send(Reply(final=True))
                return
        responses = engine.issue(self.engine_id, engine_inputs(self.front, streaming=self.front.stream))
        try:
            self.begin()
            for response in responses:  # waits for the engine's next response
                if self.received(time.monotonic()):
                    engine.stop(self.engine_id, wait=False)
                with engine.pb_lock:
                    reply = self.add(engine.read(response, self.front.return_log_probs))
                    if reply is not None:
                        self.send(reply)
                if reply is not None and reply.final:  # an engine error ended the call
                    return
            with engine.pb_lock:
                for reply in self.final_replies():
                    self.send(reply)
        finally:
            engine.retire(responses)

    def begin(self) -> None:
        """Start decoding; on the call's own thread, not under the `pb_utils` lock (it decodes the prompt)."""
        self.detokenizer = IncrementalDetokenizer(
            self.decoding.tokenizer, self.front.input_ids, byte_of=self.decoding.byte_of, decoder=self.decoding.decoder
        )

    def received(self, now: float) -> bool:
        """Count an engine response; True when a stop must be sent again: one that came while the engine
        request was being issued may have missed it."""
        self.responses += 1
        self.last_response = now
        return self.cancelled and self.responses == 1

    def add(self, chunk: EngineChunk) -> Reply | None:
        """The reply an engine chunk makes now: a streamed piece of text, an error (final: the call ends), or
        None while text is held back, for a client that does not stream, or after a cancellation."""
        if chunk.error is not None:
            return Reply.failure(chunk.error, chunk.code)
        front = self.front
        if chunk.ids is None and chunk.beams is None:  # the engine's bare final flag
            if front.return_log_probs:
                self.cum_log_prob = 0.0
            return None
        if self.several is not None:
            return self.several.add(chunk, self.cancelled)
        assert self.detokenizer is not None and chunk.ids is not None, "begin() first"
        text = self.detokenizer.add(chunk.ids)  # "" while a character's bytes are incomplete
        cum_log_prob = 0.0
        if front.return_log_probs:
            cum_log_prob = chunk.cum_log_prob
            self.log_probs.extend(chunk.log_probs)
            self.pending_log_probs.extend(chunk.log_probs)
            self.cum_log_prob = cum_log_prob
        self.num_output += len(chunk.ids)
        if front.stream and text and not self.cancelled:
            log_probs = self.pending_log_probs if front.return_log_probs else None
            self.pending_log_probs = []
            return Reply(text, front.batch_index, log_probs, cum_log_prob)
        self.texts.append(text)
        return None

    def final_replies(self) -> list[Reply]:
        """The replies once the engine's stream ended, the last one final: `complete()` for one sequence; the
        final beams, or each sample's rest, for several."""
        if self.several is None or self.cancelled:
            return [self.complete()]
        return self.several.final()

    def complete(self) -> Reply:
        """The final reply once the engine's stream ended: the held-back rest (streaming) or the whole text, with
        the counts asked for; a bare final flag after a cancellation."""
        if self.cancelled:
            return Reply(final=True)
        front = self.front
        rest = self.detokenizer.flush() if self.detokenizer is not None else ""
        if front.stream:
            text, log_probs = rest, self.pending_log_probs
        else:
            text, log_probs = "".join(self.texts) + rest, self.log_probs
            if not front.exclude_input_in_output:
                text = self.decoding.prompt_text(front.input_ids) + text
        return Reply(
            text,
            front.batch_index,
            log_probs if front.return_log_probs else None,
            self.cum_log_prob,
            num_input_tokens=len(front.input_ids) if front.return_num_input_tokens else None,
            num_output_tokens=self.num_output if front.return_num_output_tokens else None,
            final=True,
        )

    def send(self, reply: Reply) -> None:
        """Send unless the call is done; a final reply makes it done (first, so a failing send is not retried)."""
        with self.lock:
            if self.done:
                return
            if reply.final:
                self.done = True
            self.sender.send(reply)

    def cancel(self) -> bool:
        """Mark cancelled (a `stop` request); True when its engine request has yet to be stopped."""
        with self.lock:
            newly = not self.done and not self.cancelled
            self.cancelled = True
        return newly

    def cancel_if_client_gone(self) -> bool:
        """Mark cancelled if the client went away (or its batch ended); True when its engine request has yet to
        be stopped."""
        with self.lock:
            newly = not self.done and not self.cancelled and self.sender.is_cancelled()
            if newly:
                self.cancelled = True
        return newly

    def is_stalled(self, now: float, timeout_s: float) -> bool:
        """The engine sent nothing for `timeout_s` after its first response (a lost engine error)."""
        return bool(self.responses) and not self.done and now - self.last_response > timeout_s

    def stall(self, timeout_s: float) -> Reply:
        """Mark stalled; the error that ends the call."""
        self.stalled = True
        message = (
            f"the engine failed or stopped answering: no response for {timeout_s:g} s after "
            f"{self.responses} response(s) (an engine error after the first response is not forwarded by "
            "Triton 2.51's BLS; the server log names it)"
        )
        return Reply.failure(message, "INTERNAL")


class FrontCalls:
    """The running calls by engine request id (`<client request id>#<uuid>`)."""

    def __init__(self, decoding: TextDecoding, max_calls: int) -> None:
        self.decoding = decoding
        self.max_calls = max_calls
        self.calls: dict[str, FrontCall] = {}
        self.abandoned = 0  # calls whose thread was left blocked on an engine response that was lost
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.calls)

    def open(self, request_id: str, fronts: Sequence[FrontRequest], channel: Channel) -> list[FrontCall]:
        """The calls of one request, one per prompt, to run. Past `max_calls` the request is refused on `channel`
        (UNAVAILABLE, so clients back off); the calls of its earlier prompts are then stopped by the watcher."""
        sender: Channel = BatchSender(channel, len(fronts)) if len(fronts) > 1 else channel
        calls = []
        for front in fronts:
            call = FrontCall(front, request_id, sender, self.decoding)
            with self.lock:
                busy = len(self.calls) >= self.max_calls
                if not busy:
                    self.calls[call.engine_id] = call
            if busy:
                message = f"{OVERLOADED}: {self.max_calls} requests in flight; retry later"
                sender.send(Reply.failure(message, "UNAVAILABLE"))
                break
            calls.append(call)
        return calls

    def run(self, call: FrontCall, engine: Engine) -> None:
        """The thread of one call: runs it (`FrontCall.run`); whatever fails, its client gets a final reply."""
        try:
            call.run(engine)
        except Exception as exc:  # the client must always get a final response
            with engine.pb_lock:
                call.send(Reply.failure(f"generation failed: {exc}", "INTERNAL"))
        finally:
            self.remove(call)
        if call.stalled:
            engine.log(f"request {call.engine_id}: the engine answered after the stall timeout")

    def watch_once(self, engine: Engine, stall_timeout_s: float) -> None:
        """One round of the model's watcher: end the calls whose engine went silent for `stall_timeout_s` after
        its first response (a lost engine error: model.py), and stop the engine requests of calls whose client
        went away (Triton 2.51 does not forward a cancellation through BLS)."""
        calls = self.snapshot()
        now = time.monotonic()
        for call in calls:
            if call.is_stalled(now, stall_timeout_s):
                self._end_stalled(call, engine, stall_timeout_s)
        for call in calls:
            with engine.pb_lock:
                newly = call.cancel_if_client_gone()
            if newly:
                engine.stop(call.engine_id, wait=True)

    def _end_stalled(self, call: FrontCall, engine: Engine, timeout_s: float) -> None:
        """Answer a call whose engine went silent; its thread, blocked on the engine, is abandoned."""
        reply = call.stall(timeout_s)
        with engine.pb_lock:
            call.send(reply)
        abandoned = self.abandon(call)
        engine.log(f"request {call.engine_id}: {reply.error}; {abandoned} call thread(s) abandoned", error=True)
        engine.stop(call.engine_id, wait=True)  # frees the engine if the request is still there

    def stop(self, request_id: str) -> list[FrontCall]:
        """A `stop` request: cancel the running calls of the request with exactly the same id (`user7` does not
        stop `user7#job3`); returns those whose engine request has yet to be stopped. Stopping a request that
        already ended, or is unknown, is not an error: the two can cross on the wire."""
        if not request_id:
            raise RequestError("stop: give the request id of the request to stop")
        with self.lock:
            calls = [call for call in self.calls.values() if call.request_id == request_id]
        return [call for call in calls if call.cancel()]

    def snapshot(self) -> list[FrontCall]:
        with self.lock:
            return list(self.calls.values())

    def remove(self, call: FrontCall) -> None:
        with self.lock:
            self.calls.pop(call.engine_id, None)

    def abandon(self, call: FrontCall) -> int:
        """Forget a stalled call whose thread stays blocked; how many were abandoned so far."""
        with self.lock:
            self.calls.pop(call.engine_id, None)
            self.abandoned += 1
            return self.abandoned
