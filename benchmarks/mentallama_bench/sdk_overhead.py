"""SDK overhead: ``analyze`` vs. the same requests sent with raw ``tritonclient`` streams.

Both sides send identical ensemble inputs (the IMHI prompt, ``max_tokens`` = ``min_tokens`` so every
answer has the same length, ``stream``, ``exclude_input_in_output``, the two token counts) over one
gRPC stream per request, to the same server, with the same prompts and concurrency. The raw side is
``tritonclient.grpc.aio`` as its docs show it (numpy inputs, ``stream_infer``, read to the final
response, then let the stream close); the SDK side is ``AsyncMentaLLaMAClient.analyze`` (prompt
building, request encoding, retries bookkeeping, parsing into an ``Analysis``) and, for
reference, the blocking ``MentaLLaMAClient.analyze`` on a thread pool. Rounds of the modes are
interleaved (their order rotating) so that server drift hits every mode alike; the table gives
p50/p90 of per-request latency, the p50 ratio to the raw baseline, the same ratio paired round by
round (robust on a shared machine), and client CPU per request (goal: SDK p50 at most 5% above raw).

    mentallama-bench sdk-overhead                       # starts a tiny CPU server on free ports
    mentallama-bench sdk-overhead --endpoint host:8001  # an already running server
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mentallama import AsyncMentaLLaMAClient, MentaLLaMAClient, build_prompt

POSTS = [
    "I haven't slept properly in weeks and I keep crying for no reason.",
    "Started a new job this month, the team is friendly and I like the commute.",
    "Exams start Monday and I can't focus on anything, my chest feels tight all the time.",
    "My partner left last spring and since then the apartment feels empty and so do I.",
    "Went hiking with friends on Saturday, best weekend in a long time.",
    "Rent went up again and my paycheck didn't; I lie awake doing the math.",
    "Nobody at school talks to me and I eat lunch alone every day.",
    "I feel like everyone would be better off without me around.",
]
TASK = "depression"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# --- the raw baseline -------------------------------------------------------------------------


def _raw_inputs(prompt: str, max_tokens: int) -> list:
    import tritonclient.grpc.aio as grpcclient

    fields = [
        ("text_input", np.array([[prompt.encode()]], dtype=np.object_), "BYTES"),
        ("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
        ("min_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
        ("stream", np.array([[True]], dtype=bool), "BOOL"),
        ("exclude_input_in_output", np.array([[True]], dtype=bool), "BOOL"),
        ("return_num_input_tokens", np.array([[True]], dtype=bool), "BOOL"),
        ("return_num_output_tokens", np.array([[True]], dtype=bool), "BOOL"),
    ]
    inputs = []
    for name, data, datatype in fields:
        tensor = grpcclient.InferInput(name, list(data.shape), datatype)
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


async def raw_request(client, model: str, prompt: str, max_tokens: int, request_id: str) -> tuple[float, str]:
    """One request with tritonclient's own stream API; returns its latency in seconds and the text."""
    start = time.perf_counter()
    request = {"model_name": model, "inputs": _raw_inputs(prompt, max_tokens), "request_id": request_id,
               "parameters": {"triton_enable_empty_final_response": True}}  # fmt: skip

    async def one():
        yield request

    parts, final = [], False
    async for result, error in client.stream_infer(one(), stream_timeout=120):
        if error is not None:
            raise RuntimeError(f"raw request failed: {error}")
        text = result.as_numpy("text_output")
        if text is not None:
            parts.extend(t.decode() for t in text.reshape(-1))
        param = result.get_response().parameters.get("triton_final_response")
        if param is not None and param.bool_param:
            final = True
            # Keep reading: the server closes the stream right after, as with the SDK.
    if not final:
        raise RuntimeError("raw stream ended without its final response")
    text = "".join(parts)
    return time.perf_counter() - start, text


# --- rounds -----------------------------------------------------------------------------------


async def run_async_round(call: Callable[[int], Awaitable[float]], n: int, concurrency: int) -> list[float]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> float:
        async with gate:
            return await call(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def run_sync_round(call: Callable[[int], float], n: int, concurrency: int) -> list[float]:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(call, range(n)))


