"""Open-loop arrival schedules (when each request should be sent), seeded so runs repeat.

Inter-arrival gaps are gamma-distributed with shape `burstiness` and mean `1 / rate`, as in vLLM's
`get_request`: burstiness 1 is a Poisson process (exponential gaps), < 1 is burstier (the gaps'
squared coefficient of variation is 1 / burstiness, so counts are over-dispersed), > 1 is smoother,
and infinity is a constant gap. Unlike vLLM we do not rescale the schedule to end at exactly
`n / rate`: that would bend the process, and runs stopped by a duration have no `n`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

__all__ = ["arrival_offsets", "index_of_dispersion", "iter_arrival_offsets"]

_BLOCK = 1024  # gaps drawn per numpy call: cheap and still a pure function of the seed


def _gaps(rng: np.random.Generator, rate: float, burstiness: float, size: int) -> np.ndarray:
    if math.isinf(burstiness):
        return np.full(size, 1.0 / rate)
    return rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=size)


def _check(rate: float, burstiness: float) -> None:
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")


def iter_arrival_offsets(rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Endless send times in seconds from the run's start; the first request goes at 0.

    `rate = inf` sends everything at once (offset 0), as vLLM does.
    """
    if math.isinf(rate):
        while True:
            yield 0.0
    _check(rate, burstiness)
    rng = np.random.default_rng(seed)
    now = 0.0
    yield now
    while True:
        for gap in _gaps(rng, rate, burstiness, _BLOCK):
            now += float(gap)
            yield now


def arrival_offsets(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """The first `n` offsets of `iter_arrival_offsets` (same seed, same numbers)."""
    it = iter_arrival_offsets(rate, burstiness, seed)
    return np.fromiter((next(it) for _ in range(n)), dtype=float, count=n)


def index_of_dispersion(offsets: np.ndarray, window_s: float) -> float:
    """Variance / mean of arrival counts in consecutive windows: about 1 for Poisson, > 1 when bursty."""
    offsets = np.asarray(offsets, dtype=float)
    if offsets.size == 0 or window_s <= 0:
        raise ValueError("need arrivals and a positive window")
    n_windows = int(offsets[-1] // window_s)
    if n_windows < 2:
        raise ValueError("schedule too short for two whole windows")
    counts = np.bincount((offsets // window_s).astype(int), minlength=n_windows)[:n_windows]
    return float(counts.var() / counts.mean())
