"""Artefacts of a benchmark: per-run JSON/CSV, session tables, PNG plots and a Markdown report.

Layout under the output folder:
    <run label>/requests.json   every request (with per-chunk offsets)
    <run label>/requests.csv    every request, scalar columns
    <run label>/summary.json    metrics at top level (`ttft`, `itl`, `e2e_latency`, ...), `run`, `server`
    <run label>/summary.csv     the same summary, one flat row
    sweep.json, sweep.csv       one flat row per run
    plots/*.png                 throughput vs TTFT/ITL, latency percentiles vs load
    report.md                   tables and links to all of the above
"""

from __future__ import annotations

import csv
import json
import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mentallama_bench.compare import compare_summaries, format_comparison
from mentallama_bench.metrics import flatten_summary
from mentallama_bench.records import RequestRecord, RunResult

__all__ = [
    "PLOT_FILES",
    "SERVER_TIME_NOTE",
    "fixed_width",
    "format_table",
    "make_figures",
    "min_samples",
    "plot_session",
    "settings_line",
    "summary_row",
    "write_run",
    "write_session",
]

PLOT_FILES = {
    "throughput_vs_ttft": "plots/throughput_vs_ttft.png",
    "throughput_vs_itl": "plots/throughput_vs_itl.png",
    "latency_vs_load": "plots/latency_vs_load.png",
}


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def summary_row(summary: dict[str, Any]) -> dict[str, Any]:
    """One flat row: run identity, every metric, per-model server averages (not the raw diff)."""
    run = summary.get("run", {})
    load = run.get("load", {})
    row: dict[str, Any] = {
        "label": run.get("label"),
        "backend": run.get("backend"),
        "concurrency": load.get("concurrency"),
        "rate": load.get("rate"),
        "burstiness": load.get("burstiness"),
        "max_concurrency": load.get("max_concurrency"),
    }
    metrics = {k: v for k, v in summary.items() if k not in ("run", "server")}
    row.update(flatten_summary(metrics))
    for url, section in summary.get("server", {}).items():
        for model, stats in section.get("models", {}).items():
            for key, value in stats.items():
                row[f"server_{model}_{key}"] = value
        if "error" in section:
            row[f"server_error_{url}"] = section["error"]
    return row


