"""The soak script's report (pure functions; the soak itself runs by hand, see docs/RELIABILITY.md)."""

from __future__ import annotations

from mentallama_bench.soak import ProcessMemory, SoakRecord, meets_goals, percentile, render, summarize


def _records() -> list[SoakRecord]:
    records = [SoakRecord("normal", -1.0, 9.0, "ok", True)]  # warm-up: left out
    records += [SoakRecord("normal", 10.0 + i, 0.1 * (i + 1), "ok", True, 16) for i in range(100)]
    records += [SoakRecord("cancel", 70.0, 0.2, "cancelled", True), SoakRecord("bad", 75.0, 0.01,
                "InvalidRequestError/INVALID_ARGUMENT", True)]  # fmt: skip
    return records


def test_percentile_is_nearest_rank():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([], 99) is None


def test_summary_per_minute_unexpected_and_memory():
    start = [ProcessMemory("tritonserver", 1, 100), ProcessMemory("mentallama", 2, 1000)]
    end = [ProcessMemory("tritonserver", 1, 105), ProcessMemory("mentallama", 2, 1050)]
    report = summarize(_records(), 120.0, 32, start, end, {})
    assert report.requests == 102 and not report.unexpected
    assert [m["requests"] for m in report.per_minute] == [50, 52]
    assert report.per_minute[0]["p99_s"] == 5.0  # 50 normal answers in minute 1: 0.1 .. 5.0 s
    assert abs(report.total_rss_growth - 0.05) < 1e-9 and meets_goals(report)
    assert "| 1 | 50 | 50 |" in render(report)

    grown = summarize(_records(), 120.0, 32, start, [ProcessMemory("tritonserver", 1, 150), end[1]], {})
    assert not meets_goals(grown)  # +50 % in one process fails even though the total grew < 10 %
    failed = summarize([*_records(), SoakRecord("bad", 80.0, 0.1, "ok", False)], 120.0, 32, start, end, {})
    assert failed.unexpected == {"bad: ok": 1} and not meets_goals(failed)
