"""`mentallama-bench` through Typer's CliRunner, against the fake Triton: the load benchmark (no command) and
the studies' commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mentallama_bench import serving_overhead, session
from mentallama_bench.backends import Backend, TritonGrpcBackend
from mentallama_bench.cli import STUDIES, app
from mentallama_bench.session import (
    BenchOptions,
    build_loads,
    default_http_endpoints,
    parse_list,
    plan_session,
)
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
    assert default_http_endpoints(["grpc://h:8001"]) == ["h:8000"]
    loads = build_loads(None, "1,2", burstiness=0.5, max_concurrency=8)
    assert [load.label for load in loads] == ["r1-b0.5-c8", "r2-b0.5-c8"]
    assert [load.label for load in build_loads(None, None, 1.0, None)] == ["c1"]
    with pytest.raises(ValueError):
        build_loads("0", None, 1.0, None)


def test_help_lists_the_load_flags_and_the_studies() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    assert "--endpoint" in result.stdout and "--concurrency" in result.stdout and "Commands:" in result.stdout
    assert all(name in result.stdout for name in STUDIES)


def test_plan_session_builds_the_session_the_flags_describe(tmp_path: Path) -> None:
    plan = plan_session(BenchOptions(endpoint=["h:9001", "h:9101"], backend="triton-grpc,triton-http",
                                     concurrency="1,4", output=tmp_path, name="s", warmup=0))  # fmt: skip
    assert [[b.endpoint for b in group] for group in plan.groups] == [["h:9001", "h:9101"], ["http://h:8000"] * 2]
    assert [load.label for load in plan.config.loads] == ["c1", "c4"]
    assert plan.config.stop.requests == 100 and plan.config.metrics_urls == [] and plan.find_metrics
    assert plan.folder == tmp_path / "s" and plan.tokenizer is None
    with pytest.raises(ValueError, match="not both"):
        plan_session(BenchOptions(concurrency="1", request_rate="2"))
    with pytest.raises(ValueError, match="--checkpoint"):
        plan_session(BenchOptions(compare_engine=True))


STUDY_FLAGS = {
    "soak": ("--endpoint", "--metrics", "--minutes", "--concurrency", "--mix", "--json"),
    "cpu-engine": ("--checkpoint", "--imhi-dir", "--concurrency", "--weight-formats", "--footprint", "--output",
                   "--llama-server", "--gguf", "--rounds", "--no-warmup", "--max-steal", "--engine-option"),
    "serving-overhead": ("--checkpoint", "--concurrency", "--requests", "--input-len", "--output-len", "--output"),
    "front-door": ("--checkpoint", "--data", "--concurrency", "--requests", "--max-tokens", "--output",
                   "--paired-requests"),
    "sdk-overhead": ("--endpoint", "--concurrency", "--rounds", "--per-round", "--max-tokens", "--output"),
    "label-parsing": ("--imhi", "--seed", "--json"),
    "gpu-smoke": ("--trtllm-examples", "--work-dir", "--cpu-endpoint", "--load-seconds", "--dry-run"),
}


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_each_study_help_lists_its_flags(study: str) -> None:
    for help_flag in ("--help", "-h"):
        result = CliRunner().invoke(app, [study, help_flag])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("Usage: ") and f" {study} [OPTIONS]" in result.stdout.splitlines()[0]
        assert all(flag in result.stdout for flag in STUDY_FLAGS[study]), result.stdout


def test_a_study_gets_its_arguments_and_returns_its_exit_code(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["label-parsing", "--imhi", str(tmp_path)])
    assert result.exit_code == 2 and f"IMHI data not found at {tmp_path}" in result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["soak", "--mix", "normal=0.5,slow=0.5"], "unknown kind 'slow'"),
        (["sdk-overhead", "--concurrency", "1 16"], "--concurrency takes comma-separated integers"),
        (["front-door", "--repeats", "3"], "--repeats"),
        (["label-parsing"], "--imhi"),
        (["cpu-engine", "--engine-option", "stream_hold_ms"], "--engine-option takes KEY=VALUE"),
        (["cpu-engine", "--engine-option", "no_such_setting=1"], "unknown engine setting 'no_such_setting'"),
        (["cpu-engine", "--engine-option", "stream_hold_ms=soon"], "invalid literal"),
        (["cpu-engine", "--engine-option", "weight_format=int8"], "give --weight-formats instead"),
    ],
)
def test_a_study_refuses_bad_flags_before_it_starts(args: list[str], words: str) -> None:
    """Usage errors (exit 2) from the command's own flags, before any server is started or reached."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and words in result.output, result.output


class _EngineOnFake(TritonGrpcBackend):
    """Stands in for the in-process engine: the fake Triton answers, the comparison sees an `engine` run."""

    kind = "engine"
    uses_server = False


def test_serving_overhead_runs_the_load_benchmark_in_process(
    fake_triton, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole study against the fake Triton (no tritonserver, no OpenVINO): `sys.argv` is left alone."""
    started: list[str] = []
    engines: list[Path | None] = []

    @contextmanager
    def fake_server(model: str) -> Iterator[tuple[str, str, Path]]:
        started.append(model)
        yield fake_triton.grpc_url, fake_triton.metrics_url, tiny_checkpoint

    def fake_engine(checkpoint: Path | None, options: list[str], request_timeout: float) -> Backend:
        engines.append(checkpoint)
        return _EngineOnFake(fake_triton.grpc_url, request_timeout_s=request_timeout)

    monkeypatch.setattr(serving_overhead, "cpu_server", fake_server)
    monkeypatch.setattr(session, "engine_backend", fake_engine)
    argv = list(sys.argv)
    args = ["serving-overhead", "--model", "tiny", "--concurrency", "1,2", "--requests", "3", "--input-len", "5",
            "--output-len", "4", "--output", str(tmp_path)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sys.argv == argv
    assert started == ["tiny"] and engines == [tiny_checkpoint]
    out = result.stdout
    assert "served / bare engine" in out and "engine-c2" in out
    (folder,) = tmp_path.iterdir()
    assert (folder / "triton-grpc-c2" / "summary.json").exists() and (folder / "engine-c2" / "summary.json").exists()


def test_load_flags_before_a_study_are_refused_not_ignored() -> None:
    result = CliRunner().invoke(app, ["--endpoint", "127.0.0.1:1", "--concurrency", "4", "soak", "--help"])
    assert result.exit_code == 2
    assert "load-benchmark options (--endpoint, --concurrency) given before `soak`" in result.output
