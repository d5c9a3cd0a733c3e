"""`mentallama-bench`: load-test a running MentaLLaMA Triton server (wiring only).

    mentallama-bench --endpoint 127.0.0.1:8001 --concurrency 1,4,16 --requests 200 --output results/

Each load is one run; one folder per run plus a session report land under OUTPUT/NAME/.
"""

from __future__ import annotations

import asyncio
import math
import socket
from datetime import datetime
from pathlib import Path
from typing import Annotated

import grpc
import typer
from tritonclient.grpc import service_pb2_grpc

from mentallama import __version__
from mentallama._constants import DEFAULT_MAX_TOKENS
from mentallama.cli._cli_utils import HELP_OPTIONS, START_SERVER_HINT, endpoint_problem, plain_help, version_option
from mentallama_bench.backends import BACKENDS, DEFAULT_MODEL, Backend, make_backend
from mentallama_bench.compare import compare_summaries, format_comparison
from mentallama_bench.datasets import BenchmarkDataset, ImhiDataset, SyntheticDataset, parse_task_mix
from mentallama_bench.metrics import SLO
from mentallama_bench.records import SamplingParams
from mentallama_bench.report import fixed_width, format_table
from mentallama_bench.runner import COUNT_MODES, LoadSpec, RunResult, SessionConfig, StopSpec, run_session
from mentallama_bench.tokens import load_tokenizer

__all__ = ["app", "main"]

plain_help()
app = typer.Typer(
    add_completion=False,
    help=__doc__,
    no_args_is_help=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,
)

DEFAULT_GRPC = "127.0.0.1:8001"
HTTP_PORT, METRICS_PORT = 8000, 8002


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


def default_metrics_urls(endpoints: list[str]) -> list[str]:
    """One Triton metrics URL per distinct host, Triton's default metrics port."""
    hosts = dict.fromkeys(_host(e) for e in endpoints)
    return [f"http://{h}:{METRICS_PORT}/metrics" for h in hosts]


def build_loads(
    concurrency: str | None, rate: str | None, burstiness: float, max_concurrency: int | None
) -> list[LoadSpec]:
    conc, rates = parse_list(concurrency, int), parse_list(rate, float)
    if conc and rates:
        raise typer.BadParameter("give --concurrency or --request-rate, not both")
    if rates:
        return [LoadSpec(rate=r, burstiness=burstiness, max_concurrency=max_concurrency) for r in rates]
    return [LoadSpec(concurrency=c) for c in (conc or [1])]


def _engine_backend(checkpoint: Path | None, options: list[str], request_timeout: float) -> Backend:
    """The in-process OpenVinoEngine with mentallama-serve's default settings, plus KEY=VALUE overrides."""
    if checkpoint is None:
        raise ValueError("--compare-engine needs --checkpoint (or --tokenizer): the folder the server serves")
    from mentallama_bench.engine_backend import EngineBackend, engine_settings

    pairs = dict(o.split("=", 1) for o in options if "=" in o)
    if len(pairs) != len(options):
        raise ValueError("--engine-option takes KEY=VALUE")
    return EngineBackend(checkpoint, engine_settings(pairs), request_timeout)


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
    if "triton-http" in kinds:
        for endpoint in http_endpoints:
            address = endpoint.split("://", 1)[-1].split("/", 1)[0]
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host or "127.0.0.1", int(port or 80)), timeout=timeout).close()
            except (OSError, ValueError) as exc:
                problems.append(f"no server at {endpoint} (HTTP: {exc}); {START_SERVER_HINT}")
    return problems


