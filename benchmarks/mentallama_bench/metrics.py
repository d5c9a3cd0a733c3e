"""Run metrics from request records: pure functions, no I/O, no clock.

Definitions (the ones genai-perf and vLLM's `benchmark_serving` use; written out in README.md):
- `ttft`: first text-bearing response - send, per successful request.
- `itl`: (e2e - ttft) / (output_tokens - 1) per successful request with >= 2 output tokens
  (genai-perf's `inter_token_latency`, vLLM's TPOT).
- `e2e_latency`: last text-bearing response - send, per successful request.
- `duration_s`: last request end - first request send, over every measured request.
- `request_throughput`: successful requests / duration; `output_token_throughput`: output tokens
  of successful requests / duration; `goodput`: successful requests meeting every SLO / duration.
- Statistics: mean, population std (numpy's default, as both tools), min, max and linear-interpolated
  percentiles (`numpy.percentile`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mentallama_bench.records import RequestRecord

__all__ = [
    "PERCENTILES",
    "SLO",
    "benchmark_duration",
    "describe",
    "flatten_summary",
    "summarize",
]

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
_MS = 1000.0


def describe(values: Sequence[float] | np.ndarray, unit: str, scale: float = 1.0) -> dict[str, Any]:
    """count/mean/std/min/max/p50/p90/p95/p99 of `values * scale`; all None when empty."""
    arr = np.asarray(values, dtype=float) * scale
    stats: dict[str, Any] = {"unit": unit, "count": int(arr.size)}
    keys = ["mean", "std", "min", "max", *(f"p{p}" for p in PERCENTILES)]
    if arr.size == 0:
        stats.update(dict.fromkeys(keys))
        return stats
    stats.update(
        mean=float(arr.mean()),
        std=float(arr.std()),
        min=float(arr.min()),
        max=float(arr.max()),
    )
    for p, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES), strict=True):
        stats[f"p{p}"] = float(v)
    return stats


@dataclass(frozen=True)
class SLO:
    """User service-level objectives in milliseconds; a request is good when it meets all that are set."""

    ttft_ms: float | None = None
    itl_ms: float | None = None
    e2e_ms: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> SLO:
        """`"ttft:200,itl:50,e2e:5000"` (ms). Unknown keys are an error, not silently ignored."""
        if not text:
            return cls()
        names = {"ttft": "ttft_ms", "itl": "itl_ms", "e2e": "e2e_ms", "e2e_latency": "e2e_ms"}
        values: dict[str, float] = {}
        for part in text.split(","):
            key, sep, value = part.strip().partition(":")
            if not sep or key.strip() not in names:
                raise ValueError(f"bad SLO {part!r}: expected ttft:MS, itl:MS or e2e:MS")
            values[names[key.strip()]] = float(value)
        return cls(**values)

    @property
    def is_set(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.itl_ms, self.e2e_ms))

    def met_by(self, record: RequestRecord) -> bool:
        """Failed requests are never good. A request with < 2 output tokens has no ITL: its ITL counts
        as 0 (vLLM's rule), so only its TTFT and E2E are checked."""
        if not record.success or record.ttft is None or record.e2e_latency is None:
            return False
        checks = (
            (self.ttft_ms, record.ttft),
            (self.itl_ms, record.itl or 0.0),
            (self.e2e_ms, record.e2e_latency),
        )
        return all(limit is None or value * _MS <= limit for limit, value in checks)

    def to_dict(self) -> dict[str, float | None]:
        return {"ttft_ms": self.ttft_ms, "itl_ms": self.itl_ms, "e2e_ms": self.e2e_ms}


def benchmark_duration(records: Iterable[RequestRecord]) -> float:
    """Last end - first send over every record (failures included: they occupied the window too)."""
    records = list(records)
    if not records:
        return 0.0
    return max(r.end_s for r in records) - min(r.start_s for r in records)


def _rate(count: float, duration: float) -> float | None:
    return count / duration if duration > 0 else None


def summarize(
    records: Sequence[RequestRecord], slo: SLO | None = None, duration_s: float | None = None
) -> dict[str, Any]:
    """The run summary. `duration_s` defaults to `benchmark_duration(records)`."""
    slo = slo or SLO()
    duration = benchmark_duration(records) if duration_s is None else duration_s
    ok = [r for r in records if r.success]
    errors = Counter(r.error_code or "UNKNOWN" for r in records if not r.success)

    out_tokens = [r.output_tokens or 0 for r in ok]
    in_known = [r.input_tokens for r in ok if r.input_tokens is not None]
    total_out = int(sum(out_tokens))
    total_in = int(sum(in_known)) if len(in_known) == len(ok) else None

    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [r.itl for r in ok if r.itl is not None]
    e2es = [r.e2e_latency for r in ok if r.e2e_latency is not None]
    per_user = [(r.output_tokens or 0) / r.e2e_latency for r in ok if r.e2e_latency and r.e2e_latency > 0]
    queues = [r.client_queue for r in records if r.client_queue is not None]
    good = sum(1 for r in ok if slo.met_by(r)) if slo.is_set else None

    return {
        "requests": {"total": len(records), "completed": len(ok), "failed": len(records) - len(ok)},
        "errors": dict(sorted(errors.items())),
        "duration_s": duration,
        "request_throughput": _rate(len(ok), duration),
        "output_token_throughput": _rate(total_out, duration),
        "total_token_throughput": None if total_in is None else _rate(total_in + total_out, duration),
        "goodput": None if good is None else _rate(good, duration),
        "good_requests": good,
        "slo": slo.to_dict(),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "ttft": describe(ttfts, "ms", _MS),
        "itl": describe(itls, "ms", _MS),
        "e2e_latency": describe(e2es, "ms", _MS),
        "output_token_throughput_per_user": describe(per_user, "tok/s"),
        "input_tokens": describe(in_known, "tokens"),
        "output_tokens": describe(out_tokens, "tokens"),
        "client_queue": describe(queues, "ms", _MS),
        "token_count_source": dict(sorted(Counter(r.token_source or "none" for r in ok).items())),
    }


def flatten_summary(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested summary -> one flat row (`ttft_p99`, `requests_failed`, ...) for CSV and tables."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_summary(value, f"{name}_"))
        elif isinstance(value, list | tuple):
            flat[name] = ";".join(str(v) for v in value)
        else:
            flat[name] = value
    return flat
