"""`mentallama-bench` through Typer's CliRunner, against the fake Triton."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mentallama_bench.cli import app, build_loads, default_http_endpoints, default_metrics_urls, parse_list
from tests.support.endpoints import dead_endpoint


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


def test_cli_reports_an_unreachable_server_in_one_line() -> None:
    endpoint = dead_endpoint()
    started = time.monotonic()
    result = CliRunner().invoke(app, ["--endpoint", endpoint, "--no-metrics", "--no-progress", "-n", "1"])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"no server at {endpoint}" in result.stderr and "mentallama-serve" in result.stderr
    assert "not ready" not in result.output and time.monotonic() - started < 30  # no 60 s wait


def test_cli_unknown_model_lists_the_served_ones(fake_triton) -> None:
    args = ["--endpoint", fake_triton.grpc_url, "--model", "mentalama", "--no-metrics", "--no-progress", "-n", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "model 'mentalama' is not served" in result.stderr and "it has: mentallama" in result.stderr


def test_cli_help_and_version() -> None:
    from mentallama import __version__

    assert CliRunner().invoke(app, ["--version"]).stdout.strip() == f"mentallama-bench {__version__}"
    short = CliRunner().invoke(app, ["-h"], env={"COLUMNS": "80"})
    assert short.exit_code == 0 and "Usage:" in short.stdout and "…" not in short.stdout
    assert "[default: 256]" in short.stdout  # --max-tokens as in `mentallama analyze`


def test_ctrl_c_keeps_the_finished_records(fake_triton, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("mentallama-bench")
    args = [str(exe), "-e", fake_triton.grpc_url, "-c", "2", "-n", "100000", "--warmup", "0", "--input-len", "5",
            "--output-len", "20", "--no-metrics", "-o", str(tmp_path), "--name", "s"]  # fmt: skip
    before = fake_triton.stats.success
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while fake_triton.stats.success - before < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    summary = json.loads((tmp_path / "s" / "triton-grpc-c2" / "summary.json").read_text())
    records = json.loads((tmp_path / "s" / "triton-grpc-c2" / "requests.json").read_text())
    assert summary["run"]["interrupted"] is True and len(records) >= 5
    assert summary["requests"]["completed"] == len(records)
    assert (tmp_path / "s" / "report.md").exists()
    assert f"interrupted: 1 run(s), {len(records)} finished request records" in stderr
    assert "(interrupted)" in stdout and "Traceback" not in stderr


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