async def measure(endpoint: str, model: str, concurrency: int, rounds: int, per_round: int,
                  max_tokens: int) -> dict[str, ModeStats]:  # fmt: skip
    import tritonclient.grpc.aio as grpcclient

    prompts = [build_prompt(TASK, p) for p in POSTS]
    raw_client = grpcclient.InferenceServerClient(url=endpoint)
    sdk = AsyncMentaLLaMAClient(endpoint, model=model, max_retries=0)
    sync_sdk = MentaLLaMAClient(endpoint, model=model, max_retries=0)
    counter = iter(range(10**9))

    async def raw(i: int) -> float:
        prompt = prompts[i % len(prompts)]
        return (await raw_request(raw_client, model, prompt, max_tokens, f"raw-{next(counter)}"))[0]

    async def sdk_async(i: int) -> float:
        start = time.perf_counter()
        await sdk.analyze(POSTS[i % len(POSTS)], TASK, max_tokens=max_tokens, min_tokens=max_tokens)
        return time.perf_counter() - start

    def sdk_sync(i: int) -> float:
        start = time.perf_counter()
        sync_sdk.analyze(POSTS[i % len(POSTS)], TASK, max_tokens=max_tokens, min_tokens=max_tokens)
        return time.perf_counter() - start

    modes: dict[str, Callable[[], Awaitable[list[float]]]] = {
        RAW: lambda: run_async_round(raw, per_round, concurrency),
        "sdk async": lambda: run_async_round(sdk_async, per_round, concurrency),
        "sdk sync": lambda: asyncio.to_thread(run_sync_round, sdk_sync, per_round, concurrency),
    }
    stats = {mode: ModeStats() for mode in modes}
    try:
        # Same request, same answer: the two sides really do the same work.
        _, raw_text = await raw_request(raw_client, model, prompts[0], max_tokens, "raw-check")
        sdk_text = (await sdk.analyze(POSTS[0], TASK, max_tokens=max_tokens, min_tokens=max_tokens)).raw
        if raw_text.lstrip() != sdk_text:
            raise RuntimeError("the SDK and the raw client got different answers to the same greedy request")
        for run_round in modes.values():  # warm-up: connections, server caches, code paths
            await run_round()
        order = list(modes)
        for r in range(rounds):
            for mode in order[r % len(order):] + order[: r % len(order)]:  # rotate: no mode always first
                # Client CPU: this process holds only the client (the server is another process),
                # so CPU per request is the SDK's own cost, free of the shared machine's noise.
                start = time.process_time()
                values = await modes[mode]()
                stats[mode].add(values, time.process_time() - start)
    finally:
        await raw_client.close()
        await sdk.close()
        sync_sdk.close()
    return stats


RAW = "raw tritonclient.aio"


@dataclass
class ModeStats:
    """Latencies of one mode at one concurrency, kept per round for paired comparisons."""

    rounds: list[list[float]] = field(default_factory=list)
    cpu_s: float = 0.0

    def add(self, values: list[float], cpu_s: float) -> None:
        self.rounds.append(values)
        self.cpu_s += cpu_s

    @property
    def all(self) -> list[float]:
        return [v for values in self.rounds for v in values]


# --- server and report ------------------------------------------------------------------------


@contextmanager
def tiny_server() -> Iterator[str]:
    """A CPU-profile server with the tiny checkpoint on free loopback ports (like the test fixture)."""
    import tempfile

    from mentallama_build.tiny import ensure_checkpoint
    from mentallama_server.launch.cpu_profile import CpuSettings
    from mentallama_server.launch.launcher import ServerOptions
    from mentallama_server.launch.serve_cpu import start_cpu_server

    opts = ServerOptions.on_free_ports()
    with tempfile.TemporaryDirectory(prefix="sdk-overhead-") as run_dir:
        server = start_cpu_server(str(ensure_checkpoint("tiny")), CpuSettings(), opts, Path(run_dir))
        try:
            yield opts.grpc_url
        finally:
            server.stop()


def report(results: dict[int, dict[str, ModeStats]]) -> list[dict[str, float | int | str]]:
    """Rows of the table: p50/p90 over all requests, and the median over rounds of the ratio of the
    mode's round median to the raw round median (paired: both ran back to back)."""
    rows = []
    for concurrency, stats in results.items():
        raw = stats[RAW]
        for mode, st in stats.items():
            values = st.all
            pairs = zip(st.rounds, raw.rounds, strict=True)
            paired = statistics.median(statistics.median(mine) / statistics.median(base) for mine, base in pairs)
            rows.append({"concurrency": concurrency, "mode": mode, "n": len(values),
                         "p50_ms": percentile(values, 0.5) * 1e3, "p90_ms": percentile(values, 0.9) * 1e3,
                         "p50_vs_raw": percentile(values, 0.5) / percentile(raw.all, 0.5),
                         "paired_p50_vs_raw": paired, "client_cpu_ms": st.cpu_s / len(values) * 1e3})  # fmt: skip
    header = (f"{'conc':>4}  {'mode':<22}{'n':>5}  {'p50 ms':>8}  {'p90 ms':>8}  {'p50 vs raw':>10}"
              f"  {'paired':>8}  {'client CPU ms/req':>17}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['concurrency']:>4}  {r['mode']:<22}{r['n']:>5}  {r['p50_ms']:>8.1f}  {r['p90_ms']:>8.1f}  "
              f"{(r['p50_vs_raw'] - 1) * 100:>+9.1f}%  {(r['paired_p50_vs_raw'] - 1) * 100:>+7.1f}%  "
              f"{r['client_cpu_ms']:>17.2f}")  # fmt: skip
    return rows


def run_study(endpoint: str | None = None, model: str = "mentallama", concurrency: Sequence[int] = (1, 16),
              rounds: int = 48, per_round: int = 1, max_tokens: int = 32,
              output: Path | None = None) -> int:  # fmt: skip
    """`mentallama-bench sdk-overhead`: measure on ``endpoint`` (or a tiny server it starts), print the table and
    write the rows to ``output``."""

    def measure_all(address: str) -> dict[int, dict[str, ModeStats]]:
        return {c: asyncio.run(measure(address, model, c, rounds, max(per_round, c), max_tokens))
                for c in concurrency}  # fmt: skip

    if endpoint:
        results = measure_all(endpoint)
    else:
        with tiny_server() as started:
            results = measure_all(started)
    rows = report(results)
    if output:
        output.write_text(json.dumps(rows, indent=2))
    for mode in ("sdk async", "sdk sync"):
        worst = max(r["paired_p50_vs_raw"] for r in rows if r["mode"] == mode)
        print(f"{mode}: paired p50 overhead at its worst concurrency {(worst - 1) * 100:+.1f}% (goal <= +5%)")
    return 0

