"""Soak test: hours-of-traffic behaviour in minutes. Not a CI test; run it against a live server.

``concurrency`` workers send a seeded mix of requests through the async SDK for ``--minutes``:

- ``normal``: ``analyze`` of a synthetic post (expected: an answer);
- ``cancel``: ``analyze_stream`` left after a few deltas, which cancels the request on the server
  (expected: the stream ends as cancelled, or completes when it was shorter than that);
- ``bad``: a request the server must refuse (``max_tokens=0``, ``top_p`` out of range, negative
  temperature, ``top_k < 0``, blank text, a NUL byte; expected: ``InvalidRequestError``).

It reports requests served, outcomes by kind and status (expected vs unexpected), p99 latency of
``normal`` requests per minute, the engine's gauges once traffic stops (nothing may stay held), and
the RSS of the tritonserver process and each Python-backend stub after warm-up and at the end.

Usage (server started separately, e.g. ``mentallama-serve --profile cpu --model tiny``)::

    mentallama-bench soak --endpoint 127.0.0.1:8001 --metrics http://127.0.0.1:8002/metrics \\
        --minutes 10 --concurrency 32 --json soak.json

Goals: zero unexpected errors, RSS growth under 10% after warm-up. Posts are synthetic and are never
printed; only counts, statuses and timings are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from mentallama import AsyncMentaLLaMAClient, MentaLLaMAError

__all__ = ["ProcessMemory", "SoakRecord", "SoakReport", "meets_goals", "parse_mix", "run_soak", "run_study",
           "summarize"]  # fmt: skip

KINDS = ("normal", "cancel", "bad")
DEFAULT_MIX = {"normal": 0.7, "cancel": 0.15, "bad": 0.15}
TASKS = ("depression", "stress", "loneliness")
_SUBJECTS = ("work", "my exams", "my family", "money", "my friends", "the move", "my health", "the night shifts")
_FEELINGS = ("I can't sleep", "nothing feels worth it", "I keep crying", "I feel calm lately", "I am exhausted",
             "I feel alone even with people around", "I worry all day", "I started running again")  # fmt: skip


# --- requests and their records ---------------------------------------------------------------------


@dataclass(frozen=True)
class SoakRecord:
    """One request: what was sent (never its text), how it ended, whether that was the expected end."""

    kind: str
    started_s: float
    """Seconds since the measured run began (negative: warm-up)."""
    latency_s: float
    outcome: str
    """``ok``, ``cancelled``, or the error class and gRPC status, e.g. ``InvalidRequestError/INVALID_ARGUMENT``."""
    expected: bool
    output_tokens: int | None = None


def synthetic_post(rng: random.Random) -> str:
    first, second = rng.choice(_FEELINGS), rng.choice(_FEELINGS)
    return f"{first} because of {rng.choice(_SUBJECTS)}. {second}, {rng.randint(2, 60)} days now."


def _outcome_of(error: BaseException) -> str:
    status = getattr(error, "status", None)
    return f"{type(error).__name__}/{status.name if status is not None else 'client'}"


async def _normal(client: AsyncMentaLLaMAClient, rng: random.Random, max_tokens: int) -> tuple[str, int | None]:
    task = rng.choice(TASKS)
    analysis = await client.analyze(synthetic_post(rng), task, max_tokens=rng.randint(max_tokens // 4, max_tokens))
    return "ok", analysis.num_output_tokens


async def _cancel(client: AsyncMentaLLaMAClient, rng: random.Random, max_tokens: int) -> tuple[str, int | None]:
    leave_after = rng.randint(1, 6)
    async with client.analyze_stream(synthetic_post(rng), "stress", max_tokens=max_tokens) as stream:
        deltas = 0
        async for _ in stream:
            deltas += 1
            if deltas >= leave_after:
                break
    analysis = stream.analysis
    finished = analysis is not None and analysis.finish_reason != "cancelled"
    return ("ok" if finished else "cancelled"), None


_BAD_REQUESTS: tuple[Callable[[AsyncMentaLLaMAClient, str], Any], ...] = (
    lambda c, p: c.generate(p, max_tokens=0),
    lambda c, p: c.generate(p, max_tokens=8, top_p=1.5),
    lambda c, p: c.generate(p, max_tokens=8, temperature=-1.0),
    lambda c, p: c.generate(p, max_tokens=8, top_k=-1),
    lambda c, p: c.generate("   ", max_tokens=8),
    lambda c, p: c.generate(p + "\x00", max_tokens=8),
)


async def _bad(client: AsyncMentaLLaMAClient, rng: random.Random, max_tokens: int) -> tuple[str, int | None]:
    await rng.choice(_BAD_REQUESTS)(client, synthetic_post(rng))
    return "ok", None  # accepted: unexpected


SENDERS = {"normal": _normal, "cancel": _cancel, "bad": _bad}
EXPECTED = {"normal": {"ok"}, "cancel": {"ok", "cancelled"}, "bad": {"InvalidRequestError/INVALID_ARGUMENT"}}


async def send_one(client: AsyncMentaLLaMAClient, kind: str, rng: random.Random, max_tokens: int,
                   t0: float) -> SoakRecord:  # fmt: skip
    """Send one request of ``kind``; never raises (a failure is a record)."""
    started = time.monotonic()
    tokens = None
    try:
        outcome, tokens = await SENDERS[kind](client, rng, max_tokens)
    except MentaLLaMAError as error:
        outcome = _outcome_of(error)
    except Exception as error:  # a bug in the SDK or here: recorded, the soak goes on
        outcome = f"{type(error).__name__}/unexpected"
    end = time.monotonic()
    return SoakRecord(kind, started - t0, end - started, outcome, outcome in EXPECTED[kind], tokens)


# --- processes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessMemory:
    name: str
    """``tritonserver``, or the model a Python-backend stub serves."""
    pid: int
    rss_bytes: int


def find_server_pid(grpc_port: int) -> int:
    """The tritonserver process listening on ``grpc_port``."""
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == grpc_port and conn.pid:
            return conn.pid
    raise SystemExit(f"no process listens on port {grpc_port} (pass --pid)")


def server_memory(pid: int) -> list[ProcessMemory]:
    """RSS of tritonserver and of each of its Python-backend stubs (children named after their model)."""
    server = psutil.Process(pid)
    memory = [ProcessMemory("tritonserver", pid, server.memory_info().rss)]
    for child in server.children(recursive=True):
        try:
            cmdline = child.cmdline()
            if cmdline and cmdline[0].endswith("triton_python_backend_stub") and len(cmdline) > 1:
                memory.append(ProcessMemory(Path(cmdline[1]).parent.parent.name, child.pid, child.memory_info().rss))
        except psutil.Error:
            continue
    return sorted(memory, key=lambda m: m.name)


def engine_gauges(metrics_url: str) -> dict[str, float]:
    """The CPU engine's gauges (``mentallama_engine_*``), by sample name with labels."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("mentallama_engine_")
    }


