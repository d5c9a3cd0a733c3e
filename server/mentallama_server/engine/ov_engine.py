"""CPU inference engine: an OpenVINO engine folder served by OpenVINO GenAI's `ContinuousBatchingPipeline`.

The pipeline schedules requests with a paged KV cache (in-flight batching: requests join and leave the
running batch between steps). `OpenVinoEngine` owns it on one generation thread and hands each request's
tokens to a callback on a dispatcher thread, so sending responses never delays the next step.

What each `GenerationRequest` field does here (nothing is silently ignored):
- input_ids, max_new_tokens: validated against the vocabulary, the context and the KV cache's capacity.
- end_id (None: the model's eos; negative: none): ends generation; not part of the output (TensorRT-LLM's rule).
- temperature, top_k, top_p, seed: OpenVINO GenAI's multinomial sampler with the request's own `rng_seed`;
  greedy when TensorRT-LLM's rule says so (`types.is_greedy`).
- repetition / presence / frequency penalties, min_new_tokens: OpenVINO GenAI's own logit processors.
- stop_words: matched here on the output tokens; like TensorRT-LLM the stop word stays in the output and
  generation stops at once (`handle.stop()`, which frees the request's KV blocks).
- return_log_probs: the log-probability of each chosen token under the model's full distribution (OpenVINO
  GenAI's; TensorRT-LLM reports it under the top-k/top-p renormalised one, so sampled values differ).
- bad_words: not supported by OpenVINO GenAI's sampler: refused by `check_supported`, never ignored.
- streaming: True delivers tokens after every step; False one final event. With `stream_hold_ms`, a
  request's new tokens may wait for the next step's to share one event (see `_release_now`).
- beam_width, num_return_sequences, length_penalty: OpenVINO GenAI's beam search (`num_beams`, the best
  `num_return_sequences` beams ranked by cum_log_prob / length ** length_penalty, transformers' HEURISTIC stop
  rule) or several samples; the pipeline hands such sequences over when the request is done, so they arrive in
  the final event (`TokenEvent.sequences`), cut after a stop word like single ones. Several greedy sequences are
  one greedy run, copied: greedy decoding is deterministic.

Every submitted request gets exactly one final event (`finished=True`): "length", "stop", "cancelled" or
"error" (the pipeline dropped the request, a step failed, or the engine shut down). Request contents are
never logged.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import queue
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .ov_step import Unavailable, gil_free_step
from .types import (
    EngineStats,
    FinishReason,
    GenerationRequest,
    SequenceOutput,
    TokenEvent,
    is_greedy,
    validate_request,
)

__all__ = ["KV_BLOCK_TOKENS", "EventCallback", "OpenVinoEngine", "UnsupportedRequestError", "check_supported"]

logger = logging.getLogger(__name__)

EventCallback = Callable[[TokenEvent], None]

KV_BLOCK_TOKENS = 32
"""Tokens per KV-cache block of OpenVINO's CPU plugin (2026.4): the unit of `num_kv_blocks`."""
_IDLE_WAIT_S = 0.5
_SHUTDOWN_MESSAGE = "engine shut down before the request finished"


class UnsupportedRequestError(ValueError):
    """A request asks for something this engine cannot do; the message names the field."""


def check_supported(request: GenerationRequest) -> None:
    if request.bad_words:
        raise UnsupportedRequestError(
            "bad_words is not supported by the CPU (OpenVINO) engine: its sampler has no banned-sequence filter"
        )


@dataclass(eq=False)
class _Tracked:
    """Engine-side state of one request; touched by the generation thread only, except `cancel_requested`."""

    request: GenerationRequest
    on_event: EventCallback
    end_ids: frozenset[int]
    handle: Any = None
    cancel_requested: bool = False
    output: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    # Shared with the dispatcher thread, under the engine lock:
    ready: int = 0  # output tokens the consumer may see
    sent: int = 0  # output tokens already delivered
    final: tuple[FinishReason, str | None] | None = None
    flush_scheduled: bool = False
    final_sent: bool = False
    callback_error: str | None = None
    latest: Any = None  # the last read of a request with several sequences (`_read_sequences`)
    sequences: tuple[SequenceOutput, ...] | None = None  # its final sequences, for the final event
    held_since: float | None = None  # when the oldest unpublished token of a streamed request was produced


