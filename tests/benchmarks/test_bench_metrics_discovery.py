"""Where the server's metrics page is (issue 22): `--metrics URL`, or found on the endpoint's host (not always port
8002); when none is found or a scrape fails the terminal says so and how to fix it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from mentallama_bench.cli import app
from mentallama_bench.metrics_discovery import candidate_urls, find_metrics_urls, probe
from mentallama_bench.session import BenchOptions, plan_session
from tests.support.endpoints import free_port
from tests.support.http_double import QuietHandler, serving

PAGE = '# TYPE nv_inference_request_success counter\nnv_inference_request_success{model="mentallama",version="1"} 3\n'


@contextmanager
def metrics_page(port: int, body: str = PAGE) -> Iterator[str]:
    """A real HTTP server on `port` answering `body` at /metrics."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            data = body.encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with serving(Handler, port) as url:
        yield f"{url}/metrics"


def test_candidates_follow_the_launchers_port_layout_then_8002() -> None:
    assert candidate_urls(["a:9001", "grpc://b:8001"], ["a:9000"]) == {
        "a": ["http://a:9002/metrics", "http://a:8002/metrics"],
        "b": ["http://b:8002/metrics"],
    }


def test_a_page_counts_only_with_tritons_counters_of_the_model() -> None:
    port = free_port()
    with metrics_page(port) as url:
        assert probe(url, "mentallama") is None
        assert "another server's" in (probe(url, "ensemble") or "")
    with metrics_page(port, "# nothing here\n") as url:
        assert "not a Triton metrics page" in (probe(url, "mentallama") or "")
    assert probe(f"http://127.0.0.1:{free_port()}/metrics", "mentallama") is not None  # nothing listens


def test_found_on_the_grpc_port_plus_one_and_otherwise_a_warning_with_the_fix() -> None:
    grpc_port = free_port()
    with metrics_page(grpc_port + 1):
        found, warnings = find_metrics_urls([f"127.0.0.1:{grpc_port}"], [], "mentallama", timeout_s=1)
    assert found == [f"http://127.0.0.1:{grpc_port + 1}/metrics"] and warnings == []
    found, warnings = find_metrics_urls([f"127.0.0.1:{grpc_port}"], [], "mentallama", timeout_s=1)
    assert found == [] and len(warnings) == 1
    assert f"127.0.0.1:{grpc_port + 1}" in warnings[0] and "--metrics http://HOST:PORT/metrics" in warnings[0]


def test_plan_keeps_the_users_url_and_otherwise_looks() -> None:
    given = plan_session(BenchOptions(endpoint=["h:9001"], metrics_url=["http://m:1/metrics"]))
    assert given.config.metrics_urls == ["http://m:1/metrics"] and not given.find_metrics
    assert plan_session(BenchOptions(endpoint=["h:9001"])).find_metrics
    off = plan_session(BenchOptions(endpoint=["h:9001"], scrape_metrics=False))
    assert off.config.metrics_urls == [] and not off.find_metrics


@pytest.mark.server
def test_the_terminal_says_when_no_metrics_page_is_found_and_uses_the_one_given(cpu_server, tmp_path) -> None:
    common = ["--endpoint", cpu_server.grpc_url, "--concurrency", "1", "--requests", "2", "--warmup", "0",
              "--input-len", "8", "--output-len", "4", "--no-progress"]  # fmt: skip
    # The test server's metrics port is a free port, not its gRPC port + 1: nothing is found, and it says so.
    lost = CliRunner().invoke(app, [*common, "--output", str(tmp_path), "--name", "lost"])
    assert lost.exit_code == 0, lost.output
    assert "warning: no metrics page found for" in lost.stderr and "--metrics http://HOST:PORT/metrics" in lost.stderr
    assert "Server metrics were not scraped" in (tmp_path / "lost" / "report.md").read_text()
    named = CliRunner().invoke(app, [*common, "--metrics", cpu_server.metrics_url, "--output", str(tmp_path),
                                     "--name", "named"])  # fmt: skip
    assert named.exit_code == 0, named.output
    assert "warning" not in named.stderr
    report = (tmp_path / "named" / "report.md").read_text()
    assert "mentallama/1" in report and "Server metrics were not scraped" not in report
    broken = CliRunner().invoke(app, [*common, "--metrics", f"http://127.0.0.1:{free_port()}/metrics"])
    assert broken.exit_code == 0 and "warning: could not read the server metrics at" in broken.stderr
    assert broken.stderr.count("could not read the server metrics") == 1