# --- the report (pure) -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class SoakReport:
    duration_s: float
    concurrency: int
    requests: int
    by_kind_outcome: dict[str, dict[str, int]]
    unexpected: dict[str, int]
    per_minute: list[dict[str, Any]]
    memory_start: list[ProcessMemory]
    memory_end: list[ProcessMemory]
    gauges_after: dict[str, float] = field(default_factory=dict)
    problem: str | None = None
    """Why the run stopped early: the server or one of its model processes died."""
    problem_at_s: float | None = None
    rss_samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    """(seconds into the run, RSS by process name) about once a minute: growth that levels off vs. a leak."""

    @property
    def rss_growth(self) -> dict[str, float]:
        """Relative RSS change per process (matched by name and pid) from start to end."""
        start = {(m.name, m.pid): m.rss_bytes for m in self.memory_start}
        return {
            f"{m.name} ({m.pid})": m.rss_bytes / start[(m.name, m.pid)] - 1
            for m in self.memory_end
            if (m.name, m.pid) in start
        }

    @property
    def total_rss_growth(self) -> float:
        start = sum(m.rss_bytes for m in self.memory_start)
        return sum(m.rss_bytes for m in self.memory_end) / start - 1 if start else float("nan")


def summarize(records: Sequence[SoakRecord], duration_s: float, concurrency: int, memory_start: list[ProcessMemory],
              memory_end: list[ProcessMemory], gauges_after: dict[str, float]) -> SoakReport:  # fmt: skip
    """The report of the measured records (warm-up records, with negative start times, are left out)."""
    measured = [r for r in records if r.started_s >= 0]
    by_kind: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
    for record in measured:
        by_kind[record.kind][record.outcome] += 1
    unexpected = Counter(f"{r.kind}: {r.outcome}" for r in measured if not r.expected)
    minutes = max(1, math.ceil(max((r.started_s for r in measured), default=0.0) / 60 + 1e-9))
    per_minute = []
    for minute in range(minutes):
        window = [r for r in measured if minute * 60 <= r.started_s < (minute + 1) * 60]
        normal = [r.latency_s for r in window if r.kind == "normal" and r.outcome == "ok"]
        per_minute.append({
            "minute": minute + 1,
            "requests": len(window),
            "normal_ok": len(normal),
            "p50_s": percentile(normal, 50),
            "p99_s": percentile(normal, 99),
            "unexpected": sum(not r.expected for r in window),
        })  # fmt: skip
    return SoakReport(duration_s, concurrency, len(measured), {k: dict(v) for k, v in by_kind.items()},
                      dict(unexpected), per_minute, memory_start, memory_end, gauges_after)  # fmt: skip