class OpenVinoEngine:
    """In-flight batching generation over an OpenVINO engine folder, on the CPU.

    Usage::

        engine = OpenVinoEngine("artifacts/engines/tiny-...", max_num_seqs=8, num_kv_blocks=256)
        engine.start()
        engine.submit(GenerationRequest("r1", input_ids, max_new_tokens=64), on_event=print)
        ...
        engine.shutdown()

    Parameters:
        engine_dir: a folder written by `mentallama-build openvino` (openvino_model.xml/.bin, config.json,
            generation_config.json, tokenizer files).
        max_num_seqs: most sequences in one step (the running batch).
        max_num_batched_tokens: token budget of one step; long prompts are prefilled in chunks of it when
            `dynamic_split_fuse` is on, so decoding requests keep streaming.
        num_kv_blocks: KV-cache size in blocks of `KV_BLOCK_TOKENS` tokens (all layers).
        enable_prefix_caching: requests share the KV blocks of identical prompt prefixes.
        kv_cache_precision: "" (the plugin's default), "f32", "f16", "bf16" or "u8".
        inference_precision: "f32" (exact: the tiny checkpoint's greedy output equals transformers') or "bf16".
        num_threads: OpenVINO inference threads; 0 keeps the plugin's default (one per core).
        stream_hold_ms: longest a streamed token may wait for later steps' tokens, so that several go out in
            one event, when `max_num_seqs` streams run; with fewer, proportionally less (0: one event per step).
            Each event costs every hop after the engine (the Triton response, the front model's, gRPC, the front
            door, the client) about the same whatever it carries, so the engine sends about
            `max_num_seqs / stream_hold_ms` events per second at any load. First tokens and final events never
            wait, and a step longer than the hold is never waited for.
        release_gil: run each step with the GIL released (`ov_step.gil_free_step`), so other threads of the
            process (Triton's `execute()` taking requests, the dispatcher sending responses) run while the engine
            steps; where that is unavailable the binding's own `step()` is used (`steps_release_gil` says which,
            `gil_held_reason` why).
    """

    def __init__(
        self,
        engine_dir: str | Path,
        *,
        max_num_seqs: int = 32,
        max_num_batched_tokens: int = 512,
        num_kv_blocks: int = 512,
        dynamic_split_fuse: bool = True,
        enable_prefix_caching: bool = False,
        kv_cache_precision: str = "",
        inference_precision: str = "f32",
        num_threads: int = 0,
        stream_hold_ms: float = 0.0,
        release_gil: bool = True,
    ) -> None:
        self.engine_dir = Path(engine_dir)
        config = json.loads((self.engine_dir / "config.json").read_text(encoding="utf-8"))
        self.vocab_size = int(config["vocab_size"])
        self.max_sequence_tokens = min(int(config["max_position_embeddings"]), num_kv_blocks * KV_BLOCK_TOKENS)
        self.eos_ids = _eos_ids(self.engine_dir, config)
        self.scheduler = {
            "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max_num_batched_tokens,
            "num_kv_blocks": num_kv_blocks,
            "dynamic_split_fuse": dynamic_split_fuse,
            "enable_prefix_caching": enable_prefix_caching,
        }
        self.plugin_config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": inference_precision}
        if kv_cache_precision:
            self.plugin_config["KV_CACHE_PRECISION"] = kv_cache_precision
        if num_threads > 0:
            self.plugin_config["INFERENCE_NUM_THREADS"] = num_threads
        self._pipe: Any = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._inbox: list[_Tracked] = []
        self._tracked: dict[str, _Tracked] = {}
        self._seq_ids = itertools.count()
        self._stopping = False
        self._flushes: queue.SimpleQueue[_Tracked | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._metrics = (0, 0, 0.0)  # requests, scheduled, cache usage %
        self._tokens_generated = 0
        self._tokens_produced = 0  # written by the generation thread only
        self._finished: dict[str, int] = {}
        self._hold_s = max(0.0, stream_hold_ms) / 1000.0
        self._undelivered = 0  # flushes queued or being delivered (under the lock)
        self._queued = 0  # of which the dispatcher has yet to take (under the lock)
        self._delivered = threading.Condition(self._lock)
        self._step_s = 0.0  # how long the last step took: the expected wait for the next one's tokens
        self._release_gil = release_gil
        self._step: Any = None  # the pipeline's step, GIL-free where possible; set on the generation thread
        self.steps_release_gil = False
        self.gil_held_reason = "" if release_gil else "release_gil is off"

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Make the pipeline and start the threads; the pipeline's own error (a bad engine folder) is raised here."""
        ready = threading.Event()
        failure: list[Exception] = []
        generate = threading.Thread(
            target=self._generate_thread, args=(ready, failure), name="ov-generate", daemon=True
        )
        generate.start()
        ready.wait()
        if failure:
            generate.join()
            raise failure[0]
        dispatch = threading.Thread(target=self._dispatch_loop, name="ov-dispatch", daemon=True)
        dispatch.start()
        self._threads = [generate, dispatch]

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        # The generation thread stops the dispatcher once it has failed what was left (`_generate_thread`), so
        # those final events go out even when a step outlasts `timeout` and this returns first.
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def __enter__(self) -> OpenVinoEngine:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # -- API -----------------------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, on_event: EventCallback) -> None:
        """Queue `request`; ValueError (naming the field) when it is invalid or unsupported."""
        validate_request(request, vocab_size=self.vocab_size, max_sequence_tokens=self.max_sequence_tokens)
        check_supported(request)
        if request.end_id is None:
            end_ids = frozenset(self.eos_ids)
        else:
            end_ids = frozenset([request.end_id]) if request.end_id >= 0 else frozenset()
        tracked = _Tracked(request, on_event, end_ids)
        with self._wake:
            if self._stopping or not self._threads:
                raise RuntimeError("engine is not running")
            if request.request_id in self._tracked:
                raise ValueError(f"request_id {request.request_id!r} is already running")
            self._tracked[request.request_id] = tracked
            self._inbox.append(tracked)
            self._wake.notify_all()

    def cancel(self, request_id: str) -> bool:
        """Stop a request; its final event says "cancelled" and its KV blocks are freed. False if unknown."""
        with self._wake:
            tracked = self._tracked.get(request_id)
            if tracked is None or tracked.cancel_requested:
                return False
            tracked.cancel_requested = True
            self._wake.notify_all()
            return True

    def stats(self) -> EngineStats:
        with self._lock:
            requests, scheduled, usage = self._metrics
            unfinished = len(self._tracked)
            finished = dict(self._finished)
            generated = self._tokens_generated
            produced = self._tokens_produced
        total = self.scheduler["num_kv_blocks"]
        return EngineStats(
            active_requests=scheduled,
            waiting_requests=max(0, requests - scheduled),
            unfinished_requests=unfinished,
            cache_blocks_used=round(usage * total / 100.0),
            cache_blocks_cached=0,
            cache_blocks_total=total,
            tokens_generated=generated,
            requests_finished=finished,
            tokens_produced=produced,
        )

    # -- generation thread -----------------------------------------------------------------------------

    def _generate_thread(self, ready: threading.Event, failure: list[Exception]) -> None:
        """The pipeline is made, used and freed on this thread only. Making one replaces the calling thread's
        alternate signal stack and freeing it puts back the stack it found, on whichever thread frees it
        (OpenVINO GenAI 2026.4; checked with `sigaltstack`): a pipeline made on one thread and freed on another
        left the first thread's alternate stack in freed memory, and the next signal handled there (Python's
        handlers run on it) killed the process. This was the test suite's segfault at a SIGTERM test."""
        try:
            import openvino_genai as og

            scheduler = og.SchedulerConfig()
            for name, value in self.scheduler.items():
                setattr(scheduler, name, value)
            self._pipe = og.ContinuousBatchingPipeline(str(self.engine_dir), scheduler, "CPU", self.plugin_config)
            self._step = self._pipe.step
            if self._release_gil:
                try:
                    self._step = gil_free_step(self._pipe)
                    self.steps_release_gil = True
                except Unavailable as exc:
                    self.gil_held_reason = str(exc)
                    logger.warning("engine steps hold the GIL: the GIL-free step is unavailable (%s)", exc.args[0])
        except Exception as exc:
            self._step = self._pipe = None
            traceback.clear_frames(exc.__traceback__)  # re-raised by start(): no frame of it may hold the pipeline
            failure.append(exc)
            return
        finally:
            ready.set()
        try:
            self._generate_loop()
        except Exception as exc:  # outside a step (a step's own failure is handled there): fail all, stop taking more
            logger.error("engine generation thread failed: %s", type(exc).__name__)
            with self._wake:
                self._stopping = True
            self._fail_all(f"engine failed: {type(exc).__name__}: {exc}")
        finally:
            # Every request's handle is gone by now (`_finish`): this frees the pipeline here.
            self._step = self._pipe = None
            self._flushes.put(None)  # after every final event: the dispatcher delivers them, then stops

    def _generate_loop(self) -> None:
        stale_metrics = False
        while True:
            with self._wake:
                while not (self._stopping or self._inbox or self._has_cancels() or self._pipe_busy() or stale_metrics):
                    self._wake.wait(_IDLE_WAIT_S)
                if self._stopping:
                    break
                admitted, self._inbox = self._inbox, []
            for tracked in admitted:
                self._admit(tracked)
            self._apply_cancels()
            step_started = time.monotonic()
            try:
                # An idle step refreshes the metrics after the last request left (they lag one step).
                self._step()
            except Exception as exc:  # a failed step fails every request in it, with the reason
                logger.error("engine step failed: %s", type(exc).__name__)
                self._fail_all(f"engine step failed: {type(exc).__name__}: {exc}")
            self._step_s = time.monotonic() - step_started
            self._read_outputs()
            metrics = self._pipe.get_metrics()
            with self._lock:
                self._metrics = (int(metrics.requests), int(metrics.scheduled_requests), float(metrics.cache_usage))
            requests, _, usage = self._metrics
            stale_metrics = (requests > 0 or usage > 0) and not self._pipe_busy()
            if not self.steps_release_gil:
                self._await_delivery()
        self._fail_all(_SHUTDOWN_MESSAGE)

    def _await_delivery(self) -> None:
        """Where steps hold the GIL: let the dispatcher deliver what this step produced before the next step
        starts, for at most as long as a step takes. The binding's `step()` holds the GIL throughout, so a
        dispatcher whose consumer waits outside the GIL (a Triton response is a round trip to tritonserver) would
        otherwise deliver one event per step: at 32 requests in flight a request's tokens then came in three or
        four chunks, its first token seconds late, and its final response late enough to leave its place in the
        batch empty for several steps. The last response may still be on its way: its round trip goes on while
        the next step runs, and only the dispatcher's few lines after it wait for the step's end."""
        with self._delivered:
            self._delivered.wait_for(
                lambda: self._queued == 0 and self._undelivered <= 1, timeout=max(self._step_s, 0.001)
            )

    def _has_cancels(self) -> bool:
        return any(t.cancel_requested and t.handle is not None for t in self._tracked.values())

    def _pipe_busy(self) -> bool:
        return self._pipe.has_non_finished_requests()

    def _admit(self, tracked: _Tracked) -> None:
        if tracked.cancel_requested:
            self._finish(tracked, "cancelled")  # cancelled before it reached the pipeline
            return
        try:
            config = self._generation_config(tracked)
            ids = np.asarray([tracked.request.input_ids], dtype=np.int64)
            import openvino as ov

            tracked.handle = self._pipe.add_request(next(self._seq_ids), ov.Tensor(ids), config)
        except Exception as exc:
            self._finish(tracked, "error", error=f"engine refused the request: {exc}")

    def _generation_config(self, tracked: _Tracked) -> Any:
        import openvino_genai as og

        request = tracked.request
        config = og.GenerationConfig()
        config.max_new_tokens = request.max_new_tokens
        if tracked.end_ids:
            eos = min(tracked.end_ids)
            config.set_eos_token_id(eos)
            config.stop_token_ids = set(tracked.end_ids)
        else:
            config.ignore_eos = True
        config.min_new_tokens = request.min_new_tokens
        config.repetition_penalty = request.repetition_penalty
        config.presence_penalty = request.presence_penalty
        config.frequency_penalty = request.frequency_penalty
        if not is_greedy(request):
            config.do_sample = True
            config.temperature = request.temperature
            if request.top_k > 0:
                config.top_k = request.top_k
            config.top_p = request.top_p if 0.0 < request.top_p < 1.0 else 1.0
            config.rng_seed = request.seed if request.seed is not None else secrets.randbits(32)
        if request.return_log_probs:
            config.logprobs = 1
        _configure_sequences(config, request)
        return config

    def _apply_cancels(self) -> None:
        with self._lock:
            cancelled = [t for t in self._tracked.values() if t.cancel_requested and t.handle is not None]
        for tracked in cancelled:
            tracked.handle.cancel()
            if tracked.callback_error:
                self._finish(tracked, "error", error=tracked.callback_error)
            else:
                self._finish(tracked, "cancelled")

    def _read_outputs(self) -> None:
        import openvino_genai as og

        with self._lock:
            running = [t for t in self._tracked.values() if t.handle is not None]
        hold_s = self._stream_hold_s(sum(1 for t in running if t.request.streaming))
        now = time.monotonic()
        for tracked in running:
            if tracked.request.several:
                self._read_sequences(tracked)
                continue
            handle = tracked.handle
            reason: FinishReason | None = None
            while reason is None and handle.can_read():
                for output in handle.read().values():
                    reason = self._accept(tracked, list(output.generated_ids), list(output.generated_log_probs))
                    if reason is None and output.finish_reason != og.GenerationFinishReason.NONE:
                        reason = "length" if output.finish_reason == og.GenerationFinishReason.LENGTH else "stop"
            status = handle.get_status()
            if reason is None and status == og.GenerationStatus.IGNORED:
                self._finish(
                    tracked, "error", error="the engine dropped the request: it does not fit in the KV cache"
                )
                continue
            if reason is None and status != og.GenerationStatus.RUNNING:
                reason = "length" if len(tracked.output) >= tracked.request.max_new_tokens else "stop"
            if reason == "stop" and tracked.output and tracked.output[-1] in tracked.end_ids:
                tracked.output.pop()  # TensorRT-LLM's rule: the end id is not part of the output
                if tracked.log_probs:
                    tracked.log_probs.pop()
            if reason is not None:
                if status == og.GenerationStatus.RUNNING:
                    handle.stop()  # a stop word: free its KV blocks now
                self._finish(tracked, reason)
            elif (
                tracked.request.streaming
                and len(tracked.output) > tracked.ready
                and self._release_now(tracked, now, hold_s)
            ):
                self._publish(tracked)

    def _stream_hold_s(self, streams: int) -> float:
        """The hold when `streams` streamed requests run: `stream_hold_ms` at a full batch, proportionally less
        with fewer, so that the engine sends about as many responses per second at any load (their cost, on
        every hop after the engine, is what the hold bounds)."""
        return self._hold_s * min(1.0, streams / self.scheduler["max_num_seqs"])

    def _release_now(self, tracked: _Tracked, now: float, hold_s: float) -> bool:
        """Whether a streamed request's new tokens go out now, or wait for the next step's to share their event.
        They wait only while the oldest of them, once the next step ends (if it takes as long as the last one),
        has waited at most `hold_s`; a request's first tokens never wait (time to first token)."""
        if hold_s <= 0 or tracked.ready == 0:
            return True
        if tracked.held_since is None:
            tracked.held_since = now
        if now - tracked.held_since + self._step_s <= hold_s:
            return False
        tracked.held_since = None
        return True

    def _read_sequences(self, tracked: _Tracked) -> None:
        """A request with several sequences: the pipeline hands them over once the request is done."""
        import openvino_genai as og

        handle = tracked.handle
        # Greedy copies are one greedy run, which the pipeline streams: a read holds only the tokens since the last
        # one, so reads are joined (beams and samples are read whole, once the request is done).
        joined = tracked.request.beam_width == 1 and is_greedy(tracked.request)
        while handle.can_read():
            read = handle.read()
            tracked.latest = _join_reads(tracked.latest, read) if joined else read
        status = handle.get_status()
        if status == og.GenerationStatus.RUNNING:
            return
        if status == og.GenerationStatus.IGNORED:
            self._finish(tracked, "error", error="the engine dropped the request: it does not fit in the KV cache")
            return
        outputs = list((tracked.latest or {}).values())
        if not outputs:
            self._finish(tracked, "error", error="the engine returned no sequence")
            return
        tracked.sequences = _returned_sequences(tracked.request, outputs, tracked.end_ids)
        self._tokens_produced += sum(len(seq.token_ids) for seq in tracked.sequences)
        reasons = {seq.finish_reason for seq in tracked.sequences}
        self._finish(tracked, "length" if reasons == {"length"} else "stop")

    def _accept(self, tracked: _Tracked, ids: list[int], log_probs: list[float]) -> FinishReason | None:
        """Add new tokens; "stop" when the output now ends with a stop word (the rest is dropped)."""
        request = tracked.request
        for i, token in enumerate(ids):
            tracked.output.append(token)
            self._tokens_produced += 1
            if request.return_log_probs and i < len(log_probs):
                tracked.log_probs.append(float(log_probs[i]))
            if len(tracked.output) >= request.min_new_tokens and _ends_with_any(tracked.output, request.stop_words):
                return "stop"
        return None

    def _publish(self, tracked: _Tracked, final: tuple[FinishReason, str | None] | None = None) -> None:
        """Make the tokens so far (and the final outcome) visible to the dispatcher. A consumer slower than the
        engine gets them coalesced: one flush carries everything published since its last one."""
        with self._lock:
            tracked.ready = len(tracked.output)
            if final is not None:
                tracked.final = final
            if tracked.flush_scheduled:
                return
            tracked.flush_scheduled = True
            self._undelivered += 1
            self._queued += 1
        self._flushes.put(tracked)

    def _finish(self, tracked: _Tracked, reason: FinishReason, error: str | None = None) -> None:
        with self._lock:
            if self._tracked.pop(tracked.request.request_id, None) is None:
                return
            self._finished[reason] = self._finished.get(reason, 0) + 1
            self._tokens_generated += len(tracked.output) + sum(len(q.token_ids) for q in tracked.sequences or ())
        tracked.handle = None  # released on this (the generation) thread, like the pipeline it belongs to
        self._publish(tracked, (reason, error))

    def _fail_all(self, message: str) -> None:
        with self._lock:
            victims = list(self._tracked.values())
        for tracked in victims:
            if tracked.handle is not None:
                # The pipeline may already be broken; the request fails either way.
                with contextlib.suppress(Exception):
                    tracked.handle.cancel()
            self._finish(tracked, "error", error=message)

    # -- dispatcher thread -----------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        tracked: _Tracked | None = None
        while True:
            if tracked is not None:  # the last flush was delivered (or skipped)
                with self._lock:
                    self._undelivered -= 1
                    if self._undelivered <= 1:
                        self._delivered.notify_all()
            if (tracked := self._flushes.get()) is None:
                break
            with self._lock:
                tracked.flush_scheduled = False
                self._queued -= 1
                if self._queued == 0:
                    self._delivered.notify_all()
                if tracked.final_sent:
                    continue
                new = tracked.output[tracked.sent : tracked.ready]
                new_lp = tracked.log_probs[tracked.sent : tracked.ready] if tracked.request.return_log_probs else None
                tracked.sent = tracked.ready
                final = tracked.final
                tracked.final_sent = final is not None
            reason, error = final if final is not None else (None, None)
            sequences = tracked.sequences if final is not None else None
            event = TokenEvent(tracked.request.request_id, new, new_lp, final is not None, reason, error, sequences)
            try:
                tracked.on_event(event)
            except Exception as exc:  # one consumer's failure must not stop the others' events
                logger.error("event callback failed: %s", type(exc).__name__)
                if final is None:
                    self._fail_callback(tracked, f"event callback failed: {type(exc).__name__}: {exc}")

    def _fail_callback(self, tracked: _Tracked, message: str) -> None:
        """End a request whose consumer raised: cancel it in the pipeline, final event with the reason."""
        with self._wake:
            if tracked.request.request_id in self._tracked:
                tracked.cancel_requested = True
                tracked.callback_error = message
                self._wake.notify_all()


def _eos_ids(engine_dir: Path, config: dict) -> tuple[int, ...]:
    """The model's end-of-sequence ids: generation_config.json first (as transformers), then config.json."""
    value: object = None
    generation = engine_dir / "generation_config.json"
    if generation.is_file():
        value = json.loads(generation.read_text(encoding="utf-8")).get("eos_token_id")
    if value is None:
        value = config.get("eos_token_id")
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, list) else [value]))


