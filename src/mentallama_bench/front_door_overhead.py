"""Cost of the front door: the same load through the front door and straight to tritonserver, in one run.

Starts the CPU profile as `mentallama-serve` does (tritonserver on private loopback ports, the front door on the
public ones), then runs each load twice back to back: on tritonserver's own gRPC port (`triton-direct`) and on
the front door's (`triton-grpc`), and prints front door / direct ratios of throughput and latency measured in
this one run, with the CPU they ran on. Run it on an idle machine.

    mentallama-bench front-door --model bench --data IMHI_DIR --concurrency 1,8,16,32 --requests 64
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from mentallama_bench.backends import make_backend
from mentallama_bench.compare import compare_summaries, format_comparison
from mentallama_bench.report import fixed_width
from mentallama_bench.runner import RunResult
from mentallama_bench.session import BenchOptions, plan_session

__all__ = ["cpu_name", "main", "server_behind_front_door"]
DIRECT = "triton-direct"


def cpu_name() -> str:
    """The CPU model and the vector extensions that decide its speed (AVX-512, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    extensions = [label for label, flag in (("AVX-512", "avx512f"), ("AMX", "amx_bf16")) if flag in flags]
    cores = text.count("processor\t:")
    return f"{name}, {cores} cores" + (f", {' + '.join(extensions)}" if extensions else "")


@contextmanager
def server_behind_front_door(model: str) -> Iterator[tuple[str, str, str, Path, int]]:
    """A CPU server of `model` behind the front door, on free loopback ports: yields the front door's gRPC
    endpoint, tritonserver's own, the metrics URL, the checkpoint folder and the front door's pid."""
    from mentallama_server.launch.cpu_profile import CpuSettings
    from mentallama_server.launch.front_door_process import FrontDoorProcess, upstream_options
    from mentallama_server.launch.launcher import ServerOptions
    from mentallama_server.launch.serve_cpu import resolve_checkpoint, start_cpu_server

    checkpoint = resolve_checkpoint(model)
    public = ServerOptions.on_free_ports()
    upstream = upstream_options(public)
    server = start_cpu_server(str(checkpoint), CpuSettings(), upstream)
    try:
        with FrontDoorProcess.start(public, upstream, server.run_dir) as front:
            yield public.grpc_url, upstream.grpc_url, upstream.metrics_url, checkpoint, front.proc.pid
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mentallama-bench front-door", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="bench", help="tiny, bench or a checkpoint folder")
    parser.add_argument("--data", type=Path, help="IMHI data folder (test_instruction/*.csv); synthetic without")
    parser.add_argument("--concurrency", default="1,8,16,32")
    parser.add_argument("--requests", type=int, default=64, help="measured requests per run")
    parser.add_argument("--max-tokens", type=int, default=64, help="forced output tokens per request")
    parser.add_argument("--output", type=Path, help="results folder (runs and report)")
    args = parser.parse_args(argv)

    with server_behind_front_door(args.model) as (front, direct, metrics_url, checkpoint, front_pid):
        options = BenchOptions(
            endpoint=[front], metrics_url=[metrics_url], concurrency=args.concurrency, requests=args.requests,
            data=args.data, max_tokens=args.max_tokens, output_len=args.max_tokens, force_output_len=True,
            tokenizer=checkpoint, output=args.output, progress=False,
        )  # fmt: skip
        plan = plan_session(options)
        baseline = make_backend("triton-grpc", direct, plan.model)
        baseline.kind = DIRECT  # its own name in the summaries, so the two sides can be paired
        plan.groups.insert(0, [baseline])
        door = psutil.Process(front_pid)
        marks: list[tuple[str, float, float]] = []  # (run, front door CPU seconds so far, run seconds)

        def mark(result: RunResult) -> None:
            times = door.cpu_times()
            marks.append((result.label, times.user + times.system, float(result.summary.get("duration_s") or 0)))

        start = door.cpu_times()
        results = asyncio.run(plan.run(on_result=mark))
    rows = compare_summaries([r.summary for r in results], baseline_backend=DIRECT)
    table = format_comparison(rows)
    print(f"\nfront door / direct, one run on {cpu_name()} (model {args.model}; latency > 1x and throughput < 1x "
          "= the front door's cost):")  # fmt: skip
    print(fixed_width(table[0], table[1:]))
    print("\n" + "\n".join(_absolute(rows)))
    print("\n" + _door_cpu(marks, start.user + start.system))
    return 0


def _door_cpu(marks: list[tuple[str, float, float]], start: float) -> str:
    """The front door's own CPU time during each of its runs, as a share of one core (the engine's cost)."""
    parts, before = [], start
    for label, cpu, seconds in marks:
        if not label.startswith(DIRECT) and seconds > 0:
            parts.append(f"{label.rsplit('-', 1)[-1]} {100 * (cpu - before) / seconds:.1f}%")
        before = cpu
    return "front door CPU, share of one core during its runs: " + (", ".join(parts) or "-")


def _absolute(rows: list[dict]) -> list[str]:
    """The two sides' own numbers beside the ratios: tok/s and TTFT p50 (ms), and the TTFT added."""
    lines = ["load: direct tok/s -> front door tok/s; TTFT p50 direct -> front door (added)"]
    for row in rows:
        tok, ttft = row["out tok/s"], row["TTFT p50"]
        added = None if ttft["served"] is None or ttft["engine"] is None else ttft["served"] - ttft["engine"]
        lines.append(
            f"{row['load']}: {_num(tok['engine'])} -> {_num(tok['served'])} tok/s; TTFT p50 {_num(ttft['engine'])} "
            f"-> {_num(ttft['served'])} ms ({_num(added, '+.1f')} ms)"
        )
    return lines


def _num(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)