def _when(at_s: float | None) -> str:
    if at_s is None:
        return ""
    return f"{-at_s:.0f} s before the end of the warm-up" if at_s < 0 else f"after {at_s:.0f} s"


def render(report: SoakReport) -> str:
    """The report as Markdown."""
    lines = [
        f"Soak: {report.duration_s / 60:.1f} min, concurrency {report.concurrency}, {report.requests} requests "
        f"({report.requests / report.duration_s:.1f}/s), unexpected outcomes: {sum(report.unexpected.values())}",
        *(["", f"**Stopped early: {report.problem} after {report.problem_at_s:.0f} s.**"] if report.problem else []),
        "",
        "| kind | outcome | count | expected |",
        "|---|---|---:|---|",
    ]
    for kind, outcomes in report.by_kind_outcome.items():
        for outcome, count in sorted(outcomes.items()):
            lines.append(f"| {kind} | {outcome} | {count} | {'yes' if outcome in EXPECTED[kind] else '**no**'} |")
    lines += ["", "| minute | requests | normal ok | p50 (s) | p99 (s) | unexpected |",
              "|---:|---:|---:|---:|---:|---:|"]
    for m in report.per_minute:
        p50 = "-" if m["p50_s"] is None else f"{m['p50_s']:.2f}"
        p99 = "-" if m["p99_s"] is None else f"{m['p99_s']:.2f}"
        lines.append(f"| {m['minute']} | {m['requests']} | {m['normal_ok']} | {p50} | {p99} | {m['unexpected']} |")
    lines += ["", "| process | pid | RSS after warm-up (MiB) | RSS at end (MiB) | growth |",
              "|---|---:|---:|---:|---:|"]
    end = {(m.name, m.pid): m.rss_bytes for m in report.memory_end}
    for m in report.memory_start:
        after = end.get((m.name, m.pid))
        growth = "gone" if after is None else f"{after / m.rss_bytes - 1:+.1%}"
        after_mib = "-" if after is None else f"{after / 2**20:.0f}"
        lines.append(f"| {m.name} | {m.pid} | {m.rss_bytes / 2**20:.0f} | {after_mib} | {growth} |")
    lines.append(f"| **all** | | {sum(m.rss_bytes for m in report.memory_start) / 2**20:.0f} | "
                 f"{sum(m.rss_bytes for m in report.memory_end) / 2**20:.0f} | {report.total_rss_growth:+.1%} |")
    if report.rss_samples:
        names = sorted(report.rss_samples[0][1])
        lines += ["", "| minute | " + " | ".join(f"{n} (MiB)" for n in names) + " |",
                  "|---:|" + "---:|" * len(names)]
        for at, rss in report.rss_samples:
            lines.append(f"| {at / 60:.1f} | " + " | ".join(f"{rss.get(n, 0) / 2**20:.0f}" for n in names) + " |")
    if report.gauges_after:
        gauges = ", ".join(f"`{k}` = {v:g}" for k, v in sorted(report.gauges_after.items()))
        lines += ["", f"Engine gauges once traffic stopped: {gauges}"]
    return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------------------


def server_problem(pid: int, expected: list[ProcessMemory]) -> str | None:
    """Why the server cannot serve any more (it exited, or one of its model processes died), or None."""
    if not psutil.pid_exists(pid):
        return "tritonserver exited"
    alive = {m.pid for m in server_memory(pid)}
    dead = sorted(m.name for m in expected if m.pid not in alive)
    return f"the Python-backend process of {', '.join(dead)} died" if dead else None


