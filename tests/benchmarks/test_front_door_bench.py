"""`mentallama-bench front-door --paired-requests` (issue 18): the TTFT the front door adds, measured with each
prompt sent through the real front door and straight to the real tritonserver within one load."""

from __future__ import annotations

from typing import Any

import pytest

from mentallama_bench import front_door_overhead as bench
from mentallama_bench.records import SampleRequest


def test_paired_statistics_keep_the_pairs() -> None:
    direct = [100.0, 40.0, 300.0, 80.0, 120.0]
    door = [d + 1.5 for d in direct]
    stats = bench.paired_statistics(door, direct)
    assert stats["added_p50_ms"] == pytest.approx(1.5) and stats["paired_median_ms"] == pytest.approx(1.5)
    assert stats["paired_ci_ms"] == pytest.approx((1.5, 1.5))  # every pair differs by 1.5: no spread to resample
    low, high = stats["added_ci_ms"]
    assert low <= 1.5 <= high
    # Unpaired noise widens the interval of the p50 difference; the paired median stays on the per-prompt cost.
    noisy = bench.paired_statistics([d + 2.0 for d in direct], direct[1:] + direct[:1])
    assert noisy["added_p50_ms"] == pytest.approx(2.0)
    assert noisy["paired_median_ms"] != pytest.approx(2.0)
    assert bench.paired_statistics([], [])["added_p50_ms"] is None


def test_paired_table_names_each_side_and_the_interval() -> None:
    row = {"concurrency": 8, "pairs": 64, "errors": [], **bench.paired_statistics([11.0, 13.0], [10.0, 12.0])}
    header, rows = bench.paired_table([row])
    assert header[2:4] == ["TTFT p50 direct", "door"]
    assert rows == [["8", "64", "11.0", "12.0", "+1.0", "+1.0 .. +1.0", "+1.0", "+1.0 .. +1.0", "0"]]


@pytest.mark.server
def test_each_prompt_goes_through_the_door_and_direct_within_one_load(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, int, int]] = []  # (endpoint, sample, requests in flight then)
    in_flight = [0]
    real = bench.TritonGrpcBackend

    class Recording(real):  # type: ignore[misc,valid-type]
        async def generate(self, sample: SampleRequest, params: Any) -> Any:
            in_flight[0] += 1
            sent.append((self.endpoint, sample.index, in_flight[0]))
            try:
                return await super().generate(sample, params)
            finally:
                in_flight[0] -= 1

    monkeypatch.setattr(bench, "TritonGrpcBackend", Recording)
    samples = [SampleRequest(i, f"Post {i}: I cannot sleep and feel alone.", "DR", 8) for i in range(6)]
    with bench.server_behind_front_door("tiny") as (door, direct, _metrics, _checkpoint, _pid):
        result = bench.paired_ttft(door, direct, samples, concurrency=2, max_tokens=8)
    assert door != direct
    assert result["errors"] == [] and result["pairs"] == 6
    measured = sent[2:]  # after one request per side that opens the channels
    assert sorted((e, i) for e, i, _ in measured) == sorted((e, i) for e in (door, direct) for i in range(6))
    # Which side goes first alternates pair by pair, and both sides share the load.
    assert [e for e, _, _ in measured[:2]] == [door, direct] and [e for e, _, _ in measured[2:4]] == [direct, door]
    assert max(n for _, _, n in measured) == 2
    assert result["door_p50_ms"] > 0 and result["direct_p50_ms"] > 0
    low, high = result["added_ci_ms"]
    assert low <= result["added_p50_ms"] <= high
