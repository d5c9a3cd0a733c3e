"""The load benchmark as library code: its flags as data, what they build, and the run with its terminal summary.

`BenchOptions` declares every `mentallama-bench` flag once, on a field (name, default and help, through
`mentallama.cli.options`), so the CLI and the studies that drive a load (`serving_overhead`) fill the
same dataclass. `plan_session` validates it (ValueError / FileNotFoundError, which the CLI turns into usage
errors) into a `SessionPlan`; `run_plan` checks the endpoints, runs the session, prints the summary and
returns the exit code.
"""

from __future__ import annotations

import asyncio
import math
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from tritonclient.grpc import service_pb2_grpc

from mentallama import DEFAULT_MAX_TOKENS
from mentallama.cli.common import START_SERVER_HINT, endpoint_problem
from mentallama.cli.options import flag
from mentallama_bench.backends import BACKENDS, DEFAULT_MODEL, HTTP_KINDS, Backend, make_backend
from mentallama_bench.compare import compare_summaries, format_comparison
from mentallama_bench.datasets import BenchmarkDataset, ImhiDataset, SyntheticDataset, parse_task_mix
from mentallama_bench.metrics import SLO
from mentallama_bench.metrics_discovery import METRICS_FIX, find_metrics_urls
from mentallama_bench.records import RunResult, SamplingParams
from mentallama_bench.report import fixed_width, format_table
from mentallama_bench.runner import COUNT_MODES, LoadSpec, SessionConfig, StopSpec, run_session
from mentallama_bench.tokens import load_tokenizer

__all__ = [
    "DEFAULT_GRPC",
    "BenchOptions",
    "SessionPlan",
    "build_loads",
    "default_http_endpoints",
    "endpoint_problems",
    "engine_backend",
    "parse_list",
    "plan_session",
    "run_plan",
]

DEFAULT_GRPC = "127.0.0.1:8001"
HTTP_PORT = 8000
DEFAULT_REQUESTS = 100  # per run, when neither --requests nor --duration is given