def write_run(folder: Path, records: Sequence[RequestRecord], summary: dict[str, Any]) -> Path:
    """Write one run's four files; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "requests.json", [r.to_dict() for r in records])
    _write_csv(folder / "requests.csv", [r.to_row() for r in records])
    _write_json(folder / "summary.json", summary)
    _write_csv(folder / "summary.csv", [summary_row(summary)])
    return folder


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_TABLE = (
    ("run", lambda s: s["run"]["label"]),
    ("ok", lambda s: s["requests"]["completed"]),
    ("fail", lambda s: s["requests"]["failed"]),
    ("req/s", lambda s: _fmt(s["request_throughput"], 2)),
    ("out tok/s", lambda s: _fmt(s["output_token_throughput"])),
    ("goodput", lambda s: _fmt(s["goodput"], 2)),
    ("TTFT p50", lambda s: _fmt(s["ttft"]["p50"])),
    ("TTFT p99", lambda s: _fmt(s["ttft"]["p99"])),
    ("ITL p50", lambda s: _fmt(s["itl"]["p50"])),
    ("ITL p99", lambda s: _fmt(s["itl"]["p99"])),
    ("E2E p50", lambda s: _fmt(s["e2e_latency"]["p50"])),
    ("E2E p99", lambda s: _fmt(s["e2e_latency"]["p99"])),
    ("tokens", lambda s: ",".join(s["token_count_source"]) or "-"),
)


def _table_rows(summaries: Iterable[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = [name for name, _ in _TABLE]
    return header, [[str(get(s)) for _, get in _TABLE] for s in summaries]


def format_table(summaries: Iterable[dict[str, Any]]) -> str:
    """Fixed-width terminal table (latencies in ms, goodput in good requests/s)."""
    header, rows = _table_rows(summaries)
    return fixed_width(header, rows)


def fixed_width(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Right-aligned columns for the terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def min_samples(pct: float) -> int:
    """Samples a percentile needs before it says anything beyond the maximum: at least one sample
    above it (p50: 2, p90: 10, p99: 100)."""
    return math.ceil(100 / (100 - pct) - 1e-9)


def settings_line(summaries: Sequence[dict[str, Any]]) -> str:
    """What the figures measured, for their title: model, prompt and answer lengths, requests, loads."""
    if not summaries:
        return ""
    run = summaries[0]["run"]
    data = run.get("dataset") or {}
    if "input_len" in data:
        prompt = f"input {data['input_len']} tokens"
        if data.get("lengths", "tokenizer") != "tokenizer":
            # Without --tokenizer the prompts are input_len words; the server's count says what that is in tokens.
            counted = [s.get("input_tokens", {}).get("mean") for s in summaries]
            counted = [c for c in counted if c]
            prompt = (f"input ~{sum(counted) / len(counted):.0f} tokens (server count)" if counted
                      else f"input {data['input_len']} words (no --tokenizer)")  # fmt: skip
        lengths = f"{prompt} / output {data['output_len']} tokens"
    else:
        lengths = f"{data.get('name', 'dataset')} prompts, max_tokens {data.get('max_tokens', '?')}"
    if run.get("sampling", {}).get("force_output_len"):
        lengths += ", forced"
    stop = run.get("stop") or {}
    requests = f"{stop['requests']} requests/run" if stop.get("requests") else f"{stop.get('duration_s')} s/run"
    loads = ", ".join(dict.fromkeys(s["run"]["load"]["label"] for s in summaries))
    backends = ", ".join(dict.fromkeys(s["run"]["backend"] for s in summaries))
    return f"model {run.get('model')} ({backends}); {lengths}; {requests}; loads {loads} (c = concurrency, r = req/s)"


def _x_axis(summaries: Sequence[dict[str, Any]]) -> tuple[str, list[float]]:
    loads = [s["run"]["load"] for s in summaries]
    if all(load.get("concurrency") for load in loads):
        return "concurrency (clients)", [float(load["concurrency"]) for load in loads]
    if all(load.get("rate") is not None for load in loads):
        return "request rate (req/s)", [float(load["rate"]) for load in loads]
    return "run", [float(i) for i in range(len(loads))]


def _by_backend(summaries: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        groups.setdefault(s["run"]["backend"], []).append(s)
    return groups


_THIN_NOTE = "hollow markers: percentile from too few samples (p50 < 2, p90 < 10, p99 < 100 requests)"


def _plot_percentile(ax: Any, x: Sequence[float], runs: Sequence[dict[str, Any]], metric: str, pct: int,
                     style: str, color: str, label: str) -> bool:  # fmt: skip
    """A percentile line; points from too few samples get hollow markers. True when any did."""
    y = [s[metric][f"p{pct}"] if s[metric][f"p{pct}"] is not None else math.nan for s in runs]
    marker, line = style[0], style[1:]
    ax.plot(x, y, line, color=color, label=label, marker=marker)
    thin = [i for i, s in enumerate(runs) if (s[metric].get("count") or 0) < min_samples(pct)]
    if thin:
        ax.plot([x[i] for i in thin], [y[i] for i in thin], linestyle="none", marker=marker, color=color,
                markerfacecolor="white", markeredgewidth=1.5)  # fmt: skip
    return bool(thin)


def wrap_to_width(text: str, width_in: float, fontsize: float) -> list[str]:
    """`text` in lines that fit a figure `width_in` inches wide at `fontsize` points (a character is at most about
    0.6 em wide in DejaVu Sans, with a margin on both sides)."""
    per_line = max(20, int((width_in * 72 - 24) / (0.6 * fontsize)))
    return textwrap.wrap(text, per_line) or [""]


def _finish(fig: Any, summaries: Sequence[dict[str, Any]], thin: bool) -> None:
    """Run settings on top (wrapped to the figure's width, so nothing is cut off), the few-samples note at the
    bottom when it applies."""
    lines = wrap_to_width(settings_line(summaries), fig.get_figwidth(), 8)
    fig.suptitle("\n".join(lines), fontsize=8)
    if thin:
        fig.text(0.01, 0.01, "\n".join(wrap_to_width(_THIN_NOTE, fig.get_figwidth(), 7)), fontsize=7, style="italic")
    title_in = (len(lines) * 8 * 1.3 + 10) / 72  # lines of 8 pt at 1.3 line spacing, plus a margin, in inches
    top = 1 - title_in / fig.get_figheight()
    fig.tight_layout(rect=(0, 0.04 if thin else 0, 1, top))


def make_figures(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The matplotlib figures by name (PLOT_FILES' keys); y axes start at zero, concurrency ticks are
    the concurrencies run, each figure's title states the run settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    groups = _by_backend(summaries)
    figures: dict[str, Any] = {}

    for name, metric, title in (
        ("throughput_vs_ttft", "ttft", "Time to first token"),
        ("throughput_vs_itl", "itl", "Inter-token latency"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.8))
        thin = False
        for color, (backend, runs) in enumerate(groups.items()):
            x = [s["output_token_throughput"] or 0.0 for s in runs]
            for pct, style in ((50, "o-"), (99, "s--")):
                thin |= _plot_percentile(ax, x, runs, metric, pct, style, f"C{color}", f"{backend} p{pct}")
            for s, xi in zip(runs, x, strict=True):
                yi = s[metric]["p50"]
                if yi is not None:
                    ax.annotate(
                        s["run"]["load"]["label"],
                        (xi, yi),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=7,
                    )
        ax.set_xlabel("output token throughput (tok/s)")
        ax.set_ylabel(f"{title} (ms)")
        ax.set_title(f"Throughput vs {title.lower()}", fontsize=10)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        _finish(fig, summaries, thin)
        figures[name] = fig

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    thin = False
    for ax, (metric, title) in zip(
        axes, (("ttft", "TTFT"), ("itl", "ITL"), ("e2e_latency", "E2E latency")), strict=True
    ):
        ticks: set[float] = set()
        xlabel = "run"
        for color, (backend, runs) in enumerate(groups.items()):
            xlabel, x = _x_axis(runs)
            ticks.update(x)
            for pct, style in ((50, "o-"), (90, "^:"), (99, "s--")):
                thin |= _plot_percentile(ax, x, runs, metric, pct, style, f"C{color}", f"{backend} p{pct}")
        ax.set_xlabel(xlabel)
        if xlabel.startswith("concurrency") and len(ticks) > 1:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(ticks))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"{title} (ms)")
        ax.set_title(f"{title} percentiles", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    _finish(fig, summaries, thin)
    figures["latency_vs_load"] = fig
    return figures


def plot_session(folder: Path, summaries: Sequence[dict[str, Any]]) -> dict[str, Path]:
    """Write the PNG plots; returns name -> path. Needs matplotlib (headless Agg backend)."""
    import matplotlib.pyplot as plt

    (folder / "plots").mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, fig in make_figures(summaries).items():
        written[name] = folder / PLOT_FILES[name]
        fig.savefig(written[name], dpi=100)
        plt.close(fig)
    return written


SERVER_TIME_NOTE = (
    "Why `avg request ms` here is far below the client's E2E latency: the front model `mentallama` and the "
    "CPU `tensorrt_llm` step are decoupled Python models, whose `execute()` returns once it has handed the "
    "request on, before the generation ends; Triton's request duration counter "
    "(`nv_inference_request_duration_us`) stops there. It measures accepting the request (about a "
    "millisecond), not generating its tokens, which are sent afterwards as streamed responses. "
    "The client's TTFT, ITL and E2E above include "
    "the generation, the queueing in the engine's batch and the network; compare those, not this column, "
    "with other servers."
)


def _server_lines(results: Sequence[RunResult]) -> list[str]:
    header = ["run", "model", "success", "failure", "avg queue ms", "avg compute infer ms", "avg request ms"]
    rows, changed, errors = [], [], []
    for r in results:
        for url, section in r.summary.get("server", {}).items():
            if "error" in section:
                errors.append(f"- {r.label}: could not scrape {url}: {section['error']}")
                continue
            for model, st in section["models"].items():
                rows.append(
                    [
                        r.label,
                        model,
                        str(st["request_success"]),
                        str(st["request_failure"]),
                        _fmt(st["avg_queue_ms"], 2),
                        _fmt(st["avg_compute_infer_ms"], 1),
                        _fmt(st["avg_request_ms"], 1),
                    ]
                )
            changed.append(f"- {r.label} ({url}): " + ", ".join(f"`{f}`" for f in section["changed"]))
    lines = ["## Server side (Prometheus, after - before each run)", ""]
    scraped = any("error" not in section for r in results for section in r.summary.get("server", {}).values())
    if rows:
        lines += [_markdown_table(header, rows), "", SERVER_TIME_NOTE, ""]
    elif scraped:
        lines += ["No per-model Triton counters changed.", ""]
    elif not errors:
        lines += ["Server metrics were not scraped: `--no-metrics`, a bare-engine run, or no metrics page found on the "
                  "endpoint's host (the terminal said which URLs were tried); `--metrics URL` names it.", ""]
    if errors:
        errors.append("  (to fix: `--metrics http://HOST:PORT/metrics`, the URL `mentallama-serve` prints on start)")
    if changed:
        lines += [
            "Metric families that changed (full deltas in each run's `summary.json`, key `server`):",
            "",
        ]
        lines += changed + [""]
    return lines + errors + ([""] if errors else [])


def write_session(folder: Path, results: Sequence[RunResult]) -> dict[str, Path]:
    """sweep.json/csv, plots and report.md for a list of runs; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    summaries = [r.summary for r in results]
    rows = [summary_row(s) for s in summaries]
    paths = {
        "sweep_json": folder / "sweep.json",
        "sweep_csv": folder / "sweep.csv",
        "report": folder / "report.md",
    }
    _write_json(paths["sweep_json"], rows)
    _write_csv(paths["sweep_csv"], rows)
    plot_note = ""
    try:
        paths.update(plot_session(folder, summaries) if summaries else {})
    except ImportError:
        plot_note = "Plots skipped: matplotlib is not installed."

    first = summaries[0]["run"] if summaries else {}
    sources = sorted({src for s in summaries for src in s["token_count_source"]})
    lines = [
        "# MentaLLaMA serving benchmark",
        "",
        f"- model: `{first.get('model')}`; dataset: `{json.dumps(first.get('dataset'))}`",
        f"- sampling: `{json.dumps(first.get('sampling'))}`",
        f"- warm-up requests per run (not measured): {first.get('warmup_requests')}",
        f"- stop: `{json.dumps(first.get('stop'))}`; seed: {first.get('seed')}",
        f"- output tokens counted by: {', '.join(sources) or '-'} (mode `{first.get('token_counting')}`)",
        f"- SLO (ms): `{json.dumps(summaries[0]['slo']) if summaries else '-'}`",
        *(["- **interrupted** (Ctrl-C): " + ", ".join(r.label for r in results if r.interrupted)
           + " kept only the requests that had finished"] if any(r.interrupted for r in results) else []),
        "",
        "Latencies in ms; throughput in requests/s and output tokens/s; goodput in good requests/s.",
        "Definitions: see `benchmarks/README.md`.",
        "",
        "## Results",
        "",
    ]
    header, table = _table_rows(summaries)
    for row, r in zip(table, results, strict=True):
        if r.folder is not None:
            row[0] = f"[{row[0]}]({r.folder.relative_to(folder).as_posix()}/summary.json)"
    lines += [_markdown_table(header, table), ""]
    errors = [
        f"- {r.label}: " + ", ".join(f"{k} x{v}" for k, v in r.summary["errors"].items())
        for r in results
        if r.summary["errors"]
    ]
    if errors:
        lines += ["## Errors (by gRPC status or client code)", "", *errors, ""]
    lines += ["## Plots", ""]
    if plot_note:
        lines += [plot_note, ""]
    for name in PLOT_FILES:
        if name in paths:
            lines += [f"![{name}]({PLOT_FILES[name]})", ""]
    comparison = compare_summaries(summaries)
    if comparison:
        paths["comparison"] = folder / "comparison.json"
        _write_json(paths["comparison"], comparison)
        table = format_comparison(comparison)
        lines += [
            "## Served stack vs bare engine (served / engine)",
            "",
            "Same load, same prompts and seed; the engine ran in-process (no Triton, no gRPC). Latency",
            "ratios above 1 and throughput ratios below 1 are the cost of serving.",
            "Values: `comparison.json`.",
            "",
            _markdown_table(table[0], table[1:]),
            "",
        ]
    lines += _server_lines(results)
    paths["report"].write_text("\n".join(lines), encoding="utf-8")
    return paths
