"""Cost of the front door: the same load through the front door and straight to tritonserver, in one run.

Starts the CPU profile as `mentallama-serve` does (tritonserver on private loopback ports, the front door on the
public ones), then runs each load back to back on tritonserver's own gRPC port (`triton-direct`) and on the
front door's (`front-door`), in the order direct, door, door, direct with `--repeats 2` (so a machine that drifts
during the load weighs on both sides alike), and prints the front door / direct ratio of the pooled runs measured
in this one session, with the CPU they ran on and the front door's own CPU share. With `--paired-requests N` it
then measures the TTFT the door adds within one load per concurrency (`paired_ttft`): separate loads differ by
more than that. Run it on an idle machine.

    mentallama-bench front-door --model bench --data IMHI_DIR --concurrency 1,8,16,32 --requests 128 --repeats 2 \
        --paired-requests 128
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from mentallama_bench.backends import Backend, TritonGrpcBackend, make_backend
from mentallama_bench.records import RequestOutcome, RunResult, SampleRequest, SamplingParams
from mentallama_bench.report import fixed_width
from mentallama_bench.session import BenchOptions, plan_session
from mentallama_bench.steal import CpuCounters, steal_percent

__all__ = ["cpu_name", "paired_ttft", "run_study", "server_behind_front_door"]
DIRECT = "triton-direct"
DOOR = "front-door"


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


def run_study(model: str = "bench", data: Path | None = None, concurrency: str = "1,8,16,32", requests: int = 64,
              max_tokens: int = 64, repeats: int = 2, output: Path | None = None,
              paired_requests: int = 0) -> int:  # fmt: skip
    """`mentallama-bench front-door`: the runs on a server it starts, then the pooled front door / direct table;
    with `paired_requests`, then the TTFT the front door adds, measured paired within one load per concurrency."""
    if repeats not in (1, 2):
        raise ValueError(f"repeats must be 1 or 2, got {repeats}")
    with server_behind_front_door(model) as (front, direct, metrics_url, checkpoint, front_pid):
        options = BenchOptions(
            endpoint=[front], metrics_url=[metrics_url], concurrency=concurrency, requests=requests,
            data=data, max_tokens=max_tokens, output_len=max_tokens, force_output_len=True,
            tokenizer=checkpoint, output=output, progress=False,
        )  # fmt: skip
        plan = plan_session(options)
        (door_backend,) = plan.groups[0]
        door_backend.kind = DOOR
        plan = dataclasses.replace(
            plan, groups=_abba(plan.groups[0], [make_backend("triton-grpc", direct, plan.model)], repeats)
        )
        door = psutil.Process(front_pid)
        marks: list[tuple[str, float, float]] = []  # (run, front door CPU seconds so far, run seconds)
        counters = CpuCounters.now()
        steals: list[str] = []

        def mark(result: RunResult) -> None:
            nonlocal counters
            times = door.cpu_times()
            marks.append((result.label, times.user + times.system, float(result.summary.get("duration_s") or 0)))
            before, counters = counters, CpuCounters.now()  # since the last run ended: its warm-up too
            steals.append(f"{result.label} {_num(steal_percent(before, counters))}%")

        start = door.cpu_times()
        results = asyncio.run(plan.run(on_result=mark))
        paired = []
        if paired_requests > 0:
            samples = plan.dataset.sample(paired_requests, seed=1)
            for c in [int(c) for c in concurrency.split(",")]:
                paired.append(paired_ttft(front, direct, samples, c, max_tokens))
    print(f"\nfront door / direct, one session on {cpu_name()} (model {model}, {requests} requests per run, "
          f"{'direct, door, door, direct' if repeats == 2 else 'direct, door'} per load):")  # fmt: skip
    header, rows = pooled_table([r.summary for r in results])
    print(fixed_width(header, rows))
    print("\n" + _door_cpu(marks, start.user + start.system))
    print("CPU time the hypervisor stole during each run (a slow run beside a high share measured a busier host): "
          + ", ".join(steals))  # fmt: skip
    if paired:
        print(f"\nTTFT added by the front door, paired within one load ({paired_requests} prompts, each sent once "
              "through the door and once direct, the two in turn, alternating which goes first; 95 % bootstrap "
              "intervals):")  # fmt: skip
        print(fixed_width(*paired_table(paired)))
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
            (output / "paired_ttft.json").write_text(json.dumps(paired, indent=2) + "\n", encoding="utf-8")
    return 0


def paired_ttft(door_url: str, direct_url: str, samples: list[SampleRequest], concurrency: int,
                max_tokens: int) -> dict[str, Any]:  # fmt: skip
    """The TTFT the front door adds, with the engine's load the same for both sides: every prompt is sent twice
    in one load, through the door and straight to tritonserver, the two next to each other in the queue (which
    goes first alternates), `concurrency` requests in flight of either kind. Separate loads differ by more than
    the door costs on a busy engine (run to run, tens of ms of TTFT at concurrency 8 and up); within one load
    the engine's queue weighs on both sides alike. What this leaves out, the CPU the door takes from the engine
    (which slows both sides here), is in the throughput ratio of the separate loads."""
    order = [(i, side) for i in range(len(samples))
             for side in ((DOOR, DIRECT) if i % 2 == 0 else (DIRECT, DOOR))]  # fmt: skip
    ttft: dict[str, dict[int, float]] = {DOOR: {}, DIRECT: {}}
    errors: list[str] = []

    async def load() -> None:
        backends: dict[str, Backend] = {DOOR: TritonGrpcBackend(door_url), DIRECT: TritonGrpcBackend(direct_url)}
        params = SamplingParams(force_output_len=True)
        queue = iter(order)
        try:
            for backend in backends.values():  # one request each first: channel set-up is not TTFT
                await backend.open()
                await backend.generate(dataclasses.replace(samples[0], max_tokens=max_tokens), params)

            async def worker() -> None:
                for i, side in queue:  # one shared iterator: each item is taken by one worker
                    outcome: RequestOutcome = await backends[side].generate(
                        dataclasses.replace(samples[i], max_tokens=max_tokens), params
                    )
                    if outcome.success and outcome.chunk_times:
                        ttft[side][i] = 1000 * (outcome.chunk_times[0] - outcome.start)
                    else:
                        errors.append(f"{side}: {outcome.error_code}")

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            for backend in backends.values():
                await backend.close()

    asyncio.run(load())
    both = sorted(set(ttft[DOOR]) & set(ttft[DIRECT]))
    door, direct = [ttft[DOOR][i] for i in both], [ttft[DIRECT][i] for i in both]
    return {"concurrency": concurrency, "pairs": len(both), "errors": errors, **paired_statistics(door, direct)}


def paired_statistics(door: list[float], direct: list[float], resamples: int = 2000) -> dict[str, Any]:
    """p50 of each side, their difference and the median of the per-prompt differences, each difference with a
    95 % percentile-bootstrap interval over the pairs (resampled together, so the pairing is kept)."""
    if not door:
        return {"door_p50_ms": None, "direct_p50_ms": None, "added_p50_ms": None, "added_ci_ms": None,
                "paired_median_ms": None, "paired_ci_ms": None}  # fmt: skip
    door_ms, direct_ms = np.asarray(door, dtype=float), np.asarray(direct, dtype=float)
    picks = np.random.default_rng(0).integers(0, len(door), size=(resamples, len(door)))  # one resample per row
    added = np.median(door_ms[picks], axis=1) - np.median(direct_ms[picks], axis=1)
    per_pair = np.median((door_ms - direct_ms)[picks], axis=1)

    def interval(values: np.ndarray) -> tuple[float, float]:
        low, high = np.percentile(values, [2.5, 97.5])
        return float(low), float(high)

    return {
        "door_p50_ms": statistics.median(door),
        "direct_p50_ms": statistics.median(direct),
        "added_p50_ms": statistics.median(door) - statistics.median(direct),
        "added_ci_ms": interval(added),
        "paired_median_ms": statistics.median(d - t for d, t in zip(door, direct, strict=True)),
        "paired_ci_ms": interval(per_pair),
    }


def paired_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["concurrency", "pairs", "TTFT p50 direct", "door", "added (p50 door - p50 direct)", "95 % interval",
              "median of per-prompt door - direct", "95 % interval", "errors"]  # fmt: skip

    def span(ci: tuple[float, float] | None) -> str:
        return "-" if ci is None else f"{ci[0]:+.1f} .. {ci[1]:+.1f}"

    return header, [
        [str(r["concurrency"]), str(r["pairs"]), _num(r["direct_p50_ms"]), _num(r["door_p50_ms"]),
         _num(r["added_p50_ms"], "+.1f"), span(r["added_ci_ms"]), _num(r["paired_median_ms"], "+.1f"),
         span(r["paired_ci_ms"]), str(len(r["errors"]))]
        for r in rows
    ]  # fmt: skip


def _abba(door: list, direct: list, repeats: int) -> list[list]:
    """Backend groups in run order per load: direct, door (, door, direct), each run under its own label."""
    if repeats == 1:
        direct[0].kind = DIRECT
        return [direct, door]
    plan = _abba(door, direct, 1)
    door_again = make_backend("triton-grpc", door[0].endpoint, door[0].model)
    direct_again = make_backend("triton-grpc", direct[0].endpoint, direct[0].model)
    door_again.kind, direct_again.kind = f"{DOOR}-2", f"{DIRECT}-2"
    return [*plan, [door_again], [direct_again]]


def pooled_table(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Per load: output tokens/s of each side (its runs pooled), their ratio, and TTFT / ITL p50 of each side."""
    loads: dict[str, dict[str, list[dict]]] = {}
    for summary in summaries:
        side = DOOR if summary["run"]["backend"].startswith(DOOR) else DIRECT
        loads.setdefault(summary["run"]["load"]["label"], {DOOR: [], DIRECT: []})[side].append(summary)
    header = ["load", "direct tok/s", "door tok/s", "door/direct", "TTFT p50 direct", "door", "added ms",
              "ITL p50 direct", "door"]  # fmt: skip
    rows = []
    for load, sides in loads.items():
        tok = {side: sum(s.get("output_token_throughput") or 0 for s in runs) for side, runs in sides.items()}
        ttft = {side: _mean([_p50(s, "ttft") for s in runs]) for side, runs in sides.items()}
        itl = {side: _mean([_p50(s, "itl") for s in runs]) for side, runs in sides.items()}
        ratio = tok[DOOR] / tok[DIRECT] if tok[DIRECT] else None
        added = None if ttft[DOOR] is None or ttft[DIRECT] is None else ttft[DOOR] - ttft[DIRECT]
        per_run = {side: " + ".join(f"{s.get('output_token_throughput') or 0:.1f}" for s in runs)
                   for side, runs in sides.items()}  # fmt: skip
        rows.append([load, per_run[DIRECT], per_run[DOOR], _num(ratio, ".3f"), _num(ttft[DIRECT]), _num(ttft[DOOR]),
                     _num(added, "+.1f"), _num(itl[DIRECT]), _num(itl[DOOR])])  # fmt: skip
    return header, rows


def _p50(summary: dict, key: str) -> float | None:
    value = summary.get(key)
    return value.get("p50") if isinstance(value, dict) else None


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _door_cpu(marks: list[tuple[str, float, float]], start: float) -> str:
    """The front door's own CPU time during each of its runs, as a share of one core (the engine's cost)."""
    parts, before = [], start
    for label, cpu, seconds in marks:
        if not label.startswith(DIRECT) and seconds > 0:
            parts.append(f"{label.rsplit('-', 1)[-1]} {100 * (cpu - before) / seconds:.1f}%")
        before = cpu
    return "front door CPU, share of one core during its runs: " + (", ".join(parts) or "-")


def _num(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)