@dataclass(frozen=True)
class BenchOptions:
    """Every flag of the load benchmark, one field each (`mentallama-bench --help` lists them in this order)."""

    endpoint: list[str] | None = flag(
        None, "Triton gRPC HOST:PORT; repeat for several (round-robin)", flags=("--endpoint", "-e")
    )
    backend: str = flag("triton-grpc", f"comma list of {', '.join(BACKENDS)}; several = same load on each")
    http_endpoint: list[str] | None = flag(
        None, "HTTP HOST:PORT for triton-http and openai (default: gRPC hosts, port 8000)"
    )
    model: str = flag(DEFAULT_MODEL, "Triton model: mentallama or ensemble")
    concurrency: str | None = flag(
        None, "closed-loop clients; a comma list sweeps (1,2,4,...)", flags=("--concurrency", "-c")
    )
    request_rate: str | None = flag(None, "open-loop requests/s (comma list sweeps; inf = all at once)")
    burstiness: float = flag(1.0, "gamma shape of arrival gaps: 1 = Poisson, <1 burstier")
    max_concurrency: int | None = flag(None, "cap on requests in flight with --request-rate")
    requests: int | None = flag(
        None, f"measured requests per run (default {DEFAULT_REQUESTS} unless --duration)", flags=("--requests", "-n")
    )
    duration: float | None = flag(None, "stop issuing requests after this many seconds per run")
    warmup: int = flag(2, "warm-up requests before each run (not measured)")
    seed: int = flag(0, "seed for prompt order and arrivals: same seed, same run")
    data: Path | None = flag(
        None, "IMHI data folder (test_instruction/*.csv, column query). Without it: synthetic prompts"
    )
    tasks: str | None = flag(None, "IMHI task mix, e.g. 'DR:2,dreaddit:1' (default: natural mix)")
    max_tokens: int = flag(DEFAULT_MAX_TOKENS, "max_tokens per IMHI request (as `mentallama analyze`)")
    max_input_tokens: int | None = flag(None, "skip IMHI prompts longer than this (needs --tokenizer)")
    input_len: int = flag(128, "synthetic prompt length in tokens (words without --tokenizer)")
    output_len: int = flag(128, "synthetic max_tokens per request")
    force_output_len: bool = flag(False, "send min_tokens = max_tokens so every request generates the same length")
    temperature: float | None = flag(None, "sampling temperature (server default if unset)")
    top_k: int | None = flag(None, "top_k (server default if unset)")
    top_p: float | None = flag(None, "top_p (server default if unset)")
    sampling_seed: int | None = flag(None, "per-request sampling seed sent to the server")
    tokenizer: Path | None = flag(None, "checkpoint folder with the served model's tokenizer")
    count_tokens: str = flag("auto", "output token count source", choices=COUNT_MODES)
    slo: str | None = flag(None, "goodput SLOs in ms, e.g. 'ttft:500,itl:100,e2e:10000'")
    metrics_url: list[str] | None = flag(
        None, "the server's Prometheus URL, repeat for several (default: found on each endpoint's host: its gRPC port "
        "+ 1 as mentallama-serve lays ports out, then 8002)", flags=("--metrics", "--metrics-url"),
    )
    scrape_metrics: bool = flag(True, "scrape server metrics before/after each run",
                                flags=("--scrape-metrics/--no-metrics",))  # fmt: skip
    request_timeout: float = flag(600.0, "seconds before one request is abandoned (DEADLINE_EXCEEDED)")
    ready_timeout: float = flag(60.0, "seconds to wait for the server and model to be ready")
    output: Path | None = flag(None, "results folder; nothing is written without it", flags=("--output", "-o"))
    name: str | None = flag(None, "session folder name under --output (default: a timestamp)")
    progress: bool = flag(True, "live progress bar (only when stderr is a terminal)")
    compare_engine: bool = flag(
        False, "also run each load on the bare OpenVINO engine in-process and print served/engine ratios"
    )
    checkpoint: Path | None = flag(None, "checkpoint folder for --compare-engine (default: --tokenizer)")
    engine_option: list[str] | None = flag(
        None, "engine setting KEY=VALUE as mentallama-serve names it (engine_max_batch_size, ...)"
    )


def parse_list(text: str | None, kind: type[float] | type[int]) -> list:
    """`"1,2,4"` -> [1, 2, 4]; `inf` is allowed for rates."""
    if not text:
        return []
    values = []
    for part in text.split(","):
        part = part.strip()
        if part:
            values.append(math.inf if kind is float and part.lower() == "inf" else kind(part))
    return values


def _host(endpoint: str) -> str:
    address = endpoint.split("://", 1)[-1]
    return address.rsplit(":", 1)[0] if ":" in address else address


def default_http_endpoints(grpc_endpoints: list[str]) -> list[str]:
    """Same hosts as the gRPC endpoints, Triton's default HTTP port."""
    return [f"{_host(e)}:{HTTP_PORT}" for e in grpc_endpoints]




def build_loads(
    concurrency: str | None, rate: str | None, burstiness: float, max_concurrency: int | None
) -> list[LoadSpec]:
    conc, rates = parse_list(concurrency, int), parse_list(rate, float)
    if conc and rates:
        raise ValueError("give --concurrency or --request-rate, not both")
    if rates:
        return [LoadSpec(rate=r, burstiness=burstiness, max_concurrency=max_concurrency) for r in rates]
    return [LoadSpec(concurrency=c) for c in (conc or [1])]


def engine_backend(checkpoint: Path | None, options: list[str], request_timeout: float) -> Backend:
    """The in-process OpenVinoEngine with mentallama-serve's default settings, plus KEY=VALUE overrides."""
    if checkpoint is None:
        raise ValueError("--compare-engine needs --checkpoint (or --tokenizer): the folder the server serves")
    # Imported here: the engine needs the server extra, which a benchmark of a remote server does without.
    from mentallama_bench.engine_backend import EngineBackend, engine_options, engine_settings

    return EngineBackend(checkpoint, engine_settings(engine_options(options)), request_timeout)