async def run_soak(endpoint: str, minutes: float, concurrency: int, mix: dict[str, float], warmup_s: float,
                   max_tokens: int, seed: int, pid: int, metrics_url: str | None, model: str = "mentallama",
                   progress: Callable[[str], None] = lambda _: None) -> SoakReport:  # fmt: skip
    """Warm up for ``warmup_s``, take the RSS, run the mix for ``minutes``, take the RSS again.

    The run stops early when the server or one of its model processes dies (the report says when).
    """
    kinds, weights = zip(*[(k, w) for k, w in mix.items() if w > 0], strict=True)
    records: list[SoakRecord] = []
    processes = server_memory(pid)
    phase = {"end": time.monotonic() + warmup_s, "t0": time.monotonic() + warmup_s}
    problem: dict[str, Any] = {}
    samples: list[tuple[float, list[ProcessMemory]]] = []
    async with AsyncMentaLLaMAClient(endpoint, model=model, timeout=120, max_retries=2) as client:

        async def worker(index: int, name: str) -> None:
            rng = random.Random(f"{seed}/{index}/{name}")  # own stream per worker and phase
            while time.monotonic() < phase["end"]:
                records.append(await send_one(client, rng.choices(kinds, weights)[0], rng, max_tokens, phase["t0"]))

        async def watchdog(report_every_s: float = 60.0) -> None:
            last_report = time.monotonic()
            while time.monotonic() < phase["end"]:
                await asyncio.sleep(2.0)
                found = await asyncio.to_thread(server_problem, pid, processes)
                if found and not problem:
                    problem.update(what=found, at_s=time.monotonic() - phase["t0"])
                    progress(f"stopping: {found} at {problem['at_s']:.0f} s")
                    phase["end"] = time.monotonic()
                if time.monotonic() - last_report >= report_every_s:
                    last_report = time.monotonic()
                    with contextlib.suppress(psutil.Error):
                        samples.append((time.monotonic() - phase["t0"], server_memory(pid)))
                    done = [r for r in records if r.started_s >= 0]
                    progress(f"{(time.monotonic() - phase['t0']) / 60:.1f} min: {len(done)} requests, "
                             f"{sum(not r.expected for r in done)} unexpected")  # fmt: skip

        await asyncio.gather(watchdog(3600), *(worker(i, "warm-up") for i in range(concurrency)))
        memory_start = server_memory(pid) if not problem else processes
        progress(f"warm-up done ({len(records)} requests); measuring for {minutes:g} min")
        if not problem:
            phase.update(t0=time.monotonic(), end=time.monotonic() + minutes * 60)
            await asyncio.gather(watchdog(), *(worker(i, "run") for i in range(concurrency)))
        duration_s = max(1e-9, time.monotonic() - phase["t0"])
    await asyncio.sleep(2)  # the server's watchers publish the gauges every 50 ms; cancellations settle
    alive = psutil.pid_exists(pid)
    gauges = engine_gauges(metrics_url) if metrics_url and alive else {}
    measured = [r for r in records if r.started_s >= 0]
    report = summarize(measured, duration_s, concurrency, memory_start, server_memory(pid) if alive else [], gauges)
    report.rss_samples = [(at, {m.name: m.rss_bytes for m in memory}) for at, memory in samples]
    report.problem = problem.get("what")
    report.problem_at_s = problem.get("at_s")
    return report


def parse_mix(text: str) -> dict[str, float]:
    """``normal=0.7,cancel=0.15,bad=0.15`` -> weights per kind (``ValueError`` names an unknown kind)."""
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in KINDS:
            raise ValueError(f"unknown kind {name!r}; use {', '.join(KINDS)}")
        mix[name.strip()] = float(weight)
    return mix


def run_study(endpoint: str = "127.0.0.1:8001", metrics: str | None = None, pid: int | None = None,
              minutes: float = 10.0, concurrency: int = 32, warmup_s: float = 30.0, max_tokens: int = 64,
              mix: dict[str, float] | None = None, model: str = "mentallama", seed: int = 0,
              json_path: Path | None = None) -> int:  # fmt: skip
    """`mentallama-bench soak`: print the report (and write it with every record to ``json_path``); exit code 1
    unless it meets the goals."""
    pid = pid or find_server_pid(int(endpoint.rsplit(":", 1)[1]))
    progress = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731 - one line's callback
    report = asyncio.run(run_soak(endpoint, minutes, concurrency, mix or DEFAULT_MIX, warmup_s, max_tokens, seed,
                                  pid, metrics, model, progress=progress))  # fmt: skip
    print(render(report))
    if json_path:
        payload = asdict(report) | {"rss_growth": report.rss_growth, "total_rss_growth": report.total_rss_growth}
        json_path.write_text(json.dumps(payload, indent=2))
    return 0 if meets_goals(report) else 1


def meets_goals(report: SoakReport, max_growth: float = 0.10) -> bool:
    """No unexpected outcome, the server up to the end, and no process's RSS grown by ``max_growth`` or more."""
    growth = [report.total_rss_growth, *report.rss_growth.values()]
    return not report.unexpected and not report.problem and all(g < max_growth for g in growth)

