"""CPU inference engine: transformers continuous batching (CB) behind a small, Triton-free API.

`CpuEngine` loads a LLaMA checkpoint, runs CB's generation thread, and routes results to one callback per
request from a single dispatcher thread (an asyncio loop fed by CB's result handlers, so nothing polls).
Requests join and leave the running batch between decode steps.

What each `GenerationRequest` field does here (nothing is silently ignored):
- max_new_tokens, input_ids: validated against the vocabulary and the longest sequence the engine holds
  (position embeddings and KV cache capacity).
- end_id (None: the model's eos; negative: none): CB stops on it; it is not part of the output.
- temperature, top_k, top_p, repetition/presence/frequency penalties, min_new_tokens, bad_words, seed:
  applied per request by `engine_sampling.RequestSampler` (TensorRT-LLM semantics, see that module), since CB
  only varies temperature/top-k/top-p per request and has one global RNG.
- stop_words: matched on the output token stream (generated tokens only), once `min_new_tokens` tokens
  exist; like TensorRT-LLM the stop word stays in the output. The CB request is then cancelled.
- return_log_probs: log-probability of each token under the distribution it was chosen from.
- streaming: True delivers tokens as they come (coalesced when the consumer lags); False one final event.
- pad_id: accepted and validated, no effect (outputs are token lists, never padded).
Beam search does not exist here; the adapter rejects beam_width != 1.

Every submitted request gets exactly one final event (`finished=True`): "length", "stop", "cancelled"
(after `cancel`), or "error" (sampling failure, CB failure, callback failure, engine shutdown).
Callbacks run on the dispatcher thread and must not block for long: they delay every other request's events.
Request contents are never logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.generation.continuous_batching import RequestStatus
from transformers.generation.continuous_batching.requests import GenerationOutput

from .engine_cb import (
    SamplingProcessor,
    cache_usage,
    create_manager,
    drain_stray_outputs,
    scheduler_counts,
    unregister_result_handler,
)
from .engine_sampling import RequestSampler
from .engine_types import EngineStats, FinishReason, GenerationRequest, TokenEvent, validate_request

__all__ = ["CpuEngine", "EngineStats", "EventCallback", "GenerationRequest", "TokenEvent"]

logger = logging.getLogger(__name__)

EventCallback = Callable[[TokenEvent], None]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_WATCHDOG_PERIOD_S = 0.5
_SHUTDOWN_MESSAGE = "engine shut down before the request finished"


@dataclass(eq=False)
class _Tracked:
    """Engine-side state of one request. Mutated on the dispatcher thread only, except `cancel_requested` and
    `done`, which are read and written under the engine lock."""

    request: GenerationRequest
    on_event: EventCallback
    cb_id: str
    sampler: RequestSampler
    end_ids: frozenset[int]
    admitted: bool = False  # handed to CB
    cb_finished: bool = False  # CB sent its final output (it freed the slot itself)
    cancel_requested: bool = False
    done: bool = False  # final event decided
    n_seen: int = 0  # CB tokens looked at
    accepted: list[int] = field(default_factory=list)  # output tokens so far (for stop words)
    pending: list[int] = field(default_factory=list)  # accepted, not delivered (non-streaming)
    pending_log_probs: list[float] = field(default_factory=list)
    latest: GenerationOutput | None = None
    flush_scheduled: bool = False


class CpuEngine:
    """Continuous-batching generation for one checkpoint, on the CPU (the default) or a CUDA device.

    Usage::

        engine = CpuEngine("artifacts/checkpoints/tiny", max_batch_size=8, num_blocks=256, block_size=32,
                           max_batch_tokens=512)
        engine.start()
        engine.submit(GenerationRequest("r1", input_ids, max_new_tokens=64), on_event=print)
        ...
        engine.shutdown()

    Parameters:
        checkpoint_dir: a Hugging Face checkpoint folder (config.json + weights); never a hub name.
        max_batch_size: most requests in one forward pass.
        num_blocks, block_size: KV cache size, in blocks of `block_size` tokens (all layers). Together they
            cap the tokens held by all running requests (prompt + output).
        max_batch_tokens: token budget of one forward pass (long prompts are prefilled in chunks of it).
        dtype: "float32", "bfloat16", "float16" or "auto": the checkpoint's own dtype (float32 if
            undeclared), except float16 on the CPU, which loads as bfloat16 (same memory, much faster CPU
            kernels).
        num_threads: torch intra-op threads (process-wide); None keeps torch's default (one per core).
            On a CPU shared with Triton's other processes, 1 is usually faster: idle OpenMP threads spin.
        attn_implementation: "sdpa" or "eager" (CB turns it into its paged variant).
        prefix_caching: let requests share the cache blocks of identical prompt prefixes.
        device: where the model and its KV cache live: "cpu" (the profile's default) or "cuda" / "cuda:N".
            The engine's own threads stay on the host either way; only the forward passes move.
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        *,
        max_batch_size: int = 8,
        num_blocks: int = 256,
        block_size: int = 32,
        max_batch_tokens: int = 512,
        dtype: str = "auto",
        num_threads: int | None = None,
        attn_implementation: str = "sdpa",
        prefix_caching: bool = True,
        device: str = "cpu",
    ) -> None:
        path = Path(checkpoint_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no checkpoint (config.json) in {path}")
        if dtype != "auto" and dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
        for name, value in (("max_batch_size", max_batch_size), ("num_blocks", num_blocks),
                            ("max_batch_tokens", max_batch_tokens)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if block_size < 4:
            raise ValueError(f"block_size must be >= 4, got {block_size}")
        self.device: torch.device = _check_device(device)
        if num_threads is not None:
            torch.set_num_threads(num_threads)

        self.dtype: torch.dtype = _auto_dtype(path, self.device) if dtype == "auto" else _DTYPES[dtype]
        # On a GPU, device_map loads the weights straight onto it (no host copy of a 13 GB model first).
        placement = {} if self.device.type == "cpu" else {"device_map": self.device}
        self._model = AutoModelForCausalLM.from_pretrained(
            path, dtype=self.dtype, attn_implementation=attn_implementation, **placement
        ).eval()
        config = self._model.config
        self.vocab_size: int = config.vocab_size
        self.max_sequence_tokens: int = min(config.max_position_embeddings, num_blocks * block_size)
        self.eos_token_ids: tuple[int, ...] = _eos_ids(self._model)
        self.num_blocks = num_blocks

        self._processor = SamplingProcessor()
        self._manager = create_manager(
            self._model,
            self._processor,
            eos_token_ids=self.eos_token_ids,
            max_batch_size=max_batch_size,
            num_blocks=num_blocks,
            block_size=block_size,
            max_batch_tokens=max_batch_tokens,
            prefix_caching=prefix_caching,
        )
        self._lock = threading.Lock()
        self._state = "created"  # created -> running -> stopping -> stopped
        self._requests: dict[str, _Tracked] = {}
        self._next_seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Counters, written by the dispatcher thread only.
        self._tokens_generated = 0
        self._finished: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self, warmup: bool = True) -> None:
        """Start the generation and dispatcher threads; with `warmup`, run one tiny request first so the
        first real request does not pay for lazy initialisation."""
        with self._lock:
            if self._state != "created":
                raise RuntimeError(f"engine cannot start: it is {self._state}")
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="cpu-engine-dispatcher", daemon=True
            )
            self._thread.start()
            # Threads inherit daemon-ness from their creator: starting CB from the (daemon) dispatcher
            # makes its generation thread a daemon too, so a forgotten engine never blocks process exit.
            started: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._loop.call_soon_threadsafe(_run_into, started, self._manager.start)
            started.result(timeout=60)
            self._state = "running"
            self._loop.call_soon_threadsafe(self._watchdog)
        if warmup:
            self._warmup()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop generating now. Unfinished requests get a final "error" event. Idempotent."""
        with self._lock:
            if self._state in ("stopping", "stopped"):
                return
            was_running = self._state == "running"
            self._state = "stopping"
        if was_running:
            assert self._loop is not None and self._thread is not None
            self._manager.stop(block=True, timeout=timeout, hard_stop=True)
            # Runs after every output CB delivered while stopping: those finish their requests first.
            swept = asyncio.run_coroutine_threadsafe(self._sweep(_SHUTDOWN_MESSAGE), self._loop)
            try:
                swept.result(timeout=timeout)
            except TimeoutError:
                logger.error("dispatcher did not finish the remaining requests within %.1fs", timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=timeout)
            if not self._thread.is_alive():
                self._loop.close()
        with self._lock:
            self._state = "stopped"

    def __enter__(self) -> CpuEngine:
        if self._state == "created":
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ requests

    def submit(self, request: GenerationRequest, on_event: EventCallback) -> None:
        """Queue `request`; `on_event` receives its events on the dispatcher thread.

        Raises ValueError (naming the field) for an invalid request or a request_id already in flight, and
        RuntimeError when the engine is not running.
        """
        validate_request(request, vocab_size=self.vocab_size, max_sequence_tokens=self.max_sequence_tokens)
        if request.end_id is None:
            end_ids = frozenset(self.eos_token_ids)
        else:
            end_ids = frozenset([request.end_id]) if request.end_id >= 0 else frozenset()
        sampler = RequestSampler(request, sorted(end_ids))
        with self._lock:
            if self._state != "running":
                raise RuntimeError(f"engine is not running (it is {self._state})")
            if request.request_id in self._requests:
                raise ValueError(f"request_id {request.request_id!r} is already in flight")
            self._next_seq += 1
            tracked = _Tracked(request, on_event, f"cb-{self._next_seq}", sampler, end_ids)
            self._requests[request.request_id] = tracked
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._admit, tracked)

    def cancel(self, request_id: str) -> bool:
        """Cancel an unfinished request: it leaves the batch, its cache blocks are freed and its callback
        gets a final "cancelled" event. Returns False (and does nothing) if the request is unknown, finished
        or already cancelled."""
        with self._lock:
            tracked = self._requests.get(request_id)
            if tracked is None or tracked.done or tracked.cancel_requested or self._state != "running":
                return False
            tracked.cancel_requested = True
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._cancel_now, tracked)
        return True

    def stats(self) -> EngineStats:
        active, waiting = scheduler_counts(self._manager)
        with self._lock:
            unfinished = len(self._requests)
            not_admitted = sum(1 for t in self._requests.values() if not t.admitted)
        usage = cache_usage(self._manager, fallback_total=self.num_blocks)
        return EngineStats(
            active_requests=active,
            waiting_requests=waiting + not_admitted,
            unfinished_requests=unfinished,
            cache_blocks_used=usage.used,
            cache_blocks_cached=usage.cached,
            cache_blocks_total=usage.total,
            tokens_generated=self._tokens_generated,
            requests_finished=dict(self._finished),
        )

    # ------------------------------------------------------------------ dispatcher thread

    def _admit(self, tracked: _Tracked) -> None:
        if tracked.done:
            return
        if tracked.cancel_requested:
            self._finish(tracked, "cancelled")
            return
        if not self._manager.is_running():
            self._finish(tracked, "error", error="the generation loop is not running")
            return
        request = tracked.request
        self._processor.register(tracked.cb_id, tracked.sampler)
        self._manager.register_result_handler(tracked.cb_id, lambda output: self._on_output(tracked, output))
        cb_id = self._manager.add_request(
            list(request.input_ids),
            request_id=tracked.cb_id,
            max_new_tokens=request.max_new_tokens,
            streaming=True,  # always: stop words need the stream even when the client does not stream
            eos_token_id=sorted(tracked.end_ids) or -1,
        )
        if cb_id is None:
            self._finish(tracked, "error", error="the generation loop refused the request")
            return
        tracked.admitted = True

    def _on_output(self, tracked: _Tracked, output: GenerationOutput) -> None:
        """Keep the latest output, flush once per loop turn: a lagging consumer gets tokens coalesced."""
        if tracked.done:
            return
        tracked.latest = output
        if not tracked.flush_scheduled:
            tracked.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, tracked)

    def _flush(self, tracked: _Tracked) -> None:
        tracked.flush_scheduled = False
        output, tracked.latest = tracked.latest, None
        if tracked.done or output is None:
            return
        try:
            self._process_output(tracked, output)
        except Exception as exc:
            logger.exception("internal error while processing request %s", tracked.request.request_id)
            self._finish(tracked, "error", error=f"internal engine error: {exc}")

    def _process_output(self, tracked: _Tracked, output: GenerationOutput) -> None:
        if output.is_finished():
            tracked.cb_finished = True
        if output.status == RequestStatus.FAILED or output.error is not None:
            message = _SHUTDOWN_MESSAGE if self._state == "stopping" else output.error or "generation failed"
            self._finish(tracked, "error", error=message)
            return
        if tracked.sampler.error is not None:
            self._finish(tracked, "error", error=tracked.sampler.error)
            return
        start = tracked.n_seen
        new_tokens = output.generated_tokens[start:]
        tracked.n_seen = len(output.generated_tokens)
        accepted, reason = self._accept(tracked, new_tokens)
        if reason is None and output.is_finished():
            reason = "length"
        log_probs = None
        if tracked.request.return_log_probs:
            log_probs = tracked.sampler.logprobs[start : start + len(accepted)]
        self._tokens_generated += len(accepted)
        if reason is not None:
            self._finish(tracked, reason, accepted, log_probs)
        elif accepted and tracked.request.streaming:
            self._deliver(tracked, TokenEvent(tracked.request.request_id, accepted, log_probs))
        else:
            tracked.pending.extend(accepted)
            tracked.pending_log_probs.extend(log_probs or ())

    @staticmethod
    def _accept(tracked: _Tracked, new_tokens: list[int]) -> tuple[list[int], FinishReason | None]:
        """Take new tokens up to an end id (excluded) or the end of a stop word (included)."""
        request = tracked.request
        accepted: list[int] = []
        for token in new_tokens:
            if token in tracked.end_ids:
                return accepted, "stop"
            accepted.append(token)
            tracked.accepted.append(token)
            if len(tracked.accepted) < request.min_new_tokens:
                continue
            if _ends_with_any(tracked.accepted, request.stop_words):
                return accepted, "stop"
        return accepted, None

    def _cancel_now(self, tracked: _Tracked) -> None:
        self._finish(tracked, "cancelled")

    def _finish(
        self,
        tracked: _Tracked,
        reason: FinishReason,
        tokens: list[int] | None = None,
        log_probs: list[float] | None = None,
        error: str | None = None,
    ) -> None:
        """Decide the final event (once), release everything the request holds, then deliver it."""
        request_id = tracked.request.request_id
        with self._lock:
            if tracked.done:
                return
            tracked.done = True
            if tracked.cancel_requested and reason in ("length", "stop"):
                reason = "cancelled"  # cancel() already promised this outcome
            if self._requests.get(request_id) is tracked:
                del self._requests[request_id]
        self._processor.unregister(tracked.cb_id)
        unregister_result_handler(self._manager, tracked.cb_id)
        if tracked.admitted and not tracked.cb_finished:
            self._manager.cancel_request(tracked.cb_id)  # frees the slot and cache at the next step
        self._finished[reason] = self._finished.get(reason, 0) + 1
        all_tokens = tracked.pending + (tokens or [])
        all_log_probs = None
        if tracked.request.return_log_probs:
            all_log_probs = tracked.pending_log_probs + (log_probs or [])
        tracked.pending, tracked.pending_log_probs = [], []
        self._deliver(tracked, TokenEvent(request_id, all_tokens, all_log_probs, True, reason, error))

    def _deliver(self, tracked: _Tracked, event: TokenEvent) -> None:
        try:
            tracked.on_event(event)
        except Exception as exc:
            logger.exception("event callback failed for request %s", event.request_id)
            if not event.finished:
                self._finish(tracked, "error", error=f"event callback failed: {exc}")

    def _watchdog(self) -> None:
        """Fail requests if CB's generation thread died, and drop stray outputs of finished requests."""
        try:
            drain_stray_outputs(self._manager)
            if self._state == "running" and not self._manager.is_running():
                fatal = self._manager.background_thread_status.fatal_error
                logger.error("the generation loop stopped unexpectedly: %s", fatal)
                for tracked in list(self._requests.values()):
                    self._finish(tracked, "error", error=f"the generation loop stopped: {fatal}")
        finally:
            if self._state == "running":
                asyncio.get_running_loop().call_later(_WATCHDOG_PERIOD_S, self._watchdog)

    async def _sweep(self, message: str) -> None:
        for tracked in list(self._requests.values()):
            self._finish(tracked, "error", error=message)

    def _warmup(self) -> None:
        done = threading.Event()
        bos = self._model.config.bos_token_id
        prompt = [bos if isinstance(bos, int) and 0 <= bos < self.vocab_size else 0] * 4
        request = GenerationRequest("__warmup__", prompt, max_new_tokens=2, end_id=-1, streaming=False)
        self.submit(request, lambda event: done.set() if event.finished else None)
        if not done.wait(timeout=120):
            logger.warning("warmup request did not finish within 120 s")
        self._tokens_generated = 0
        self._finished = {}


def _run_into(future: concurrent.futures.Future[None], function: Callable[[], object]) -> None:
    try:
        function()
        future.set_result(None)
    except BaseException as exc:
        future.set_exception(exc)


def _check_device(device: str) -> torch.device:
    """`cpu` or a CUDA device that exists here; anything else is refused before weights are loaded."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type != "cuda":
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device here")
    index = parsed.index if parsed.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def _auto_dtype(path: Path, device: torch.device) -> torch.dtype:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    declared = config.get("torch_dtype") or config.get("dtype") or "float32"
    if declared == "float16" and device.type == "cpu":
        return torch.bfloat16  # CPU float16 kernels are slow; a GPU runs float16 as declared
    return _DTYPES.get(str(declared), torch.float32)


def _eos_ids(model: torch.nn.Module) -> tuple[int, ...]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = model.config.eos_token_id
    if eos is None:
        return ()
    ids = [eos] if isinstance(eos, int) else list(eos)
    return tuple(i for i in ids if i >= 0)


def _ends_with_any(tokens: list[int], words: Sequence[Sequence[int]]) -> bool:
    for word in words:
        n = len(word)
        if n <= len(tokens) and tokens[-n:] == list(word):
            return True
    return False
