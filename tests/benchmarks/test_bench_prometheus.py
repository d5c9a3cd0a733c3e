"""Prometheus text parsing and before/after diffs, on Triton-shaped exposition text."""

from __future__ import annotations

import pytest

from mentallama_bench.prometheus import diff_snapshots, parse_exposition, triton_model_stats

BEFORE = """
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="mentallama",version="1"} 10
nv_inference_request_success{model="tensorrt_llm",version="1"} 10
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="mentallama",reason="BACKEND",version="1"} 1
nv_inference_request_failure{model="mentallama",reason="REJECTED",version="1"} 0
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="mentallama",version="1"} 1000
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="mentallama",version="1"} 50000
# TYPE nv_inference_count counter
nv_inference_count{model="mentallama",version="1"} 11
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="mentallama",version="1"} 0
# TYPE engine_step_seconds histogram
engine_step_seconds_bucket{le="0.1"} 3
engine_step_seconds_bucket{le="+Inf"} 4
engine_step_seconds_sum 0.5 1700000000000
engine_step_seconds_count 4
nv_cpu_utilization 0.25
"""

AFTER = (
    BEFORE.replace('version="1"} 10\n', 'version="1"} 16\n', 1)
    .replace('reason="REJECTED",version="1"} 0', 'reason="REJECTED",version="1"} 2')
    .replace("} 1000", "} 1800")
    .replace("} 50000", "} 130000")
    .replace("} 11\n", "} 19\n")
    .replace('le="+Inf"} 4', 'le="+Inf"} 9')
    .replace("_count 4", "_count 9")
    + 'engine_new_metric_total{path="a \\"quoted\\" \\\\ b"} 5\n'
)


def test_parse_reads_labels_types_and_timestamps() -> None:
    snap = parse_exposition(BEFORE)
    assert snap.types["nv_inference_request_success"] == "counter"
    assert snap.value("nv_inference_request_success", model="mentallama") == 10
    assert snap.value("nv_inference_request_failure", model="mentallama") == 1  # summed over reasons
    assert snap.value("engine_step_seconds_sum") == 0.5  # trailing timestamp ignored
    assert snap.family_of("engine_step_seconds_bucket") == "engine_step_seconds"
    assert snap.samples[("engine_step_seconds_bucket", (("le", "+Inf"),))] == 4


def test_escaped_label_values() -> None:
    snap = parse_exposition(AFTER)
    assert snap.value("engine_new_metric_total", path='a "quoted" \\ b') == 5


def test_diff_reports_only_changed_families_with_deltas() -> None:
    changed = diff_snapshots(parse_exposition(BEFORE), parse_exposition(AFTER))
    assert "nv_inference_pending_request_count" not in changed and "nv_cpu_utilization" not in changed
    success = changed["nv_inference_request_success"]
    assert success["type"] == "counter"
    assert [(s["labels"]["model"], s["delta"]) for s in success["samples"]] == [("mentallama", 6.0)]
    hist = changed["engine_step_seconds"]
    assert {s["name"] for s in hist["samples"]} == {"engine_step_seconds_bucket", "engine_step_seconds_count"}
    assert changed["engine_new_metric_total"]["samples"][0]["delta"] == 5  # new family: delta from 0


def test_triton_model_stats_average_per_request() -> None:
    stats = triton_model_stats(parse_exposition(BEFORE), parse_exposition(AFTER))
    m = stats["mentallama/1"]
    assert (m["request_success"], m["request_failure"], m["inference_count"]) == (6, 2, 8)
    assert m["avg_queue_ms"] == pytest.approx(800 / 8 / 1000)
    assert m["avg_compute_infer_ms"] == pytest.approx(80000 / 8 / 1000)
    assert m["avg_request_ms"] is None  # Triton did not expose it: unknown, not zero
    assert "tensorrt_llm/1" not in stats  # nothing changed there
