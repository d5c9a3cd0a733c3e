"""Served stack vs bare engine: ratios of the same load's metrics (pure functions).

A ratio is served / engine for every metric, so latency ratios above 1 and throughput ratios below 1
are the cost of serving (Triton, gRPC, the Python-backend hops, detokenisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["COMPARED", "compare_summaries", "format_comparison"]

# (column, summary key, statistic or None for a scalar)
COMPARED: tuple[tuple[str, str, str | None], ...] = (
    ("TTFT p50", "ttft", "p50"),
    ("TTFT p99", "ttft", "p99"),
    ("ITL p50", "itl", "p50"),
    ("E2E p50", "e2e_latency", "p50"),
    ("E2E p99", "e2e_latency", "p99"),
    ("out tok/s", "output_token_throughput", None),
    ("req/s", "request_throughput", None),
)


def _value(summary: dict[str, Any], key: str, stat: str | None) -> float | None:
    value = summary.get(key)
    if stat is not None:
        value = value.get(stat) if isinstance(value, dict) else None
    return value if isinstance(value, int | float) else None


def compare_summaries(
    summaries: Sequence[dict[str, Any]], baseline_backend: str = "engine"
) -> list[dict[str, Any]]:
    """One row per (served backend, load) that has an engine run of the same load label."""
    base = {s["run"]["load"]["label"]: s for s in summaries if s["run"]["backend"] == baseline_backend}
    rows = []
    for s in summaries:
        run = s["run"]
        if run["backend"] == baseline_backend or run["load"]["label"] not in base:
            continue
        b = base[run["load"]["label"]]
        row: dict[str, Any] = {
            "load": run["load"]["label"],
            "served": run["label"],
            "engine": b["run"]["label"],
        }
        for column, key, stat in COMPARED:
            served, bare = _value(s, key, stat), _value(b, key, stat)
            row[column] = {
                "served": served,
                "engine": bare,
                "ratio": served / bare if served is not None and bare not in (None, 0) else None,
            }
        rows.append(row)
    return rows


def format_comparison(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Header + rows of `served/engine` ratios, as strings (for the terminal and Markdown tables)."""
    table = [["served run", *(c for c, _, _ in COMPARED)]]
    for row in rows:
        cells = [row["served"]]
        for column, _, _ in COMPARED:
            ratio = row[column]["ratio"]
            cells.append("-" if ratio is None else f"{ratio:.2f}x")
        table.append(cells)
    return table
