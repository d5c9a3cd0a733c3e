"""A short real run against the CPU Triton server (tiny checkpoint): every artefact, consistent numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mentallama_bench.cli import app
from mentallama_bench.metrics import SLO
from tests.benchmarks.test_bench_runner import PNG_MAGIC, read_run


@pytest.mark.server
def test_short_sweep_against_the_cpu_server(cpu_server, tmp_path: Path) -> None:
    args = [
        "--endpoint", cpu_server.grpc_url, "--backend", "triton-grpc,triton-http",
        "--http-endpoint", f"{cpu_server.opts.host}:{cpu_server.opts.http_port}",
        "--metrics-url", cpu_server.metrics_url,
        "--concurrency", "1,4", "--requests", "5", "--warmup", "1", "--seed", "3",
        "--tokenizer", str(cpu_server.checkpoint),
        "--input-len", "24", "--output-len", "8", "--force-output-len",
        "--slo", "ttft:60000,itl:60000", "--output", str(tmp_path), "--name", "e2e", "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    session = tmp_path / "e2e"
    labels = ["triton-grpc-c1", "triton-http-c1", "triton-grpc-c4", "triton-http-c4"]
    for label in labels:
        records, summary = read_run(session / label, SLO(ttft_ms=60000, itl_ms=60000))
        assert len(records) == 5 and all(r.success for r in records), summary["errors"]
        # The server returns the totals: min_tokens = max_tokens forced every output to 8 tokens.
        assert all(r.output_tokens == 8 and r.token_source == "server" for r in records)
        assert all(r.input_tokens == 25 for r in records)  # 24 prompt tokens + BOS, counted by the server
        assert summary["goodput"] == pytest.approx(summary["request_throughput"])
        models = summary["server"][cpu_server.metrics_url]["models"]
        assert models["mentallama/1"]["request_success"] == 5  # warm-up was scraped out
    for png in (session / "plots").iterdir():
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert len(list((session / "plots").iterdir())) == 3
    report = (session / "report.md").read_text()
    assert all(f"({label}/summary.json)" in report for label in labels)
