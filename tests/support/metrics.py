"""Reading a server's Prometheus page: one sample, the engine's gauges, and polling them."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass


def scrape_metric(metrics_url: str, name: str, labels: str = "") -> float | None:
    """Value of one Prometheus sample, e.g. `mentallama_engine_requests`, `state="active"`."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name) and (not labels or labels in line):
                return float(line.rsplit(" ", 1)[1])
    return None


@dataclass(frozen=True)
class EngineGauges:
    active: float | None
    tracked: float | None
    blocks_used: float | None

    @property
    def idle(self) -> bool:
        return self.active == 0 and self.tracked == 0


def engine_gauges(metrics_url: str) -> EngineGauges:
    return EngineGauges(
        scrape_metric(metrics_url, "mentallama_engine_requests", 'state="active"'),
        scrape_metric(metrics_url, "mentallama_engine_tracked_requests"),
        scrape_metric(metrics_url, "mentallama_engine_kv_cache_blocks", 'state="used"'),
    )


def wait_gauges(
    metrics_url: str, condition: Callable[[EngineGauges], bool], timeout_s: float = 30.0, poll_s: float = 0.05
) -> tuple[EngineGauges, float]:
    """Poll the gauges until `condition` holds; returns the last reading and the seconds it took
    (the reading that failed the condition when it timed out)."""
    started = time.monotonic()
    while True:
        gauges = engine_gauges(metrics_url)
        elapsed = time.monotonic() - started
        if condition(gauges) or elapsed > timeout_s:
            return gauges, elapsed
        time.sleep(poll_s)


def wait_engine(metrics_url: str, busy: bool, within_s: float) -> None:
    """Until the engine reports an active request (``busy``) or none; fails after ``within_s`` (also
    when the server lacks the gauge)."""
    gauges, _ = wait_gauges(metrics_url, lambda g: g.active is not None and bool(g.active) == busy,
                            timeout_s=within_s, poll_s=0.02)  # fmt: skip
    assert gauges.active is not None, "gauge mentallama_engine_requests missing from the server's metrics"
    assert bool(gauges.active) == busy, f"engine {'not busy' if busy else 'still busy'} after {within_s} s: {gauges}"
