"""The benchmark figures say what they measured and are read the same way by everyone (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mentallama_bench.records import RunResult
from mentallama_bench.report import SERVER_TIME_NOTE, make_figures, min_samples, plot_session, write_session

pytest.importorskip("matplotlib")


def stats(p50: float, count: int) -> dict:
    return {"unit": "ms", "count": count, "p50": p50, "p90": p50 * 1.5, "p99": p50 * 2}


def summary(concurrency: int, count: int) -> dict:
    return {
        "run": {
            "label": f"triton-grpc-c{concurrency}",
            "backend": "triton-grpc",
            "model": "mentallama",
            "load": {"concurrency": concurrency, "rate": None, "label": f"c{concurrency}"},
            "dataset": {"name": "synthetic", "input_len": 128, "output_len": 32, "lengths": "tokenizer"},
            "stop": {"requests": count, "duration_s": None},
            "sampling": {"force_output_len": True},
        },
        "output_token_throughput": 20.0 * concurrency,
        "ttft": stats(100 + concurrency, count),
        "itl": stats(30 + concurrency, count),
        "e2e_latency": stats(1000 + concurrency, count),
    }


def test_min_samples():
    assert (min_samples(50), min_samples(90), min_samples(99)) == (2, 10, 100)


def test_figures_state_settings_start_at_zero_and_label_concurrency_with_numbers():
    import matplotlib.pyplot as plt

    figures = make_figures([summary(c, 50) for c in (1, 2, 4)])
    try:
        for fig in figures.values():
            title = fig._suptitle.get_text().replace("\n", " ")  # wrapped to the figure's width
            for part in ("mentallama", "input 128 tokens / output 32 tokens", "50 requests/run", "c1, c2, c4"):
                assert part in title
            for ax in fig.axes:
                assert ax.get_ylim()[0] == 0
            # 50 samples: p99 needs 100, so it is marked, and the note explains the hollow markers
            assert any("too few samples" in t.get_text() for t in fig.texts)
            hollow = [line for ax in fig.axes for line in ax.get_lines() if line.get_markerfacecolor() == "white"]
            assert hollow
        fig = figures["latency_vs_load"]
        fig.canvas.draw()
        labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
        assert labels == ["1", "2", "4"]
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_enough_samples_are_not_marked():
    import matplotlib.pyplot as plt

    figures = make_figures([summary(c, 200) for c in (1, 2)])
    try:
        for fig in figures.values():
            assert not any("too few samples" in t.get_text() for t in fig.texts)
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_report_explains_server_vs_client_time(tmp_path: Path):
    server = {"http://x/metrics": {"models": {"mentallama/1": {
        "request_success": 5, "request_failure": 0, "avg_queue_ms": 0.01, "avg_compute_infer_ms": 0.7,
        "avg_request_ms": 0.8}}, "changed": []}}  # fmt: skip
    results = []
    for c in (1, 2):
        s = summary(c, 5) | {"requests": {"completed": 5, "failed": 0}, "request_throughput": 1.0,
                             "goodput": None, "token_count_source": {"server": 5}, "errors": {},
                             "slo": {}, "server": server}  # fmt: skip
        results.append(RunResult(s["run"]["label"], [], s))
    results[1].summary["run"]["interrupted"] = True
    write_session(tmp_path, results)
    report = (tmp_path / "report.md").read_text()
    assert SERVER_TIME_NOTE in report and "nv_inference_request_duration_us" in report
    assert "**interrupted**" in report and "triton-grpc-c2" in report
    assert set(plot_session(tmp_path, [r.summary for r in results])) == {
        "throughput_vs_ttft", "throughput_vs_itl", "latency_vs_load"}


def _long_summary(concurrency: int, input_tokens: float | None) -> dict:
    """A run whose settings line is long (the words dataset, many loads), as a real sweep gives."""
    run = summary(concurrency, 50)
    run["run"] = run["run"] | {"model": "mentallama", "backend": "triton-grpc-stream",
                               "dataset": {"name": "synthetic", "input_len": 128, "output_len": 256,
                                           "lengths": "words (approximate)"}}  # fmt: skip
    if input_tokens is not None:
        run["input_tokens"] = {"unit": "tokens", "count": 50, "mean": input_tokens}
    return run


def test_titles_fit_their_figure_and_state_lengths_in_tokens():
    """Issue 22: the settings line was cut off at both edges of two plots, and said "tokens (words)"."""
    import matplotlib.pyplot as plt

    figures = make_figures([_long_summary(c, 171.4) for c in (1, 2, 4, 8, 16, 32, 64)])
    try:
        for name, fig in figures.items():
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            box = fig._suptitle.get_window_extent(renderer)
            width, height = fig.bbox.width, fig.bbox.height
            assert box.x0 >= 0 and box.x1 <= width and box.y1 <= height, (name, box, width)
            for ax in fig.axes:  # the settings do not run into the plots' own titles
                assert ax.title.get_window_extent(renderer).y1 <= box.y0 + 1, name
            title = fig._suptitle.get_text().replace("\n", " ")
            assert "input ~171 tokens (server count) / output 256 tokens" in title and "words" not in title
    finally:
        for fig in figures.values():
            plt.close(fig)
    figures = make_figures([_long_summary(1, None)])
    try:
        assert "input 128 words (no --tokenizer)" in figures["latency_vs_load"]._suptitle.get_text()
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_report_says_when_server_metrics_were_not_read():
    from mentallama_bench.report import _server_lines

    def results(server: dict) -> list[RunResult]:
        s = summary(1, 5) | {"requests": {"completed": 5, "failed": 0}, "request_throughput": 1.0, "goodput": None,
                             "token_count_source": {"server": 5}, "errors": {}, "slo": {}, "server": server}
        return [RunResult(s["run"]["label"], [], s)]

    report = "\n".join(_server_lines(results({})))
    assert "Server metrics were not scraped" in report and "No per-model Triton counters changed" not in report
    report = "\n".join(_server_lines(results({"http://h:8002/metrics": {"error": "URLError: refused"}})))
    assert "could not scrape http://h:8002/metrics" in report and "--metrics http://HOST:PORT/metrics" in report
    assert "No per-model Triton counters changed" not in report
    changed = {"http://h:8002/metrics": {"models": {}, "changed": []}}
    assert "No per-model Triton counters changed" in "\n".join(_server_lines(results(changed)))