def _configure_sequences(config: Any, request: GenerationRequest) -> None:
    """Beam search or several samples on an OpenVINO GenAI GenerationConfig (single sequences: untouched)."""
    import openvino_genai as og

    if request.beam_width > 1:
        config.do_sample = False  # beams are searched, not sampled (TensorRT-LLM's beam search ignores top-k/p too)
        config.num_beams = request.beam_width
        config.num_beam_groups = 1
        config.num_return_sequences = request.num_return_sequences
        config.length_penalty = request.length_penalty
        config.stop_criteria = og.StopCriteria.HEURISTIC  # transformers' default (early_stopping=False)
        config.logprobs = 1  # each beam's cum_log_prob is the sum of its tokens' log-probabilities
    elif request.num_return_sequences > 1 and not is_greedy(request):
        config.num_return_sequences = request.num_return_sequences
        config.logprobs = 1


@dataclass
class _JoinedOutput:
    """A streamed run's reads as one output (the fields `_returned_sequences` reads)."""

    generated_ids: list[int] = field(default_factory=list)
    generated_log_probs: list[float] = field(default_factory=list)
    finish_reason: Any = None
    score: float = 0.0


def _join_reads(joined: dict[int, _JoinedOutput] | None, read: dict[int, Any]) -> dict[int, _JoinedOutput]:
    joined = {} if joined is None else joined
    for key, output in read.items():
        whole = joined.setdefault(key, _JoinedOutput())
        whole.generated_ids.extend(int(t) for t in output.generated_ids)
        whole.generated_log_probs.extend(float(v) for v in output.generated_log_probs)
        whole.finish_reason, whole.score = output.finish_reason, float(output.score)
    return joined


