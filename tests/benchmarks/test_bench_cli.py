"""`mentallama-bench` through Typer's CliRunner, against the fake Triton."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks.cli import app, build_loads, default_http_endpoints, default_metrics_urls, parse_list


def test_cli_sweep_writes_the_session_fake_triton(fake_triton, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "--endpoint",
            fake_triton.grpc_url,
            "--concurrency",
            "1,2",
            "--requests",
            "6",
            "--warmup",
            "1",
            "--input-len",
            "5",
            "--output-len",
            "4",
            "--force-output-len",
            "--slo",
            "ttft:2000,e2e:5000",
            "--metrics-url",
            fake_triton.metrics_url,
            "--output",
            str(tmp_path),
            "--name",
            "s1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "triton-grpc-c2" in result.output and "TTFT p99" in result.output
    assert "counted by: server" in result.output
    summary = json.loads((tmp_path / "s1" / "triton-grpc-c2" / "summary.json").read_text())
    assert summary["requests"]["completed"] == 6
    assert summary["output_tokens"]["mean"] == 4
    assert summary["slo"] == {"ttft_ms": 2000.0, "itl_ms": None, "e2e_ms": 5000.0}
    assert (tmp_path / "s1" / "report.md").exists()


def test_cli_rejects_conflicting_loads() -> None:
    result = CliRunner().invoke(app, ["--concurrency", "1", "--request-rate", "2", "--no-progress"])
    assert result.exit_code == 2
    assert "not both" in result.output


def test_cli_reports_an_unreachable_server() -> None:
    result = CliRunner().invoke(
        app,
        ["--endpoint", "127.0.0.1:1", "--ready-timeout", "0.2", "--no-metrics", "--no-progress", "-n", "1"],
    )
    assert result.exit_code == 2
    assert "not ready" in result.output


def test_option_helpers() -> None:
    assert parse_list("1, 2,4", int) == [1, 2, 4]
    assert parse_list("0.5,inf", float) == [0.5, float("inf")]
    assert default_metrics_urls(["a:8001", "a:9001", "b:8001"]) == [
        "http://a:8002/metrics",
        "http://b:8002/metrics",
    ]
    assert default_http_endpoints(["grpc://h:8001"]) == ["h:8000"]
    loads = build_loads(None, "1,2", burstiness=0.5, max_concurrency=8)
    assert [load.label for load in loads] == ["r1-b0.5-c8", "r2-b0.5-c8"]
    assert [load.label for load in build_loads(None, None, 1.0, None)] == ["c1"]
    with pytest.raises(ValueError):
        build_loads("0", None, 1.0, None)
