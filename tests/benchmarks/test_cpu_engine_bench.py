"""`mentallama-bench cpu-engine` (issue 23): served runs go through the real front door, served and in-process runs
alternate load by load, and each run reports TTFT and ITL p50 beside tok/s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mentallama_bench.cpu_engine_bench import latencies, measure_format, pooled, print_report
from mentallama_bench.records import RequestOutcome, SampleRequest


def outcome(start: float, chunks: list[float], tokens: int, error: str | None = None) -> RequestOutcome:
    return RequestOutcome(start=start, end=chunks[-1] if chunks else start, chunk_times=chunks,
                          server_output_tokens=tokens, error_code=error)  # fmt: skip


def test_latencies_follow_genai_perfs_definitions() -> None:
    runs = [
        outcome(0.0, [0.100, 0.200, 0.400], 5),  # TTFT 100 ms, ITL (400 - 100) / 4 = 75 ms
        outcome(1.0, [1.300, 1.500], 3),  # TTFT 300 ms, ITL 100 ms
        outcome(2.0, [2.050], 1),  # one token: a TTFT, no ITL
        outcome(3.0, [], 0, error="UNAVAILABLE"),  # failed: in no statistic
    ]
    stats = latencies(runs)
    assert stats["ttft_p50_ms"] == pytest.approx(100.0)  # median of 100, 300, 50
    assert stats["itl_p50_ms"] == pytest.approx(87.5)  # median of 75 and 100
    assert stats["e2e_p50_ms"] == pytest.approx(400.0)  # median of 400, 500, 50
    assert stats["responses_per_request"] == pytest.approx(2.0)
    assert set(latencies([]).values()) == {None}


def run(concurrency: int, tok_s: float, ttft: float | None = 120.0) -> dict[str, Any]:
    return {"concurrency": concurrency, "tok_s": tok_s, "errors": [], "ttft_p50_ms": ttft, "itl_p50_ms": 9.5,
            "e2e_p50_ms": 700.0}  # fmt: skip


def test_report_names_latencies_and_the_goal_at_each_concurrency(capsys: pytest.CaptureFixture[str]) -> None:
    report = {"formats": {"int8": {"served": [run(1, 96.0), run(32, 470.0, None)],
                                   "in_process": [run(1, 100.0), run(32, 500.0)]}}}  # fmt: skip
    print_report(report, [1, 32])
    out = capsys.readouterr().out
    assert "| int8 | 1 | 96.0 | 100.0 | 0.96 | 120.0 ms / 120.0 ms | 9.5 ms / 9.5 ms | 700.0 ms / 700.0 ms |" in out
    assert "| int8 | 32 | 470.0 | 500.0 | 0.94 | - / 120.0 ms |" in out
    assert "served/in-process 0.96 @1, 0.94 @32 (goal >= 0.95 at each)" in out


def test_rounds_are_pooled_and_each_round_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    first, second = run(8, 100.0), run(8, 300.0)
    first.update(tokens=1000, s=10.0)
    second.update(tokens=3000, s=10.0, ttft_p50_ms=200.0)
    both = pooled([first, second])
    assert both["tok_s"] == 200.0 and both["tokens"] == 4000  # all tokens over all the time, not a mean of rates
    assert both["ttft_p50_ms"] == 160.0 and both["rounds"] == [first, second]
    local = pooled([{**run(8, 250.0), "tokens": 2500, "s": 10.0}, {**run(8, 150.0), "tokens": 1500, "s": 10.0}])
    print_report({"rounds": 2, "formats": {"int8": {"served": [both], "in_process": [local]}}}, [8])
    out = capsys.readouterr().out
    assert "served/in-process 1.00 @8 (goal >= 0.95 at each); round by round @8 0.40, 2.00" in out


@pytest.mark.server
@pytest.mark.parametrize(
    ("concurrencies", "rounds", "warmup", "sides"),
    [([1, 2], 1, False, "SE ES"), ([1], 2, False, "SE ES"), ([1, 2], 1, True, "SE SE ES")],
)
def test_served_runs_go_through_the_front_door_and_alternate_with_in_process(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, concurrencies: list[int], rounds: int, warmup: bool,
    sides: str,
) -> None:
    import mentallama_bench.cpu_engine_bench as bench

    started: list[Any] = []
    real_start = bench.FrontDoorProcess.start

    def start(public: Any, upstream: Any, run_dir: Path) -> Any:
        started.append((public.grpc_port, upstream.grpc_port))
        return real_start(public, upstream, run_dir)

    order: list[str] = []
    real_run_load = bench.run_load

    loads: list[int] = []

    async def recording_run_load(backend: Any, samples: list[SampleRequest], concurrency: int) -> dict[str, Any]:
        order.append(f"{backend.kind}@{getattr(backend, 'endpoint', '')}" if backend.kind != "engine" else "engine")
        loads.append(concurrency)
        return await real_run_load(backend, samples, concurrency)

    monkeypatch.setattr(bench.FrontDoorProcess, "start", start)
    monkeypatch.setattr(bench, "run_load", recording_run_load)
    samples = [SampleRequest(i, f"Post {i}: I feel tired and sad every day.", "DR", 12) for i in range(4)]
    result = measure_format(tiny_checkpoint, "fp32", samples, concurrencies, rounds, warmup)
    ((front_port, triton_port),) = started
    assert front_port != triton_port
    served = f"triton-grpc@127.0.0.1:{front_port}"  # the front door's public port, never tritonserver's own
    assert order == [served if side == "S" else "engine" for side in sides.replace(" ", "")]
    # The warm-up loads (one per side, at the highest concurrency) come first and are in no result.
    assert loads[:2] == ([max(concurrencies)] * 2 if warmup else loads[:2])
    assert set(result["warm_up_tok_s"]) == ({"served", "in-process"} if warmup else set())
    for side in ("served", "in_process"):
        assert [r["concurrency"] for r in result[side]] == concurrencies
        for r in result[side]:
            assert len(r["rounds"]) == rounds
            assert r["errors"] == [] and r["tokens"] == rounds * 4 * 12 and r["tok_s"] > 0
            assert 0 < r["ttft_p50_ms"] < r["e2e_p50_ms"] and r["itl_p50_ms"] > 0 and r["responses_per_request"] >= 1


@pytest.mark.server
def test_a_run_the_hypervisor_slowed_is_set_aside_and_run_again(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mentallama_bench.cpu_engine_bench as bench

    steals = iter([40.0, 1.0, 60.0, 70.0, 80.0])  # served: set aside once; in-process: twice, then kept as it is
    monkeypatch.setattr(bench, "steal_percent", lambda before, after: next(steals))
    settings: dict[str, Any] = {}  # what each side was started with: --engine-option applies to both
    real_server, real_engine = bench.start_cpu_server, bench.EngineBackend
    monkeypatch.setattr(
        bench, "start_cpu_server", lambda c, s, o: settings.setdefault("served", s) and real_server(c, s, o)
    )
    monkeypatch.setattr(bench, "EngineBackend", lambda c, s: settings.setdefault("in-process", s) and real_engine(c, s))
    samples = [SampleRequest(i, f"Post {i}: nothing helps anymore.", "DR", 6) for i in range(2)]
    result = measure_format(tiny_checkpoint, "fp32", samples, [1], max_steal=5.0,
                            engine_options={"release_gil": "false", "stream_hold_ms": "0"})  # fmt: skip
    for side in ("served", "in-process"):
        assert settings[side].release_gil is False and settings[side].stream_hold_ms == 0
        assert settings[side].weight_format == "fp32"
    assert result["release_gil"] is False and result["stream_hold_ms"] == 0
    assert [(r["side"], r["steal_pct"]) for r in result["set_aside"]] == [("served", 40.0), ("in-process", 60.0),
                                                                          ("in-process", 70.0)]  # fmt: skip
    assert result["served"][0]["steal_pct"] == 1.0 and result["served"][0]["tokens"] == 2 * 6
    assert result["in_process"][0]["steal_pct"] == 80.0  # the third try is kept, its steal in the report