def _returned_sequences(
    request: GenerationRequest, outputs: Sequence[Any], end_ids: frozenset[int]
) -> tuple[SequenceOutput, ...]:
    """The request's sequences from the pipeline's outputs: the best beams first (by the pipeline's score, which
    applies length_penalty), or the samples in order; each cut after a stop word and without its end id."""
    import openvino_genai as og

    if request.beam_width > 1:
        outputs = sorted(outputs, key=lambda output: float(output.score), reverse=True)
    chosen = list(outputs[: request.num_return_sequences])
    if len(chosen) < request.num_return_sequences and request.beam_width == 1 and is_greedy(request):
        chosen = [chosen[0]] * request.num_return_sequences  # greedy: every sequence is the same one
    sequences = []
    for output in chosen:
        ids = [int(t) for t in output.generated_ids]
        log_probs = [float(v) for v in output.generated_log_probs]
        reason: FinishReason = "length" if output.finish_reason == og.GenerationFinishReason.LENGTH else "stop"
        for end in range(1, len(ids) + 1):
            if end >= request.min_new_tokens and _ends_with_any(ids[:end], request.stop_words):
                ids, log_probs, reason = ids[:end], log_probs[:end], "stop"
                break
        if ids and ids[-1] in end_ids:  # TensorRT-LLM's rule: the end id is not part of the output
            ids, log_probs, reason = ids[:-1], log_probs[: len(ids) - 1], "stop"
        kept = log_probs[: len(ids)]
        sequences.append(SequenceOutput(ids, kept if request.return_log_probs else None, float(sum(kept)), reason))
    return tuple(sequences)


def _ends_with_any(tokens: list[int], words: Sequence[Sequence[int]]) -> bool:
    return any(len(tokens) >= len(w) and tokens[len(tokens) - len(w) :] == list(w) for w in words)
