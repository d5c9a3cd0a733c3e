"""The engine's seam with transformers' continuous batching (CB, transformers 5.24).

Two things live here so `cpu_engine` never touches CB internals directly:
- `SamplingProcessor`: a CB per-request logits processor that hands each row of logits to the request's
  own `RequestSampler`. CB runs with `do_sample=False`, so for a row the sampler handled we leave only the
  chosen token finite and CB's argmax picks it; rows of plain greedy requests are left untouched.
- `create_manager`: a `ContinuousBatchingManager` sized explicitly (cache blocks, page size, batch token
  budget), because on CPU CB otherwise sizes its cache from system RAM (slow start, gigabytes of RSS).
- small readers/cleaners of CB state for `CpuEngine` (`cache_usage`, `scheduler_counts`, ...).
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching import ContinuousBatchingManager
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
    ContinuousBatchingLogitsProcessorList,
)
from transformers.generation.continuous_batching.requests import FutureRequestState, RequestState
from transformers.generation.logits_process import LogitsProcessorList

from .engine_sampling import RequestSampler

__all__ = [
    "CacheUsage",
    "SamplingProcessor",
    "cache_usage",
    "create_manager",
    "drain_stray_outputs",
    "scheduler_counts",
    "unregister_result_handler",
]

logger = logging.getLogger(__name__)


class _DropPsutilNotices(logging.Filter):
    """CB probes system RAM even when the cache is sized explicitly (as here); without psutil that probe logs
    an ERROR and a WARNING that do not apply to us. Drop exactly those two records."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "without psutil" not in message and "psutil is not available" not in message


_PSUTIL_FILTER = _DropPsutilNotices()


class SamplingProcessor(ContinuousBatchingLogitsProcessor):
    """Routes each logits row to the `RequestSampler` registered under the row's CB request id.

    CB calls `prepare_tensor_args` with the requests of a batch that get a new token, then `__call__` with
    their logits rows in the same order, both from the generation thread (synchronous batching). Samplers
    are registered/unregistered from the dispatcher thread; dict get/set are atomic, and a row whose
    sampler is gone (request finished by a stop word, CB cancellation pending) is left to plain argmax.
    """

    supported_kwargs: dict[str, type] = {}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._samplers: dict[str, RequestSampler] = {}
        self._batch: list[tuple[RequestSampler | None, RequestState]] = []

    def register(self, cb_request_id: str, sampler: RequestSampler) -> None:
        self._samplers[cb_request_id] = sampler

    def unregister(self, cb_request_id: str) -> None:
        self._samplers.pop(cb_request_id, None)

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.zero_()

    def prepare_tensor_args(self, requests_with_new_token: list[FutureRequestState]) -> torch.Tensor:
        self._batch = [(self._samplers.get(r.state.request_id), r.state) for r in requests_with_new_token]
        return torch.zeros(len(requests_with_new_token), dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        rows = [
            (row, sampler, state)
            for row, (sampler, state) in enumerate(self._batch)
            if sampler is not None and sampler.error is None and sampler.needs_processing
        ]
        if not rows:
            return scores
        # Samplers work on host tensors (their seeded generators are CPU ones): on a GPU the logits come over
        # in one copy, and the choices go back as two indexed writes, not two small kernels per row.
        host = scores if scores.device.type == "cpu" else scores.float().cpu()
        chosen: list[tuple[int, int]] = []
        for row, sampler, state in rows:
            try:
                chosen.append((row, sampler.choose(host[row], state.initial_tokens + state.generated_tokens)))
            except Exception as exc:  # one bad request must not kill the generation loop of all others
                logger.exception("sampling failed for CB request %s", state.request_id)
                sampler.error = f"sampling failed: {exc}"
        if chosen:
            index = torch.tensor(chosen, dtype=torch.long).to(scores.device)
            scores[index[:, 0]] = float("-inf")
            scores[index[:, 0], index[:, 1]] = 0.0
        return scores


class _SamplingProcessorList(ContinuousBatchingLogitsProcessorList):
    """A CB processor list holding only our `SamplingProcessor`, with its one argument row reserved."""

    def __init__(self, processor: SamplingProcessor) -> None:
        super().__init__(LogitsProcessorList([processor]), per_request_processors=False)
        # CB counts argument rows only for the processors it converts itself; ours needs one too.
        self.tensors_required = 1


def create_manager(
    model: PreTrainedModel,
    processor: SamplingProcessor,
    *,
    eos_token_ids: Sequence[int],
    max_batch_size: int,
    num_blocks: int,
    block_size: int,
    max_batch_tokens: int,
    prefix_caching: bool,
) -> ContinuousBatchingManager:
    """Build (not start) a CB manager with explicit sizes, greedy CB sampling and our processor installed."""
    logging.getLogger("ContinuousBatchingLogger").addFilter(_PSUTIL_FILTER)  # idempotent
    generation_config = GenerationConfig(do_sample=False, eos_token_id=list(eos_token_ids) or -1)
    cb_config = ContinuousBatchingConfig(
        page_size=block_size,
        num_blocks=num_blocks,
        max_batch_tokens=max_batch_tokens,
        max_requests_per_batch=max_batch_size,
        allow_block_sharing=prefix_caching,
        use_async_batching=False,  # SamplingProcessor relies on prepare -> call -> update in order
        use_cuda_graph=False,
        auto_switch_to_flash=False,
        return_logprobs=False,  # log-probs come from the samplers: CB would see our one-hot rows
    )
    manager = model.init_continuous_batching(
        generation_config=generation_config, continuous_batching_config=cb_config
    )
    # The batch processor (created when the manager starts) takes its logits processors from here.
    manager.logit_processor = _SamplingProcessorList(processor)
    return manager


@dataclass(frozen=True)
class CacheUsage:
    used: int
    cached: int
    total: int


def cache_usage(manager: ContinuousBatchingManager, fallback_total: int) -> CacheUsage:
    """Count cache blocks without pausing generation: block tables are copied (an atomic dict copy under the
    GIL) before being read."""
    batch_processor = manager.batch_processor
    if batch_processor is None:
        return CacheUsage(used=0, cached=0, total=fallback_total)
    used = cached = total = 0
    for allocator in batch_processor.cache.cache_allocators.values():
        tables = allocator.block_table.copy()
        used += len({block for blocks in tables.values() for block in list(blocks)})
        cached += len(allocator.ledger.cached_blocks)
        total += allocator.num_blocks
    return CacheUsage(used=used, cached=cached, total=total)


def scheduler_counts(manager: ContinuousBatchingManager) -> tuple[int, int]:
    """(requests in the running batch, requests CB has received but not scheduled yet)."""
    queued = manager.input_queue.qsize()
    batch_processor = manager.batch_processor
    if batch_processor is None:
        return 0, queued
    scheduler = batch_processor.scheduler
    return len(scheduler.active_requests), len(scheduler.waiting_requests) + queued


def unregister_result_handler(manager: ContinuousBatchingManager, cb_request_id: str) -> None:
    """Drop the handler of a request CB will never finish (cancelled): CB only drops it on a final output."""
    router = manager.output_router
    with router._lock:
        router.result_handlers.pop(cb_request_id, None)


def drain_stray_outputs(manager: ContinuousBatchingManager) -> int:
    """Discard outputs that reached CB's shared queue because their handler was already dropped (a streamed
    token racing a cancellation); they would otherwise pile up for the life of the server."""
    drained = 0
    while True:
        try:
            manager.output_router.output_queue.get_nowait()
        except queue.Empty:
            return drained
        drained += 1
