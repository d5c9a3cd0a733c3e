"""The serving studies as `mentallama-bench` commands: each declares its flags and hands them to its module's
`run_study`. The modules are imported only when their command runs, as several need the server or build extras
(`mentallama-bench --help` must not)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["STUDIES"]


def _run(module: str, **flags: Any) -> None:
    raise typer.Exit(importlib.import_module(f"mentallama_bench.{module}").run_study(**flags) or 0)


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{flag} takes comma-separated integers, got {text!r}") from None


def soak(
    endpoint: Annotated[str, typer.Option(help="gRPC host:port")] = "127.0.0.1:8001",
    metrics: Annotated[str | None, typer.Option(help="Prometheus URL of the server (engine gauges at the end)")] = None,
    pid: Annotated[int | None, typer.Option(help="tritonserver pid (default: the one on the gRPC port)")] = None,
    minutes: Annotated[float, typer.Option(help="minutes of traffic after the warm-up")] = 10.0,
    concurrency: Annotated[int, typer.Option(help="workers sending at once")] = 32,
    warmup_s: Annotated[float, typer.Option(help="seconds of traffic before the first RSS")] = 30.0,
    max_tokens: Annotated[int, typer.Option(help="largest answer of a normal request")] = 64,
    mix: Annotated[str, typer.Option(help="weights of the request kinds")] = "normal=0.7,cancel=0.15,bad=0.15",
    model: Annotated[str, typer.Option(help="served model: mentallama (BLS front) or ensemble")] = "mentallama",
    seed: Annotated[int, typer.Option(help="seed of the request mix")] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="write the report (and every record) here", show_default=False)
    ] = None,
) -> None:
    """Minutes of mixed SDK traffic against a live server.

    A seeded mix of answers, streams left early and requests the server must refuse; reports unexpected
    outcomes, p99 latency per minute, the engine's gauges once traffic stops and the RSS growth of every server
    process. Exit code 1 unless there is no unexpected outcome and no process grew by 10 % (docs/RELIABILITY.md).

    \b
        mentallama-bench soak --endpoint 127.0.0.1:8001 --metrics http://127.0.0.1:8002/metrics \\
            --minutes 10 --concurrency 32 --json soak.json
    """
    from mentallama_bench.soak import parse_mix

    try:
        weights = parse_mix(mix)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--mix") from None
    _run("soak", endpoint=endpoint, metrics=metrics, pid=pid, minutes=minutes, concurrency=concurrency,
         warmup_s=warmup_s, max_tokens=max_tokens, mix=weights, model=model, seed=seed,
         json_path=json_path)  # fmt: skip


CheckpointOpt = Annotated[
    str, typer.Option("--checkpoint", "--model", help="tiny, bench or a checkpoint folder (--model: its old name)")
]


def cpu_engine(
    checkpoint: CheckpointOpt = "bench",
    imhi_dir: Annotated[
        Path, typer.Option(help="a clone of github.com/SteveKGYang/MentalLLaMA (its test_data/test_instruction/ is "
                           "read) or a folder of IMHI test CSVs")  # fmt: skip
    ] = Path("MentalLLaMA"),
    concurrency: Annotated[str, typer.Option(help="comma-separated concurrencies")] = "1,4,16,32",
    output_len: Annotated[int, typer.Option(help="new tokens per query")] = 64,
    weight_formats: Annotated[str, typer.Option(help="comma-separated engine weight formats")] = "int8,fp16",
    skip_authors: Annotated[bool, typer.Option("--skip-authors", help="leave out the transformers baseline")] = False,
    authors_dtype: Annotated[str, typer.Option(help="auto (the checkpoint's), float32 or bfloat16")] = "auto",
    footprint: Annotated[
        bool, typer.Option("--footprint", help="also measure the tiny server's start and RSS")
    ] = False,
    output: Annotated[Path, typer.Option(help="report (JSON)")] = Path("results/cpu_engine_bench.json"),
    llama_server: Annotated[
        Path | None, typer.Option(help="llama.cpp's llama-server binary (default: on PATH when --gguf is given)",
                                  show_default=False),  # fmt: skip
    ] = None,
    gguf: Annotated[
        Path | None, typer.Option(help="the checkpoint converted to GGUF Q8_0: also measure llama-server on it",
                                  show_default=False),  # fmt: skip
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="runs per side and concurrency, the order flipping each "
                                        "time, pooled (each round's ratio is printed too)")] = 1,  # fmt: skip
    warmup: Annotated[bool, typer.Option(help="a load per side at the highest concurrency first, not "
                                         "measured (a fresh engine's first load is slower)")] = True,  # fmt: skip
    max_steal: Annotated[float, typer.Option(min=0, help="run again (at most twice) a run during which the "
                                             "hypervisor stole more than this % of the CPUs; 100: never")] = 5.0,
    engine_option: Annotated[list[str] | None, typer.Option(
        help="a setting both sides run with, KEY=VALUE as mentallama-serve names it (stream_hold_ms, release_gil, "
             "...); repeatable", show_default=False)] = None,  # fmt: skip
) -> None:
    """Served vs in-process OpenVINO engine vs generate() (vs llama.cpp).

    Output tokens/s on IMHI queries, in one run: the CPU profile served by Triton, the same OpenVINO engine
    in-process, the MentaLLaMA authors' transformers generate() loop (`make bench`), and with --gguf llama.cpp's
    llama-server on the same checkpoint in GGUF Q8_0. The report names the CPU and the load average.

    \b
        mentallama-bench cpu-engine --checkpoint bench --imhi-dir MentalLLaMA --weight-formats int8,fp16
    """
    _ints(concurrency, "--concurrency")
    options = _engine_options(engine_option or [])
    _run("cpu_engine_bench", checkpoint=checkpoint, imhi_dir=imhi_dir, concurrency=concurrency,
         output_len=output_len, weight_formats=weight_formats, skip_authors=skip_authors, authors_dtype=authors_dtype,
         with_footprint=footprint, output=output, llama_server=llama_server, gguf=gguf, rounds=rounds,
         warmup=warmup, max_steal=max_steal, engine_options=options)  # fmt: skip


def _engine_options(pairs: list[str]) -> dict[str, str]:
    """`--engine-option KEY=VALUE`s, checked against the settings the engine takes before anything runs."""
    from mentallama_bench.engine_backend import engine_options, engine_settings

    try:
        options = engine_options(pairs)
    except ValueError as exc:  # a flag without `=`
        raise typer.BadParameter(str(exc)) from None
    if "weight_format" in options:
        raise typer.BadParameter("--engine-option weight_format: give --weight-formats instead")
    try:
        engine_settings(options)
    except ValueError as exc:  # an unknown key, or a value of the wrong type
        raise typer.BadParameter(f"--engine-option: {exc}") from None
    return options


def serving_overhead(
    model: CheckpointOpt = "bench",
    concurrency: Annotated[str, typer.Option(help="comma-separated concurrencies")] = "1,4,16",
    requests: Annotated[int, typer.Option(help="measured requests per concurrency")] = 32,
    input_len: Annotated[int, typer.Option(help="prompt tokens")] = 128,
    output_len: Annotated[int, typer.Option(help="forced output tokens")] = 128,
    output: Annotated[Path, typer.Option(help="results folder")] = Path("results/serving_overhead"),
) -> None:
    """Served vs in-process engine on a CPU server.

    Starts the CPU profile on free loopback ports and runs the load benchmark with --compare-engine: the same
    synthetic load against the served model and against the engine built with the server's own settings.

    \b
        mentallama-bench serving-overhead --checkpoint bench --concurrency 1,4,16 --requests 32 --output-len 128
    """
    _ints(concurrency, "--concurrency")
    _run("serving_overhead", model=model, concurrency=concurrency, requests=requests, input_len=input_len,
         output_len=output_len, output=output)  # fmt: skip


def front_door(
    model: CheckpointOpt = "bench",
    data: Annotated[
        Path | None,
        typer.Option(help="IMHI data folder (test_instruction/*.csv); synthetic without", show_default=False),
    ] = None,
    concurrency: Annotated[str, typer.Option(help="comma-separated concurrencies")] = "1,8,16,32",
    requests: Annotated[int, typer.Option(help="measured requests per run")] = 64,
    max_tokens: Annotated[int, typer.Option(help="forced output tokens per request")] = 64,
    repeats: Annotated[
        int, typer.Option(min=1, max=2, help="2: each load runs direct, door, door, direct (drift cancels); "
                          "1: direct, door")  # fmt: skip
    ] = 2,
    output: Annotated[Path | None, typer.Option(help="results folder (runs and report)", show_default=False)] = None,
    paired_requests: Annotated[
        int, typer.Option(min=0, help="then the TTFT the door adds, paired within one load per concurrency: "
                          "this many prompts, each sent through the door and direct (0: leave out)")  # fmt: skip
    ] = 0,
) -> None:
    """The same load through the front door and direct.

    Starts the CPU profile as mentallama-serve does (tritonserver private, the front door public), runs each load
    on tritonserver's own port and on the front door's, and prints the front door / direct ratio of the pooled
    runs, the CPU they ran on and the front door's own CPU share. Run it on an idle machine.

    \b
        mentallama-bench front-door --checkpoint bench --data IMHI_DIR --concurrency 1,8,16,32 --requests 128
    """
    _ints(concurrency, "--concurrency")
    _run("front_door_overhead", model=model, data=data, concurrency=concurrency, requests=requests,
         max_tokens=max_tokens, repeats=repeats, output=output, paired_requests=paired_requests)  # fmt: skip


def sdk_overhead(
    endpoint: Annotated[
        str | None, typer.Option(help="gRPC host:port of a running server (default: start a tiny one)",
                                 show_default=False)  # fmt: skip
    ] = None,
    model: Annotated[str, typer.Option(help="served model")] = "mentallama",
    concurrency: Annotated[str, typer.Option(help="comma-separated concurrencies")] = "1,16",
    rounds: Annotated[int, typer.Option(help="interleaved rounds of every mode")] = 48,
    per_round: Annotated[int, typer.Option(help="requests per round (at least the concurrency)")] = 1,
    max_tokens: Annotated[int, typer.Option(help="tokens per answer (min_tokens forces it)")] = 32,
    output: Annotated[Path | None, typer.Option(help="write the rows as JSON here", show_default=False)] = None,
) -> None:
    """SDK analyze vs raw tritonclient streams.

    The same ensemble inputs sent by AsyncMentaLLaMAClient.analyze, by the blocking client on a thread pool and
    by raw tritonclient.grpc.aio streams, in interleaved rounds; p50/p90 latency, the p50 ratio to raw (also
    paired round by round) and client CPU per request (goal: SDK p50 at most 5 % above raw).

    \b
        mentallama-bench sdk-overhead                       # starts a tiny CPU server on free ports
        mentallama-bench sdk-overhead --endpoint host:8001  # an already running server
    """
    _run("sdk_overhead", endpoint=endpoint, model=model, concurrency=_ints(concurrency, "--concurrency"),
         rounds=rounds, per_round=per_round, max_tokens=max_tokens, output=output)  # fmt: skip


def label_parsing(
    imhi: Annotated[
        Path, typer.Option(help="a clone of the MentaLLaMA authors' repository (github.com/SteveKGYang/MentalLLaMA: "
                           "its train_data/, test_data/ and human_evaluation/ are read), or a folder with "
                           "train_instruction/, test_instruction/ and expert/")  # fmt: skip
    ],
    seed: Annotated[int, typer.Option(help="seed of the rewritten variants")] = 11,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="also write the figures as JSON", show_default=False)
    ] = None,
) -> None:
    """How often and how fast parse_response gets the label.

    On IMHI answers: explanations alone, the reference answers, rewritten failure styles, and the time to parse
    10,000 answers (benchmarks/mentallama_bench/label_parsing.py says how each figure is made).

    \b
        mentallama-bench label-parsing --imhi MentalLLaMA [--json results/label_parsing.json]
    """
    _run("label_parsing", imhi=imhi, seed=seed, json_path=json_path)


def gpu_smoke(
    trtllm_examples: Annotated[
        Path, typer.Option(envvar="TRTLLM_EXAMPLES_DIR", help="examples/ of the TensorRT-LLM checkout (the "
                           "container's release; its end-to-end client is run too)")  # fmt: skip
    ] = Path("TensorRT-LLM/examples"),
    work_dir: Annotated[
        Path | None, typer.Option(help="folder for everything [default: <cache>/gpu-smoke]", show_default=False)
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="serve this small checkpoint instead of generating tiny", show_default=False)
    ] = None,
    cpu_endpoint: Annotated[
        str | None, typer.Option(help="compare greedy answers with this CPU server of the same checkpoint "
                                 "(HOST:PORT) instead of the recorded ones", show_default=False)  # fmt: skip
    ] = None,
    grpc_port: Annotated[int, typer.Option(help="the smoke server's gRPC port")] = 18701,
    http_port: Annotated[int, typer.Option(help="the smoke server's HTTP port")] = 18700,
    metrics_port: Annotated[int, typer.Option(help="the smoke server's metrics port")] = 18702,
    load_seconds: Annotated[float, typer.Option(help="seconds of load")] = 60.0,
    concurrency: Annotated[int, typer.Option(help="clients of the load run")] = 16,
    ready_timeout: Annotated[float, typer.Option(help="seconds for the server to be ready")] = 1800.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print every step and command; run nothing")] = False,
) -> None:
    """First run on a GPU node: the TensorRT-LLM path end to end.

    Inside the NGC container: versions, a small engine through `mentallama-build engine`, the GPU profile served,
    greedy tokens against the CPU profile's, streaming, TensorRT-LLM's end-to-end client, 60 s of load, GPU memory
    and KV cache; a report (gpu-smoke-report.md/.json in the work folder). Each failure names the step, what it
    expected and what to check (benchmarks/mentallama_bench/gpu_smoke.py).

    \b
        mentallama-bench gpu-smoke --trtllm-examples /opt/TensorRT-LLM/examples [--dry-run]
    """
    _run("gpu_smoke", work_dir=work_dir, trtllm_examples=trtllm_examples, checkpoint=checkpoint,
         cpu_endpoint=cpu_endpoint, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
         load_seconds=load_seconds, concurrency=concurrency, ready_timeout=ready_timeout,
         dry_run=dry_run)  # fmt: skip


# command -> its function; `mentallama-bench --help` lists each with its docstring's first line.
STUDIES: dict[str, Callable[..., None]] = {
    "soak": soak,
    "cpu-engine": cpu_engine,
    "serving-overhead": serving_overhead,
    "front-door": front_door,
    "sdk-overhead": sdk_overhead,
    "label-parsing": label_parsing,
    "gpu-smoke": gpu_smoke,
}
