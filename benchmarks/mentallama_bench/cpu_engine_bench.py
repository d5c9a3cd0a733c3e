"""CPU engine benchmark: the served OpenVINO engine vs. the same engine in-process vs. the authors' way (and
llama.cpp's `llama-server` on the same checkpoint in GGUF Q8_0, when given).

Workload (issue 9): the first 8 queries of each IMHI test file (64 prompts), exactly `--output-len` new
tokens each (min = max tokens, greedy), at each concurrency. Three ways, measured in one run because these
machines are noisy, so the ratios are what to read:

- served: gRPC streaming to the `mentallama` model of a `mentallama-serve` CPU server (OpenVINO engine), through
  the front door as clients reach it (tritonserver on private loopback ports behind it);
- in-process: `OpenVinoEngine` with the server's own settings, in this process (no Triton, no gRPC);
- authors' way: transformers `generate()` on the checkpoint in static batches of 8 with left padding, as the
  MentaLLaMA authors' evaluation script runs it (one figure: a static batch has no concurrency);
- llama.cpp (`--llama-server PATH --gguf FILE`): `llama-server` with one slot per request in flight, the
  checkpoint converted to GGUF Q8_0 (mentallama_bench.llama_cpp says how), at each concurrency.

    mentallama-bench cpu-engine --checkpoint bench --imhi-dir MentalLLaMA --weight-formats int8,fp16 \
        [--llama-server llama.cpp/build/bin/llama-server --gguf bench-q8_0.gguf]

Served and in-process runs alternate load by load (served then in-process at the first concurrency, in-process then
served at the next, ...) with both kept up, so drift of the machine weighs on both alike; the idle side costs about
1 % of a core. Before the first measured load, each side runs one load at the highest concurrency that is not
measured (`--no-warmup` leaves it out): a fresh engine's first load is slower. `--rounds N` runs each concurrency N
times per side, flipping the order each time, and pools them (tokens over time; the median of the latency p50s),
printing the ratio of each round too, for a machine whose back-to-back runs differ more than the gap being
measured. Beside tok/s, each run reports TTFT p50 and ITL p50 (genai-perf's definitions, README of
mentallama_bench), the text-bearing responses per request and the share of the CPUs the hypervisor stole during it
(`mentallama_bench.steal`: a neighbour on the host slows a run without the load average showing it); a run during
which more than `--max-steal` % (5) was stolen is set aside and run again, at most twice. The report names the
machine's CPU and its load average at the start and the end of the run: the ratios hold for one machine at one
time, and a busy neighbour changes them.

`--footprint` also starts the tiny model's server once its engine exists and reports the time to ready and
the resident memory of tritonserver and its Python stubs.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from mentallama.evaluation import imhi_part
from mentallama_bench.backends import Backend, TritonGrpcBackend
from mentallama_bench.engine_backend import EngineBackend, engine_settings
from mentallama_bench.records import SampleRequest, SamplingParams
from mentallama_bench.steal import CpuCounters, steal_percent
from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.front_door_process import FrontDoorProcess, upstream_options
from mentallama_server.launch.launcher import ServerOptions
from mentallama_server.launch.serve_cpu import resolve_checkpoint, start_cpu_server

PER_FILE = 8
AUTHORS_BATCH = 8
MAX_STEAL_RETRIES = 2


def imhi_prompts(imhi_dir: Path, per_file: int = PER_FILE) -> list[tuple[str, str]]:
    """(task file, query) for the first `per_file` queries of each test file, files in name order."""
    folder = imhi_part(imhi_dir, "test") or imhi_dir
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise SystemExit(f"no IMHI test files in {folder}: clone https://github.com/SteveKGYang/MentalLLaMA and "
                         "give --imhi-dir MentalLLaMA (its test_data/test_instruction/ is read)")  # fmt: skip
    csv.field_size_limit(sys.maxsize)
    prompts = []
    for path in files:
        with path.open(encoding="utf-8", newline="") as f:
            rows = [row["query"] for row, _ in zip(csv.DictReader(f), range(per_file), strict=False)]
        prompts += [(path.stem, query) for query in rows]
    return prompts


async def run_load(backend: Backend, samples: list[SampleRequest], concurrency: int) -> dict[str, Any]:
    """All samples at `concurrency` requests in flight; output tokens counted by the server/engine."""
    params = SamplingParams(force_output_len=True)
    gate = asyncio.Semaphore(concurrency)

    async def one(sample: SampleRequest) -> Any:
        async with gate:
            return await backend.generate(sample, params)

    await backend.open()
    await one(samples[0])  # warm-up: first-request costs are not throughput
    counters = CpuCounters.now()
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(one(s) for s in samples))
    elapsed = time.perf_counter() - started
    errors = [o.error for o in outcomes if not o.success]
    tokens = sum(o.server_output_tokens or 0 for o in outcomes)
    return {"concurrency": concurrency, "tok_s": tokens / elapsed, "tokens": tokens, "s": elapsed, "errors": errors,
            "steal_pct": steal_percent(counters, CpuCounters.now()), **latencies(outcomes)}  # fmt: skip


def latencies(outcomes: list[Any]) -> dict[str, float | None]:
    """TTFT, ITL and E2E p50 (ms, genai-perf's definitions: first text - send; (last text - first text) /
    (tokens - 1); last text - send) and text-bearing responses per request, over the successful requests. ITL
    alone flatters a stream whose first token came late; E2E does not."""
    ok = [o for o in outcomes if o.success and o.chunk_times]
    ttft = [o.chunk_times[0] - o.start for o in ok]
    e2e = [o.chunk_times[-1] - o.start for o in ok]
    itl = [(o.chunk_times[-1] - o.chunk_times[0]) / (o.server_output_tokens - 1)
           for o in ok if (o.server_output_tokens or 0) > 1]  # fmt: skip
    return {
        "ttft_p50_ms": 1000 * statistics.median(ttft) if ttft else None,
        "itl_p50_ms": 1000 * statistics.median(itl) if itl else None,
        "e2e_p50_ms": 1000 * statistics.median(e2e) if e2e else None,
        "responses_per_request": statistics.mean(len(o.chunk_times) for o in ok) if ok else None,
    }


async def _closing(backend: Backend, work: Any) -> Any:
    try:
        return await work
    finally:
        await backend.close()


def authors_way(checkpoint: Path, prompts: list[str], output_len: int, dtype: str = "auto") -> dict[str, Any]:
    """transformers `generate()`, static batches of 8, left padding, greedy, exactly `output_len` new tokens.

    `dtype` "auto" loads the checkpoint's own (bfloat16 for `bench`); "float32" is often faster on CPUs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, padding_side="left")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.unk_token
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    model = model.eval()
    tokens = 0
    started = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(prompts), AUTHORS_BATCH):
            batch = tokenizer(prompts[i : i + AUTHORS_BATCH], return_tensors="pt", padding=True)
            out = model.generate(
                **batch, do_sample=False, max_new_tokens=output_len, min_new_tokens=output_len,
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
            tokens += (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    elapsed = time.perf_counter() - started
    return {"tok_s": tokens / elapsed, "tokens": tokens, "s": elapsed, "dtype": str(model.dtype)}


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one side at one concurrency as one: tok/s of all their tokens over all their time, the
    median of their latency p50s; each run is kept under "rounds"."""
    tokens, seconds = sum(r["tokens"] for r in runs), sum(r["s"] for r in runs)

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    keys = ("ttft_p50_ms", "itl_p50_ms", "e2e_p50_ms", "responses_per_request")
    errors = [e for r in runs for e in r["errors"]]
    steals = [(r["steal_pct"], r["s"]) for r in runs if r.get("steal_pct") is not None]
    steal = sum(p * s for p, s in steals) / sum(s for _, s in steals) if steals else None
    return {"concurrency": runs[0]["concurrency"], "tok_s": tokens / seconds, "tokens": tokens, "s": seconds,
            "errors": errors, "steal_pct": steal, **{k: median(k) for k in keys}, "rounds": runs}  # fmt: skip


def measure_format(
    checkpoint: Path, weight_format: str, samples: list[SampleRequest], concurrencies: list[int], rounds: int = 1,
    warmup: bool = False, max_steal: float | None = None, engine_options: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Served (through the front door) and in-process runs of one weight format, alternating load by load; with
    `rounds` > 1, each concurrency is run that many times per side, the order flipping each time (served,
    in-process, in-process, served, ...), and pooled. With `warmup`, each side first runs one load at the highest
    concurrency that is not measured: a fresh engine's first load was up to a third slower on both sides (its
    first inferences of each shape, memory first touched), which weighed on whichever side the first round
    measured first. A run during which the hypervisor stole more than `max_steal` % of the CPUs is run again, at
    most twice (the runs set aside are kept under "set_aside"). `engine_options` (KEY=VALUE as mentallama-serve
    names the settings) apply to both sides."""
    settings = engine_settings(engine_options)
    settings.weight_format, settings.max_queue_size = weight_format, 256
    public = ServerOptions.on_free_ports()
    upstream = upstream_options(public)
    served: list[dict[str, Any]] = []
    in_process: list[dict[str, Any]] = []
    server = start_cpu_server(str(checkpoint), settings, upstream)
    engine = EngineBackend(checkpoint, settings)

    def load(side: str, c: int) -> dict[str, Any]:
        if side == "in-process":
            return asyncio.run(run_load(engine, samples, c))
        # A gRPC channel belongs to the event loop that made it: one backend per asyncio.run.
        backend = TritonGrpcBackend(public.grpc_url)
        return asyncio.run(_closing(backend, run_load(backend, samples, c)))

    warmed: dict[str, float] = {}
    set_aside: list[dict[str, Any]] = []

    def measured(side: str, c: int) -> dict[str, Any]:
        for _ in range(MAX_STEAL_RETRIES):
            run = load(side, c)
            if max_steal is None or run["steal_pct"] is None or run["steal_pct"] <= max_steal:
                return run
            set_aside.append({**run, "side": side})
            print(f"  {weight_format} {side:<11} c={c:<3} {run['tok_s']:8.1f} tok/s  set aside: the hypervisor "
                  f"stole {run['steal_pct']:.1f} % of the CPUs (> {max_steal:g} %); again", flush=True)  # fmt: skip
        return load(side, c)
    try:
        with FrontDoorProcess.start(public, upstream, server.run_dir):
            if warmup:
                for side in ("served", "in-process"):
                    warmed[side] = load(side, max(concurrencies))["tok_s"]
                    print(f"  {weight_format} {side:<11} warm-up at c={max(concurrencies)} (not measured): "
                          f"{warmed[side]:.1f} tok/s", flush=True)  # fmt: skip
            for i, c in enumerate(concurrencies):
                runs: dict[str, list[dict[str, Any]]] = {"served": [], "in-process": []}
                for r in range(rounds):
                    for side in ("served", "in-process")[:: 1 if (i + r) % 2 == 0 else -1]:
                        run = measured(side, c)
                        runs[side].append(run)
                        print(f"  {weight_format} {side:<11} c={c:<3} {run['tok_s']:8.1f} tok/s  TTFT p50 "
                              f"{_ms(run['ttft_p50_ms'])}  ITL p50 {_ms(run['itl_p50_ms'])}  E2E p50 "
                              f"{_ms(run['e2e_p50_ms'])}  steal {_pct(run['steal_pct'])}", flush=True)  # fmt: skip
                served.append(pooled(runs["served"]))
                in_process.append(pooled(runs["in-process"]))
    finally:
        asyncio.run(engine.close())
        server.stop()
    # getattr: the same benchmark measures server code from before the hold existed (the before/after of issue 23)
    return {"served": served, "in_process": in_process, "warm_up_tok_s": warmed, "set_aside": set_aside,
            "stream_hold_ms": getattr(settings, "stream_hold_ms", None),
            "release_gil": getattr(settings, "release_gil", None)}  # fmt: skip


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _steals(served: dict[str, Any], local: dict[str, Any]) -> str:
    """The hypervisor's steal during a round's two runs, where it was measured."""
    if served.get("steal_pct") is None or local.get("steal_pct") is None:
        return ""
    return f" (steal {served['steal_pct']:.0f}/{local['steal_pct']:.0f} %)"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def measure_llama_cpp(binary: Path, gguf: Path, samples: list[SampleRequest], concurrencies: list[int],
                      output_len: int, checkpoint: Path | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """tok/s of llama.cpp's server on the same samples, one server with a slot per request in flight, each slot's
    context the longest prompt (counted by the checkpoint's tokenizer, else in characters) plus the new tokens."""
    from mentallama_bench.llama_cpp import LlamaCppBackend, llama_server

    if checkpoint is not None and (checkpoint / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
        longest = max(len(tokenizer.encode(s.prompt).ids) for s in samples) + 1  # BOS
    else:
        longest = max(len(s.prompt) for s in samples)  # characters: at least as many as tokens
    runs: list[dict[str, Any]] = []
    with llama_server(binary, gguf, max(concurrencies), longest + output_len + 16) as url:
        for c in concurrencies:
            backend = LlamaCppBackend(url)
            runs.append(asyncio.run(_closing(backend, run_load(backend, samples, c))))
            print(f"  llama.cpp {gguf.name} c={c:<3} {runs[-1]['tok_s']:8.1f} tok/s", flush=True)
    return runs


def machine() -> dict[str, Any]:
    """The CPU and how busy the machine is, for the report (the ratios hold for one machine at one time)."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return {"cpu": name, "cores": os.cpu_count(), "isa": isa, "load_average": list(os.getloadavg())}


def footprint() -> dict[str, Any]:
    """Time to ready and RSS of the tiny model's server once its engine exists."""
    import psutil

    checkpoint = resolve_checkpoint("tiny")
    settings = CpuSettings()
    start_cpu_server(str(checkpoint), settings, _free_opts()).stop()  # builds the engine if missing
    opts = _free_opts()
    started = time.perf_counter()
    server = start_cpu_server(str(checkpoint), settings, opts)
    ready_s = time.perf_counter() - started
    try:
        root = psutil.Process(server.proc.pid)
        processes = [root, *root.children(recursive=True)]
        rss = {f"{p.pid}:{Path(p.cmdline()[1] if len(p.cmdline()) > 1 else p.name()).parent.parent.name or p.name()}":
               p.memory_info().rss for p in processes}  # fmt: skip
    finally:
        server.stop()
    return {"ready_s": ready_s, "rss_total_mib": sum(rss.values()) / 2**20, "processes": len(rss)}


def _free_opts() -> ServerOptions:
    return ServerOptions.on_free_ports()


def run_study(checkpoint: str = "bench", imhi_dir: Path = Path("MentalLLaMA"), concurrency: str = "1,4,16,32",
              output_len: int = 64, weight_formats: str = "int8,fp16", skip_authors: bool = False,
              authors_dtype: str = "auto", with_footprint: bool = False,
              output: Path = Path("results/cpu_engine_bench.json"), llama_server: Path | None = None,
              gguf: Path | None = None, rounds: int = 1, warmup: bool = True,
              max_steal: float | None = 5.0, engine_options: dict[str, str] | None = None) -> int:  # fmt: skip
    """`mentallama-bench cpu-engine`: measure, print the table and write the report to ``output``."""
    llama_binary = None
    if gguf is not None or llama_server is not None:  # checked before an hour of measuring, not after
        from mentallama_bench.llama_cpp import find_llama_server

        if gguf is None or not gguf.is_file():
            print(f"error: --gguf {gguf or '(missing)'}: give the checkpoint converted to GGUF Q8_0 (llama.cpp's "
                  "convert_hf_to_gguf.py CHECKPOINT --outtype q8_0)", file=sys.stderr)  # fmt: skip
            return 2
        try:
            llama_binary = find_llama_server(llama_server)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    folder = resolve_checkpoint(checkpoint)
    concurrencies = [int(c) for c in concurrency.split(",")]
    prompts = imhi_prompts(imhi_dir)
    samples = [SampleRequest(i, query, task, output_len) for i, (task, query) in enumerate(prompts)]
    print(f"{len(samples)} IMHI queries, {output_len} new tokens each, {folder.name}", flush=True)
    report: dict[str, Any] = {"model": folder.name, "queries": len(samples), "output_len": output_len,
                              "rounds": rounds, "warmup": warmup, "max_steal_pct": max_steal,
                              "engine_options": engine_options or {}, "machine": machine()}  # fmt: skip
    checkpoint_dir = folder
    if not skip_authors:
        report["authors"] = authors_way(checkpoint_dir, [s.prompt for s in samples], output_len, authors_dtype)
        print(f"  authors' way (generate, batches of 8): {report['authors']['tok_s']:.1f} tok/s", flush=True)
    report["formats"] = {
        fmt: measure_format(checkpoint_dir, fmt, samples, concurrencies, rounds, warmup, max_steal, engine_options)
        for fmt in weight_formats.split(",")
    }
    if llama_binary is not None and gguf is not None:
        runs = measure_llama_cpp(llama_binary, gguf, samples, concurrencies, output_len, checkpoint_dir)
        report["llama_cpp"] = {"gguf": gguf.name, "runs": runs}
    report["machine"]["load_average_end"] = list(os.getloadavg())
    if with_footprint:
        report["footprint"] = footprint()
    print_report(report, concurrencies)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {output}")
    return 0


def print_report(report: dict[str, Any], concurrencies: list[int]) -> None:
    authors = report.get("authors", {}).get("tok_s")
    print("\n| engine | concurrency | served tok/s | in-process tok/s | served/in-process | TTFT p50 served / "
          "in-process | ITL p50 served / in-process | E2E p50 served / in-process | served/authors |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for fmt, runs in report["formats"].items():
        for served, local in zip(runs["served"], runs["in_process"], strict=True):
            vs_authors = f"{served['tok_s'] / authors:.1f}x" if authors else "-"
            errors = len(served["errors"]) + len(local["errors"])
            note = f" ({errors} errors)" if errors else ""
            print(
                f"| {fmt} | {served['concurrency']} | {served['tok_s']:.1f} | {local['tok_s']:.1f} | "
                f"{served['tok_s'] / local['tok_s']:.2f} | {_ms(served.get('ttft_p50_ms'))} / "
                f"{_ms(local.get('ttft_p50_ms'))} | {_ms(served.get('itl_p50_ms'))} / {_ms(local.get('itl_p50_ms'))} | "
                f"{_ms(served.get('e2e_p50_ms'))} / {_ms(local.get('e2e_p50_ms'))} | {vs_authors}{note} |"
            )
    llama = {r["concurrency"]: r["tok_s"] for r in report.get("llama_cpp", {}).get("runs", [])}
    if llama:
        print(f"\n| llama.cpp ({report['llama_cpp']['gguf']}) | concurrency | tok/s | "
              + " | ".join(f"served {fmt} / llama.cpp" for fmt in report["formats"]) + " |")  # fmt: skip
        print("|---|---|---|" + "---|" * len(report["formats"]))
        for c, tok_s in llama.items():
            ratios = [next((f"{r['tok_s'] / tok_s:.2f}" for r in runs["served"] if r["concurrency"] == c), "-")
                      for runs in report["formats"].values()]  # fmt: skip
            print(f"| | {c} | {tok_s:.1f} | " + " | ".join(ratios) + " |")
    if authors:
        print(f"\nauthors' way: {authors:.1f} tok/s ({report['authors']['dtype']}, static batches of {AUTHORS_BATCH})")
    m = report.get("machine")
    if m:
        print(f"machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['isa']) or 'no AVX2'}); load average "
              f"{m['load_average'][0]:.2f} at the start, {m.get('load_average_end', [float('nan')])[0]:.2f} at the "
              "end (compare only figures of one run)")  # fmt: skip
    for fmt, runs in report["formats"].items():
        by_c = {r["concurrency"]: r["tok_s"] for r in runs["served"]}
        local = {r["concurrency"]: r["tok_s"] for r in runs["in_process"]}
        goals = []
        if 16 in by_c and authors:
            goals.append(f"served@16 / authors = {by_c[16] / authors:.1f}x (goal >= 4x)")
        ratios = ", ".join(f"{by_c[c] / local[c]:.2f} @{c}" for c in by_c)
        goals.append(f"served/in-process {ratios} (goal >= 0.95 at each)")
        if report.get("rounds", 1) > 1:
            each = "; ".join(
                f"@{s['concurrency']} " + ", ".join(f"{a['tok_s'] / b['tok_s']:.2f}" + _steals(a, b) for a, b in
                                                   zip(s["rounds"], p["rounds"], strict=True))
                for s, p in zip(runs["served"], runs["in_process"], strict=True)
            )  # fmt: skip
            goals.append(f"round by round {each}")
        if 4 in by_c and 32 in by_c:
            goals.append(f"served @32 / @4 = {by_c[32] / by_c[4]:.2f} (goal >= 1)")
        print(f"{fmt}: " + "; ".join(goals))
    if "footprint" in report:
        fp = report["footprint"]
        print(f"tiny footprint: ready in {fp['ready_s']:.1f} s, {fp['rss_total_mib']:.0f} MiB RSS "
              f"over {fp['processes']} processes")  # fmt: skip