@app.command()
def bench(
    endpoint: Annotated[
        list[str] | None,
        typer.Option("--endpoint", "-e", help="Triton gRPC HOST:PORT; repeat for several (round-robin)"),
    ] = None,
    backend: Annotated[
        str, typer.Option(help=f"comma list of {', '.join(BACKENDS)}; several = same load on each")
    ] = "triton-grpc",
    http_endpoint: Annotated[
        list[str] | None,
        typer.Option(help="Triton HTTP HOST:PORT for triton-http (default: gRPC hosts, port 8000)"),
    ] = None,
    model: Annotated[str, typer.Option(help="Triton model: mentallama or ensemble")] = DEFAULT_MODEL,
    concurrency: Annotated[
        str | None,
        typer.Option("--concurrency", "-c", help="closed-loop clients; a comma list sweeps (1,2,4,...)"),
    ] = None,
    request_rate: Annotated[
        str | None, typer.Option(help="open-loop requests/s (comma list sweeps; inf = all at once)")
    ] = None,
    burstiness: Annotated[
        float, typer.Option(help="gamma shape of arrival gaps: 1 = Poisson, <1 burstier")
    ] = 1.0,
    max_concurrency: Annotated[
        int | None, typer.Option(help="cap on requests in flight with --request-rate")
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option("--requests", "-n", help="measured requests per run (default 100 unless --duration)"),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="stop issuing requests after this many seconds per run")
    ] = None,
    warmup: Annotated[int, typer.Option(help="warm-up requests before each run (not measured)")] = 2,
    seed: Annotated[int, typer.Option(help="seed for prompt order and arrivals: same seed, same run")] = 0,
    data: Annotated[
        Path | None,
        typer.Option(
            help="IMHI data folder (test_instruction/*.csv, column query). Without it: synthetic prompts"
        ),
    ] = None,
    tasks: Annotated[
        str | None, typer.Option(help="IMHI task mix, e.g. 'DR:2,dreaddit:1' (default: natural mix)")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="max_tokens per IMHI request (as `mentallama analyze`)")] = (
        DEFAULT_MAX_TOKENS
    ),
    max_input_tokens: Annotated[
        int | None, typer.Option(help="skip IMHI prompts longer than this (needs --tokenizer)")
    ] = None,
    input_len: Annotated[
        int, typer.Option(help="synthetic prompt length in tokens (words without --tokenizer)")
    ] = 128,
    output_len: Annotated[int, typer.Option(help="synthetic max_tokens per request")] = 128,
    force_output_len: Annotated[
        bool, typer.Option(help="send min_tokens = max_tokens so every request generates the same length")
    ] = False,
    temperature: Annotated[
        float | None, typer.Option(help="sampling temperature (server default if unset)")
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="top_k (server default if unset)")] = None,
    top_p: Annotated[float | None, typer.Option(help="top_p (server default if unset)")] = None,
    sampling_seed: Annotated[
        int | None, typer.Option(help="per-request sampling seed sent to the server")
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option(help="checkpoint folder with the served model's tokenizer")
    ] = None,
    count_tokens: Annotated[
        str, typer.Option(help=f"output token count source: {', '.join(COUNT_MODES)}")
    ] = "auto",
    slo: Annotated[
        str | None, typer.Option(help="goodput SLOs in ms, e.g. 'ttft:500,itl:100,e2e:10000'")
    ] = None,
    metrics_url: Annotated[
        list[str] | None, typer.Option(help="Prometheus URL to scrape (default http://HOST:8002/metrics)")
    ] = None,
    metrics: Annotated[bool, typer.Option(help="scrape server metrics before/after each run")] = True,
    request_timeout: Annotated[
        float, typer.Option(help="seconds before one request is abandoned (DEADLINE_EXCEEDED)")
    ] = 600.0,
    ready_timeout: Annotated[
        float, typer.Option(help="seconds to wait for the server and model to be ready")
    ] = 60.0,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="results folder; nothing is written without it")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="session folder name under --output (default: a timestamp)")
    ] = None,
    progress: Annotated[bool, typer.Option(help="live progress bar (only when stderr is a terminal)")] = True,
    compare_engine: Annotated[
        bool,
        typer.Option(
            help="also run each load on the bare OpenVINO engine in-process and print served/engine ratios"
        ),
    ] = False,
    checkpoint: Annotated[
        Path | None, typer.Option(help="checkpoint folder for --compare-engine (default: --tokenizer)")
    ] = None,
    version: Annotated[bool, version_option("mentallama-bench", __version__)] = False,
    engine_option: Annotated[
        list[str] | None,
        typer.Option(
            help="engine setting KEY=VALUE as mentallama-serve names it (engine_max_batch_size, ...)"
        ),
    ] = None,
) -> None:
    """Run one load or a sweep and report TTFT, ITL, E2E latency, throughput and goodput."""
    if count_tokens not in COUNT_MODES:
        raise typer.BadParameter(f"--count-tokens must be one of {', '.join(COUNT_MODES)}")
    kinds = [k.strip() for k in backend.split(",") if k.strip()]
    grpc_endpoints = endpoint or [DEFAULT_GRPC]
    http_endpoints = http_endpoint or default_http_endpoints(grpc_endpoints)

    def group(kind: str) -> list[Backend]:
        addresses = http_endpoints if kind == "triton-http" else grpc_endpoints
        return [make_backend(kind, a, model, request_timeout) for a in addresses]

    try:
        groups = [group(k) for k in kinds]
        if compare_engine:
            groups.append([_engine_backend(checkpoint or tokenizer, engine_option or [], request_timeout)])
        loads = build_loads(concurrency, request_rate, burstiness, max_concurrency)
        stop = StopSpec(requests=requests if requests or duration else 100, duration_s=duration)
        tok = load_tokenizer(tokenizer) if tokenizer else None
        dataset: BenchmarkDataset
        if data is not None:
            dataset = ImhiDataset(data, max_tokens, parse_task_mix(tasks), tok, max_input_tokens)
        else:
            dataset = SyntheticDataset(input_len, output_len, tok)
        config = SessionConfig(
            loads=loads,
            stop=stop,
            params=SamplingParams(force_output_len, temperature, top_k, top_p, sampling_seed),
            slo=SLO.parse(slo),
            warmup=warmup,
            seed=seed,
            count_tokens=count_tokens,
            metrics_urls=(metrics_url or default_metrics_urls(grpc_endpoints)) if metrics else [],
            ready_timeout_s=ready_timeout,
            progress=progress,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    # A missing server or model is one line now, not "not ready after 60 s" from every backend later.
    problems = endpoint_problems(kinds, grpc_endpoints, http_endpoints, model)
    if problems:
        typer.echo("error: " + "; ".join(problems), err=True)
        raise typer.Exit(1)

    folder = None
    if output is not None:
        folder = output / (name or datetime.now().strftime("%Y%m%d-%H%M%S"))

    def show(result: RunResult) -> None:
        counts = result.summary["requests"]
        cut = " (interrupted)" if result.interrupted else ""
        typer.echo(f"{result.label}: {counts['completed']} ok, {counts['failed']} failed{cut}")

    finished: list[RunResult] = []

    def keep(result: RunResult) -> None:
        finished.append(result)
        show(result)

    try:
        results = asyncio.run(run_session(groups, dataset, config, folder, tok, on_result=keep))
    except TimeoutError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        records = sum(len(r.records) for r in finished)
        where = f"kept in {folder} (the cut run is marked interrupted)" if folder else "not kept (no --output)"
        typer.echo(f"interrupted: {len(finished)} run(s), {records} finished request records, {where}", err=True)
        raise typer.Exit(130) from None
    typer.echo("")
    typer.echo(format_table([r.summary for r in results]))
    sources = sorted({s for r in results for s in r.summary["token_count_source"]})
    typer.echo(f"\nlatencies in ms; output tokens counted by: {', '.join(sources) or '-'}")
    comparison = compare_summaries([r.summary for r in results])
    if comparison:
        table = format_comparison(comparison)
        typer.echo("\nserved / bare engine (latency > 1x and throughput < 1x = cost of serving):")
        typer.echo(fixed_width(table[0], table[1:]))
    if folder is not None:
        typer.echo(f"report: {folder / 'report.md'}")
    if any(r.summary["requests"]["failed"] for r in results):
        typer.echo("some requests failed: see the errors column of summary.json", err=True)


def main() -> None:
    """Console script entry point."""
    app()


if __name__ == "__main__":
    main()
