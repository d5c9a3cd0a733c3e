"""Load shapes, warm-up, stop conditions, records and written artefacts, against the fake Triton."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mentallama_bench.backends import TritonGrpcBackend, TritonHttpBackend
from mentallama_bench.datasets import BenchmarkDataset, SyntheticDataset
from mentallama_bench.metrics import SLO, summarize
from mentallama_bench.records import RequestRecord, SampleRequest, SamplingParams
from mentallama_bench.runner import LoadSpec, SessionConfig, StopSpec, run_session

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUMMARY_KEYS = ("ttft", "itl", "e2e_latency", "output_token_throughput", "request_throughput", "goodput")


def read_run(folder: Path, slo: SLO) -> tuple[list[RequestRecord], dict]:
    """A run folder's records and summary, once it is seen to hold a run's four files and a summary that its
    records give again under ``slo``."""
    assert {p.name for p in folder.iterdir()} == {"requests.json", "requests.csv", "summary.json", "summary.csv"}
    records = [RequestRecord.from_dict(d) for d in json.loads((folder / "requests.json").read_text())]
    summary = json.loads((folder / "summary.json").read_text())
    again = summarize(records, slo)
    for key in SUMMARY_KEYS:
        assert summary[key] == pytest.approx(again[key]), key
    return records, summary


class ScriptedPrompts(BenchmarkDataset):
    """Every `every`-th prompt asks the fake for an in-stream error."""

    name = "scripted"

    def __init__(self, every: int = 0, max_tokens: int = 4) -> None:
        self.every, self.max_tokens = every, max_tokens

    def iter_samples(self, seed: int) -> Iterator[SampleRequest]:
        i = 0
        while True:
            bad = self.every and i % self.every == self.every - 1
            yield SampleRequest(i, "x infer-error" if bad else "a b c", "t", self.max_tokens)
            i += 1


def _config(loads, stop, **kw) -> SessionConfig:
    kw.setdefault("progress", False)
    kw.setdefault("warmup", 2)
    return SessionConfig(loads=loads, stop=stop, **kw)


def _run(groups, dataset, config, output=None):
    return asyncio.run(run_session(groups, dataset, config, output))


def test_closed_loop_respects_concurrency_and_excludes_warmup_fake_triton(fake_triton) -> None:
    config = _config([LoadSpec(concurrency=3)], StopSpec(requests=12), warmup=2)
    [result] = _run([[TritonGrpcBackend(fake_triton.grpc_url)]], ScriptedPrompts(), config)
    assert len(result.records) == 12
    assert len(fake_triton.stats.requests) == 14  # two warm-up requests reached the server, unmeasured
    assert fake_triton.stats.max_in_flight == 3
    assert all(r.success and r.output_tokens == 3 and r.token_source == "server" for r in result.records)
    assert result.summary["requests"]["completed"] == 12


def test_open_loop_cap_queues_requests_on_the_client_fake_triton(fake_triton) -> None:
    load = LoadSpec(rate=math.inf, max_concurrency=2)
    config = _config([load], StopSpec(requests=6), warmup=0)
    [result] = _run([[TritonGrpcBackend(fake_triton.grpc_url)]], ScriptedPrompts(), config)
    assert fake_triton.stats.max_in_flight == 2
    assert all(r.scheduled_s == pytest.approx(0.0, abs=0.01) for r in result.records)
    assert max(r.client_queue for r in result.records) > 0.005  # later ones waited for a slot
    assert result.summary["client_queue"]["count"] == 6
    assert load.label == "rinf-c2"


def test_poisson_run_paces_requests_fake_triton(fake_triton) -> None:
    config = _config([LoadSpec(rate=40.0)], StopSpec(requests=10), warmup=0, seed=5)
    [result] = _run([[TritonGrpcBackend(fake_triton.grpc_url)]], ScriptedPrompts(), config)
    scheduled = sorted(r.scheduled_s for r in result.records)
    from mentallama_bench.arrivals import arrival_offsets

    assert scheduled == pytest.approx(list(arrival_offsets(10, 40.0, seed=5)), abs=1e-9)
    assert all(r.start_s >= r.scheduled_s - 1e-6 for r in result.records)


def test_duration_stops_issuing_fake_triton(fake_triton) -> None:
    config = _config([LoadSpec(concurrency=2)], StopSpec(duration_s=0.3), warmup=0)
    [result] = _run([[TritonGrpcBackend(fake_triton.grpc_url)]], ScriptedPrompts(), config)
    assert len(result.records) >= 2
    # Each request is claimed before the deadline; its send time follows by the event loop's jitter,
    # which a loaded 2-core machine stretches to a few tens of ms (seen: a start at 0.3 + 4 ms).
    assert all(r.start_s < 0.3 + 0.2 for r in result.records)
    # No client issued a request after the deadline passed: at most one late start per client.
    assert sum(r.start_s >= 0.3 for r in result.records) <= 2


def test_errors_are_counted_never_dropped_fake_triton(fake_triton) -> None:
    config = _config([LoadSpec(concurrency=2)], StopSpec(requests=9), warmup=0)
    [result] = _run([[TritonGrpcBackend(fake_triton.grpc_url)]], ScriptedPrompts(every=3), config)
    s = result.summary
    assert s["requests"] == {"total": 9, "completed": 6, "failed": 3}
    assert s["errors"] == {"INFER_ERROR": 3}
    assert all(r.output_tokens is None for r in result.records if not r.success)


def test_several_endpoints_share_the_load_round_robin_fake_triton(fake_triton) -> None:
    a = TritonGrpcBackend(fake_triton.grpc_url)
    b = TritonGrpcBackend(fake_triton.grpc_url.replace("127.0.0.1", "localhost"))
    config = _config([LoadSpec(concurrency=2)], StopSpec(requests=8), warmup=0)
    [result] = _run([[a, b]], ScriptedPrompts(), config)
    by_endpoint = {e: sum(r.endpoint == e for r in result.records) for e in (a.endpoint, b.endpoint)}
    assert by_endpoint == {a.endpoint: 4, b.endpoint: 4}


def test_session_writes_every_artefact_and_summary_matches_rows_fake_triton(
    fake_triton, tmp_path: Path
) -> None:
    config = _config(
        [LoadSpec(concurrency=1), LoadSpec(concurrency=4)],
        StopSpec(requests=8),
        slo=SLO(ttft_ms=1000, itl_ms=1000),
        metrics_urls=[fake_triton.metrics_url, "http://127.0.0.1:1/metrics"],
        params=SamplingParams(force_output_len=True),
    )
    groups = [[TritonGrpcBackend(fake_triton.grpc_url)], [TritonHttpBackend(fake_triton.http_url)]]
    results = _run(groups, SyntheticDataset(input_len=6, output_len=5), config, tmp_path)
    # Load-major order: each load on every backend back to back.
    assert [r.label for r in results] == [
        "triton-grpc-c1",
        "triton-http-c1",
        "triton-grpc-c4",
        "triton-http-c4",
    ]

    for r in results:
        folder = tmp_path / r.label
        rows, summary = read_run(folder, SLO(ttft_ms=1000, itl_ms=1000))
        assert len(rows) == 8 and all(x.output_tokens == 5 for x in rows)  # min_tokens forced the length
        assert summary["goodput"] == pytest.approx(summary["request_throughput"])  # loose SLO: all good
        with (folder / "requests.csv").open() as fh:
            assert len(list(csv.DictReader(fh))) == 8
        server = summary["server"][fake_triton.metrics_url]
        assert server["models"]["mentallama/1"]["request_success"] == 8
        assert "nv_unchanged_total" not in server["changed"]
        assert "error" in summary["server"]["http://127.0.0.1:1/metrics"]  # reported, not fatal
        assert summary["run"]["dataset"]["name"] == "synthetic"

    with (tmp_path / "sweep.csv").open() as fh:
        sweep = list(csv.DictReader(fh))
    assert [row["label"] for row in sweep] == [r.label for r in results]
    for name in ("throughput_vs_ttft", "throughput_vs_itl", "latency_vs_load"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    report = (tmp_path / "report.md").read_text()
    assert "(plots/throughput_vs_ttft.png)" in report and "(triton-http-c4/summary.json)" in report
    assert "a b c" not in report


class SwallowsCancellationBackend:
    """Test double of a client library that eats the CancelledError of a Ctrl-C inside a request (once)."""

    kind, endpoint, count_label = "swallowing", "nowhere", "server"

    def __init__(self) -> None:
        self.calls = 0
        self.swallowed = 0

    async def generate(self, sample: SampleRequest, params: SamplingParams):
        from mentallama_bench.records import RequestOutcome

        self.calls += 1
        start = time.perf_counter()
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1  # the request "completes" as if nothing happened
        return RequestOutcome(start=start, end=time.perf_counter())


def test_a_cancelled_closed_loop_stops_even_when_a_request_swallows_the_cancellation() -> None:
    from mentallama_bench.runner import drive

    backend = SwallowsCancellationBackend()

    async def main() -> bool:
        task = asyncio.create_task(
            drive([backend], ScriptedPrompts().iter_samples(0), SamplingParams(), LoadSpec(concurrency=1),
                  StopSpec(requests=1_000_000))  # fmt: skip
        )
        await asyncio.sleep(0.1)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)  # without the check in drive it went on sending
        return task in done and task.cancelled()

    assert asyncio.run(main())
    assert backend.swallowed == 1
