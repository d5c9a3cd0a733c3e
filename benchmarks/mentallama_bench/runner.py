"""Driving load: closed-loop concurrency or open-loop arrivals, warm-up, server scrapes, records.

`drive()` only sends requests and collects outcomes; `run_load()` wraps one measured run (warm-up,
Prometheus before/after, token counting, summary); `run_session()` runs a list of loads against one
or more backends and writes every artefact through `mentallama_bench.report`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mentallama_bench import report
from mentallama_bench.arrivals import iter_arrival_offsets
from mentallama_bench.backends import Backend
from mentallama_bench.datasets import BenchmarkDataset
from mentallama_bench.metrics import SLO, summarize
from mentallama_bench.prometheus import MetricsSnapshot, diff_snapshots, scrape, triton_model_stats
from mentallama_bench.records import RequestOutcome, RequestRecord, RunResult, SampleRequest, SamplingParams
from mentallama_bench.tokens import count_output_tokens

__all__ = [
    "COUNT_MODES",
    "LoadSpec",
    "RunInterrupted",
    "SessionConfig",
    "StopSpec",
    "drive",
    "make_record",
    "run_load",
    "run_session",
]

COUNT_MODES = ("auto", "server", "tokenizer", "responses")
_WARMUP_SEED_OFFSET = 1_000_003  # warm-up prompts come from another stream than measured ones


@dataclass(frozen=True)
class LoadSpec:
    """Closed loop (`concurrency` clients, each sending its next request when the last ends) or open
    loop (`rate` requests/s with gamma/Poisson gaps, optionally capped at `max_concurrency` in flight)."""

    concurrency: int | None = None
    rate: float | None = None
    burstiness: float = 1.0
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency or rate")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")

    @property
    def label(self) -> str:
        if self.concurrency is not None:
            return f"c{self.concurrency}"
        rate = "inf" if math.isinf(self.rate or 0) else f"{self.rate:g}"
        label = f"r{rate}"
        if self.burstiness != 1.0:
            label += f"-b{self.burstiness:g}"
        if self.max_concurrency is not None:
            label += f"-c{self.max_concurrency}"
        return label

    @property
    def in_flight_limit(self) -> int | None:
        """Most requests in flight at once (None: unbounded open loop)."""
        return self.concurrency if self.concurrency is not None else self.max_concurrency


@dataclass(frozen=True)
class StopSpec:
    """Stop issuing requests after `requests` sends or `duration_s` seconds, whichever comes first.
    Requests already sent are always awaited (each is bounded by the backend's request timeout)."""

    requests: int | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.requests is None and self.duration_s is None:
            raise ValueError("give a request count, a duration or both")


@dataclass
class Sent:
    """One sent request before token counting: what, where, when scheduled, and what came back."""

    sample: SampleRequest
    backend: Backend
    scheduled: float | None
    outcome: RequestOutcome


@dataclass
class DriveState:
    """What `drive` has finished so far; the caller keeps it, so a cancelled run keeps its requests."""

    t0: float = 0.0
    sent: list[Sent] = field(default_factory=list)


async def drive(
    backends: Sequence[Backend],
    samples: Iterator[SampleRequest],
    params: SamplingParams,
    load: LoadSpec,
    stop: StopSpec,
    seed: int = 0,
    on_done: Callable[[Sent], None] | None = None,
    state: DriveState | None = None,
) -> tuple[float, list[Sent]]:
    """Send requests round-robin over `backends`; returns (start perf_counter, every request sent).

    `state` (optional) sees every finished request as it ends, also when the run is cancelled."""
    state = state if state is not None else DriveState()
    t0 = state.t0 = time.perf_counter()
    deadline = None if stop.duration_s is None else t0 + stop.duration_s
    counter = itertools.count()
    sent = state.sent

    def claim() -> tuple[int, SampleRequest] | None:
        """The next request to issue (its index picks the backend), or None once the stop is reached.
        Prompts are taken in claim order, so the same seed sends the same prompts in the same order."""
        if deadline is not None and time.perf_counter() >= deadline:
            return None
        i = next(counter)
        if stop.requests is not None and i >= stop.requests:
            return None
        return i, next(samples)

    async def send(claimed: tuple[int, SampleRequest], scheduled: float | None) -> None:
        i, sample = claimed
        backend = backends[i % len(backends)]
        outcome = await backend.generate(sample, params)
        item = Sent(sample, backend, scheduled, outcome)
        sent.append(item)
        if on_done is not None:
            on_done(item)

    if load.concurrency is not None:

        async def client() -> None:
            task = asyncio.current_task()
            while (claimed := claim()) is not None:
                await send(claimed, None)
                # A client library below may swallow the CancelledError of a Ctrl-C (seen: a run that went on
                # sending after one); the request to cancel is still recorded on the task, so honour it here.
                if task is not None and getattr(task, "cancelling", lambda: 0)():
                    raise asyncio.CancelledError

        await asyncio.gather(*(client() for _ in range(load.concurrency)))
        return t0, sent

    limit = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None

    async def capped(claimed: tuple[int, SampleRequest], scheduled: float) -> None:
        if limit is None:
            await send(claimed, scheduled)
            return
        async with limit:
            await send(claimed, scheduled)

    tasks: list[asyncio.Task[None]] = []
    for offset in iter_arrival_offsets(load.rate or math.inf, load.burstiness, seed):
        scheduled = t0 + offset
        if deadline is not None and scheduled >= deadline:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        claimed = claim()
        if claimed is None:
            break
        tasks.append(asyncio.create_task(capped(claimed, scheduled)))
    await asyncio.gather(*tasks)
    return t0, sent


def make_record(item: Sent, t0: float, tokenizer: Any | None, count: str = "auto") -> RequestRecord:
    """Normalise one outcome: times relative to `t0`, output tokens counted (source recorded), no text.

    `count`: `auto` prefers the server's `num_output_tokens`, then the tokenizer, then the number of
    text-bearing responses; the other modes force one source (falling back to `responses`).
    """
    out, sample = item.outcome, item.sample
    source, n_out = "responses", len(out.chunk_times)
    if count in ("auto", "server") and out.server_output_tokens is not None:
        source, n_out = item.backend.count_label, out.server_output_tokens
    elif count in ("auto", "tokenizer") and tokenizer is not None and out.chunk_times:
        source, n_out = "tokenizer", count_output_tokens(tokenizer, out.text)
    n_in = out.server_input_tokens if out.server_input_tokens is not None else sample.prompt_tokens
    rel = [t - t0 for t in out.chunk_times]
    success = out.success and bool(rel)
    error_code = out.error_code if not out.success else (None if rel else "NO_OUTPUT")
    return RequestRecord(
        request_id=f"{sample.index}@{out.start - t0:.6f}",
        sample_index=sample.index,
        task=sample.task,
        backend=item.backend.kind,
        endpoint=item.backend.endpoint,
        max_tokens=sample.max_tokens,
        start_s=out.start - t0,
        end_s=out.end - t0,
        scheduled_s=None if item.scheduled is None else item.scheduled - t0,
        first_token_s=rel[0] if rel else None,
        last_token_s=rel[-1] if rel else None,
        chunk_offsets_s=[t - out.start for t in out.chunk_times],
        num_responses=out.num_responses,
        output_chars=len(out.text),
        input_tokens=n_in,
        output_tokens=n_out if success else None,
        token_source=source if success else None,
        success=success,
        error_code=error_code,
        error=out.error if not out.success else (None if rel else "no text in any response"),
    )


class RunInterrupted(Exception):  # noqa: N818 - it is not an error: the run was stopped (Ctrl-C)
    """A measured run was cancelled; `result` holds the requests that had finished."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(f"{result.label} interrupted after {len(result.records)} requests")
        self.result = result


async def _scrape_all(urls: Sequence[str]) -> dict[str, MetricsSnapshot | str]:
    """Snapshot per URL, or the error text (a missing metrics port must not stop a benchmark)."""
    snaps: dict[str, MetricsSnapshot | str] = {}
    for url in urls:
        try:
            snaps[url] = await asyncio.to_thread(scrape, url)
        except Exception as exc:  # noqa: BLE001 - reported in the summary instead
            snaps[url] = f"{type(exc).__name__}: {exc}"
    return snaps


def _server_section(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for url in after:
        b, a = before.get(url), after[url]
        if isinstance(b, MetricsSnapshot) and isinstance(a, MetricsSnapshot):
            section[url] = {"models": triton_model_stats(b, a), "changed": diff_snapshots(b, a)}
        else:
            section[url] = {"error": b if isinstance(b, str) else a}
    return section


@dataclass
class SessionConfig:
    """Everything one `mentallama-bench` invocation measures (loads x backends)."""

    loads: list[LoadSpec]
    stop: StopSpec
    params: SamplingParams = field(default_factory=SamplingParams)
    slo: SLO = field(default_factory=SLO)
    warmup: int = 2
    seed: int = 0
    count_tokens: str = "auto"
    metrics_urls: list[str] = field(default_factory=list)
    ready_timeout_s: float = 60.0
    progress: bool = True


async def run_load(
    backends: Sequence[Backend],
    dataset: BenchmarkDataset,
    load: LoadSpec,
    config: SessionConfig,
    tokenizer: Any | None = None,
) -> RunResult:
    """Warm-up (excluded), scrape, measured run, scrape; returns records and summary."""
    label = f"{backends[0].kind}-{load.label}"
    if config.warmup > 0:
        warm_load = LoadSpec(concurrency=min(config.warmup, load.in_flight_limit or config.warmup))
        await drive(
            backends,
            dataset.iter_samples(config.seed + _WARMUP_SEED_OFFSET),
            config.params,
            warm_load,
            StopSpec(requests=config.warmup),
        )
    metrics_urls = config.metrics_urls if backends[0].uses_server else []
    before = await _scrape_all(metrics_urls)
    bar = _progress(config, label)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    state = DriveState()
    interrupted = False
    try:
        await drive(
            backends,
            dataset.iter_samples(config.seed),
            config.params,
            load,
            config.stop,
            config.seed,
            on_done=(lambda _item: bar.update(1)) if bar is not None else None,
            state=state,
        )
    except asyncio.CancelledError:  # Ctrl-C: keep the requests that finished (in-flight ones are dropped)
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    after = {} if interrupted else await _scrape_all(metrics_urls)
    records = sorted(
        (make_record(s, state.t0, tokenizer, config.count_tokens) for s in state.sent), key=lambda r: r.start_s
    )
    summary = summarize(records, config.slo)
    summary["run"] = {
        "label": label,
        "started_at": started,
        "backend": backends[0].kind,
        "endpoints": [b.endpoint for b in backends],
        "model": backends[0].model,
        "load": asdict(load) | {"label": load.label},
        "stop": asdict(config.stop),
        "warmup_requests": config.warmup,
        "seed": config.seed,
        "dataset": dataset.describe(),
        "sampling": asdict(config.params),
        "token_counting": config.count_tokens,
        "tokenizer": tokenizer is not None,
    }
    if interrupted:
        summary["run"]["interrupted"] = True
    summary["server"] = _server_section(before, after)
    result = RunResult(label, records, summary)
    if interrupted:
        raise RunInterrupted(result)
    return result


def _progress(config: SessionConfig, label: str) -> Any:
    """A tqdm bar on stderr, only when stderr is a terminal (no carriage-return lines in logs)."""
    if not config.progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=config.stop.requests, desc=label, unit="req", leave=False, dynamic_ncols=True)


async def run_session(
    backend_groups: Sequence[Sequence[Backend]],
    dataset: BenchmarkDataset,
    config: SessionConfig,
    output: Path | None,
    tokenizer: Any | None = None,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Every load against every backend group (one group per backend kind, several endpoints each).

    Each run is written as soon as it ends, so an interrupted sweep keeps what it measured; the
    session report (tables, plots, Markdown) is written at the end. When the session is cancelled
    (Ctrl-C), the requests of the run in progress that had finished are written as that run (marked
    `interrupted` in its summary), the session report covers what was measured, and the
    cancellation goes on to the caller.
    """
    results: list[RunResult] = []

    def keep(result: RunResult) -> None:
        if output is not None:
            result.folder = report.write_run(output / result.label, result.records, result.summary)
        results.append(result)
        if on_result is not None:
            on_result(result)

    try:
        async with contextlib.AsyncExitStack() as stack:
            for group in backend_groups:
                for backend in group:
                    await stack.enter_async_context(backend)
                    await backend.wait_ready(config.ready_timeout_s)
            # Load-major order: each load runs on every backend back to back, so slow drift of the machine
            # (other work, thermal) affects the compared runs alike.
            for load in config.loads:
                for group in backend_groups:
                    try:
                        result = await run_load(group, dataset, load, config, tokenizer)
                    except RunInterrupted as stopped:
                        keep(stopped.result)
                        raise asyncio.CancelledError from None
                    keep(result)
    except asyncio.CancelledError:
        if output is not None and results:
            report.write_session(output, results)
        raise
    if output is not None:
        report.write_session(output, results)
    return results
