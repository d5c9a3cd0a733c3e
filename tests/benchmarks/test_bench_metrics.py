"""Metric arithmetic on synthetic timelines whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mentallama_bench.metrics import SLO, benchmark_duration, describe, flatten_summary, summarize
from mentallama_bench.records import RequestRecord


def _record(i: int, start: float, end: float, max_tokens: int, **kw) -> RequestRecord:
    return RequestRecord(request_id=str(i), sample_index=i, task="t", backend="fake", endpoint="x",
                         max_tokens=max_tokens, start_s=start, end_s=end, **kw)  # fmt: skip


def _rec(i: int, start: float, ttft: float, e2e: float, out: int, **kw) -> RequestRecord:
    return _record(i, start, start + e2e, out, first_token_s=start + ttft, last_token_s=start + e2e,
                   output_tokens=out, input_tokens=10, token_source="server", **kw)  # fmt: skip


def _failed(i: int, start: float, end: float, code: str) -> RequestRecord:
    return _record(i, start, end, 5, success=False, error_code=code)


def test_record_latencies_follow_genai_perf_definitions() -> None:
    r = _rec(0, start=1.0, ttft=0.2, e2e=1.1, out=10)
    assert r.ttft == pytest.approx(0.2)
    assert r.e2e_latency == pytest.approx(1.1)
    assert r.itl == pytest.approx((1.1 - 0.2) / 9)


def test_itl_is_undefined_for_a_single_token() -> None:
    assert _rec(0, 0.0, 0.3, 0.3, out=1).itl is None


def test_describe_matches_numpy_percentiles() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    d = describe(values, "ms")
    assert d["count"] == 5
    assert d["mean"] == pytest.approx(4.0)
    assert d["std"] == pytest.approx(np.std(values))  # population std, ddof=0
    assert d["p50"] == pytest.approx(3.0)
    assert d["p90"] == pytest.approx(4.0 + 0.6 * 6.0)  # linear interpolation between 4 and 10
    assert d["p99"] == pytest.approx(4.0 + 0.96 * 6.0)
    assert (d["min"], d["max"]) == (1.0, 10.0)


def test_describe_empty_is_all_none() -> None:
    d = describe([], "ms")
    assert d["count"] == 0 and d["mean"] is None and d["p99"] is None


def test_summary_throughputs_and_latencies() -> None:
    # Two requests back to back over exactly 4 s: [0, 2] with 11 tokens and [2, 4] with 21 tokens.
    records = [_rec(0, 0.0, 0.5, 2.0, 11), _rec(1, 2.0, 1.0, 2.0, 21)]
    s = summarize(records)
    assert s["duration_s"] == pytest.approx(4.0)
    assert s["request_throughput"] == pytest.approx(0.5)
    assert s["output_token_throughput"] == pytest.approx(32 / 4)
    assert s["total_token_throughput"] == pytest.approx(52 / 4)
    assert s["ttft"]["mean"] == pytest.approx(750.0)  # ms
    assert s["itl"]["mean"] == pytest.approx(1000 * (0.15 + 0.05) / 2)
    assert s["e2e_latency"]["p50"] == pytest.approx(2000.0)
    assert s["output_token_throughput_per_user"]["mean"] == pytest.approx((5.5 + 10.5) / 2)
    assert s["goodput"] is None and s["good_requests"] is None


def test_failures_are_counted_by_code_and_stretch_the_window() -> None:
    records = [
        _rec(0, 0.0, 0.1, 1.0, 5),
        _failed(1, 0.5, 3.0, "DEADLINE_EXCEEDED"),
        _failed(2, 0.6, 0.7, "UNAVAILABLE"),
        _failed(3, 0.8, 0.9, "UNAVAILABLE"),
    ]
    s = summarize(records)
    assert s["requests"] == {"total": 4, "completed": 1, "failed": 3}
    assert s["errors"] == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 2}
    assert benchmark_duration(records) == pytest.approx(3.0)
    assert s["request_throughput"] == pytest.approx(1 / 3)
    assert s["ttft"]["count"] == 1  # failures never enter latency statistics


def test_goodput_counts_requests_meeting_every_slo() -> None:
    records = [
        _rec(0, 0.0, 0.10, 1.0, 10),  # itl 100 ms -> good
        _rec(1, 1.0, 0.30, 1.0, 10),  # ttft 300 ms -> bad
        _rec(2, 2.0, 0.10, 2.0, 10),  # itl 211 ms -> bad
        _rec(3, 3.0, 0.15, 0.15, 1),  # one token: no ITL, counts as 0 -> good
        _failed(4, 3.5, 4.0, "INFER_ERROR"),  # never good
    ]
    slo = SLO.parse("ttft:200,itl:150")
    s = summarize(records, slo)
    assert s["good_requests"] == 2
    assert s["goodput"] == pytest.approx(2 / 4.0)
    assert s["slo"] == {"ttft_ms": 200.0, "itl_ms": 150.0, "e2e_ms": None}
    assert summarize(records, SLO.parse("e2e:1500"))["good_requests"] == 3


def test_slo_parse_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError):
        SLO.parse("tpot:20")


def test_explicit_duration_overrides_the_window() -> None:
    s = summarize([_rec(0, 0.0, 0.1, 1.0, 5)], duration_s=10.0)
    assert s["request_throughput"] == pytest.approx(0.1)


def test_unknown_input_tokens_leave_total_throughput_unset() -> None:
    r = _rec(0, 0.0, 0.1, 1.0, 5)
    r.input_tokens = None
    assert summarize([r])["total_token_throughput"] is None


def test_client_queue_is_send_minus_schedule() -> None:
    r = _rec(0, 1.25, 0.1, 1.0, 5, scheduled_s=1.0)
    s = summarize([r])
    assert s["client_queue"]["mean"] == pytest.approx(250.0)


def test_flat_summary_has_metric_columns() -> None:
    flat = flatten_summary(summarize([_rec(0, 0.0, 0.1, 1.0, 5)]))
    assert flat["ttft_p99"] == pytest.approx(100.0)
    assert flat["requests_completed"] == 1
    assert not any(isinstance(v, dict) for v in flat.values())


def test_record_round_trips_through_dict() -> None:
    r = _rec(0, 0.0, 0.1, 1.0, 5, chunk_offsets_s=[0.1, 0.5, 1.0])
    back = RequestRecord.from_dict(r.to_dict())
    assert back == r
    assert "chunk_offsets_s" not in r.to_row()
    assert math.isclose(r.to_dict()["itl"], 0.9 / 4)