def endpoint_problems(kinds: list[str], grpc_endpoints: list[str], http_endpoints: list[str], model: str,
                      timeout: float = 5.0) -> list[str]:  # fmt: skip
    """One line per endpoint that cannot serve `model` (no server there, not ready, unknown model)."""
    problems = []
    if any(k.startswith("triton-grpc") for k in kinds):
        for endpoint in grpc_endpoints:
            with grpc.insecure_channel(endpoint.split("://", 1)[-1]) as channel:
                problem = endpoint_problem(service_pb2_grpc.GRPCInferenceServiceStub(channel), endpoint, model, timeout)
            if problem:
                problems.append(problem)
    if any(kind in HTTP_KINDS for kind in kinds):
        for endpoint in http_endpoints:
            address = endpoint.split("://", 1)[-1].split("/", 1)[0]
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host or "127.0.0.1", int(port or 80)), timeout=timeout).close()
            except (OSError, ValueError) as exc:
                problems.append(f"no server at {endpoint} (HTTP: {exc}); {START_SERVER_HINT}")
    return problems


@dataclass(frozen=True)
class SessionPlan:
    """A validated session: what `run_session` needs, plus the endpoints to check before it starts."""

    kinds: list[str]
    grpc_endpoints: list[str]
    http_endpoints: list[str]
    model: str
    groups: list[list[Backend]]
    dataset: BenchmarkDataset
    config: SessionConfig
    tokenizer: Any | None
    folder: Path | None
    find_metrics: bool = False
    """No --metrics given: look for the server's metrics page on the endpoints' hosts before the runs."""

    def problems(self) -> list[str]:
        return endpoint_problems(self.kinds, self.grpc_endpoints, self.http_endpoints, self.model)

    def locate_metrics(self) -> list[str]:
        """With `find_metrics`, the metrics URLs found (set on the config); returns the warnings."""
        if not self.find_metrics:
            return []
        grpc_used = self.grpc_endpoints if any(k not in HTTP_KINDS for k in self.kinds) else []
        http_used = self.http_endpoints if any(k in HTTP_KINDS for k in self.kinds) else []
        self.config.metrics_urls, warnings = find_metrics_urls(grpc_used, http_used, self.model)
        return warnings

    async def run(self, on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
        return await run_session(self.groups, self.dataset, self.config, self.folder, self.tokenizer, on_result)


def plan_session(o: BenchOptions) -> SessionPlan:
    """Check the flags together and build the session; ValueError / FileNotFoundError name the bad flag."""
    if o.count_tokens not in COUNT_MODES:
        raise ValueError(f"--count-tokens must be one of {', '.join(COUNT_MODES)}")
    loads = build_loads(o.concurrency, o.request_rate, o.burstiness, o.max_concurrency)
    kinds = [k.strip() for k in o.backend.split(",") if k.strip()]
    grpc_endpoints = o.endpoint or [DEFAULT_GRPC]
    http_endpoints = o.http_endpoint or default_http_endpoints(grpc_endpoints)
    groups = [
        [make_backend(kind, a, o.model, o.request_timeout)
         for a in (http_endpoints if kind in HTTP_KINDS else grpc_endpoints)]
        for kind in kinds
    ]  # fmt: skip
    if o.compare_engine:
        groups.append([engine_backend(o.checkpoint or o.tokenizer, o.engine_option or [], o.request_timeout)])
    tok = load_tokenizer(o.tokenizer) if o.tokenizer else None
    dataset: BenchmarkDataset
    if o.data is not None:
        dataset = ImhiDataset(o.data, o.max_tokens, parse_task_mix(o.tasks), tok, o.max_input_tokens)
    else:
        dataset = SyntheticDataset(o.input_len, o.output_len, tok)
    config = SessionConfig(
        loads=loads,
        stop=StopSpec(requests=o.requests if o.requests or o.duration else DEFAULT_REQUESTS, duration_s=o.duration),
        params=SamplingParams(o.force_output_len, o.temperature, o.top_k, o.top_p, o.sampling_seed),
        slo=SLO.parse(o.slo),
        warmup=o.warmup,
        seed=o.seed,
        count_tokens=o.count_tokens,
        metrics_urls=list(o.metrics_url or []) if o.scrape_metrics else [],
        ready_timeout_s=o.ready_timeout,
        progress=o.progress,
    )
    folder = None if o.output is None else o.output / (o.name or datetime.now().strftime("%Y%m%d-%H%M%S"))
    return SessionPlan(kinds, grpc_endpoints, http_endpoints, o.model, groups, dataset, config, tok, folder,
                       find_metrics=o.scrape_metrics and not o.metrics_url and bool(kinds))  # fmt: skip


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def run_plan(plan: SessionPlan, out: Callable[[str], None] = print, err: Callable[[str], None] = _stderr) -> int:
    """Check the endpoints, run the session, print one line per run and then the summary. Exit code: 0; 1 when
    an endpoint cannot serve the model; 2 when a backend was not ready in time; 130 on Ctrl-C (the finished
    runs and records are kept)."""
    # A missing server or model is one line now, not "not ready after 60 s" from every backend later.
    problems = plan.problems()
    if problems:
        err("error: " + "; ".join(problems))
        return 1
    for warning in plan.locate_metrics():
        err(f"warning: {warning}")
    if plan.find_metrics and plan.config.metrics_urls:
        err(f"server metrics: {', '.join(plan.config.metrics_urls)} (found on the endpoint's host; --metrics URL to "
            "name another)")  # fmt: skip
    finished: list[RunResult] = []
    unreadable: set[str] = set()

    def keep(result: RunResult) -> None:
        finished.append(result)
        cut = " (interrupted)" if result.interrupted else ""
        counts = result.summary["requests"]
        out(f"{result.label}: {counts['completed']} ok, {counts['failed']} failed{cut}")
        for url, section in result.summary.get("server", {}).items():
            if "error" in section and url not in unreadable:  # said once per URL, not once per run
                unreadable.add(url)
                err(f"warning: could not read the server metrics at {url} ({section['error']}); runs without them "
                    f"have no server-side counters; {METRICS_FIX}")  # fmt: skip

    try:
        results = asyncio.run(plan.run(on_result=keep))
    except TimeoutError as exc:
        err(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        records = sum(len(r.records) for r in finished)
        where = (
            f"kept in {plan.folder} (the cut run is marked interrupted)" if plan.folder else "not kept (no --output)"
        )
        err(f"interrupted: {len(finished)} run(s), {records} finished request records, {where}")
        return 130
    out(_summary_text(results, plan.folder))
    if any(r.summary["requests"]["failed"] for r in results):
        err("some requests failed: see the errors column of summary.json")
    return 0


def _summary_text(results: list[RunResult], folder: Path | None) -> str:
    """The table of every run, the token-count sources, the served/engine ratios and the report's path."""
    sources = sorted({s for r in results for s in r.summary["token_count_source"]})
    lines = ["", format_table([r.summary for r in results]),
             f"\nlatencies in ms; output tokens counted by: {', '.join(sources) or '-'}"]  # fmt: skip
    comparison = compare_summaries([r.summary for r in results])
    if comparison:
        table = format_comparison(comparison)
        lines += ["\nserved / bare engine (latency > 1x and throughput < 1x = cost of serving):",
                  fixed_width(table[0], table[1:])]  # fmt: skip
    if folder is not None:
        lines.append(f"report: {folder / 'report.md'}")
    return "\n".join(lines)
