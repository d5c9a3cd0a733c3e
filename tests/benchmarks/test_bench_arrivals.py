"""Arrival schedules: mean rate and dispersion over a fixed seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mentallama_bench.arrivals import arrival_offsets, index_of_dispersion, iter_arrival_offsets

N = 20_000
RATE = 10.0


def test_poisson_mean_rate_and_unit_dispersion() -> None:
    t = arrival_offsets(N, RATE, burstiness=1.0, seed=7)
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    assert (N - 1) / t[-1] == pytest.approx(RATE, rel=0.03)
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV = 1
    assert index_of_dispersion(t, window_s=1.0) == pytest.approx(1.0, abs=0.12)


def test_gamma_bursty_is_over_dispersed_with_same_rate() -> None:
    t = arrival_offsets(N, RATE, burstiness=0.25, seed=7)
    assert (N - 1) / t[-1] == pytest.approx(RATE, rel=0.05)
    assert index_of_dispersion(t, window_s=1.0) > 2.0


def test_gamma_smooth_is_under_dispersed() -> None:
    t = arrival_offsets(N, RATE, burstiness=4.0, seed=7)
    assert index_of_dispersion(t, window_s=1.0) < 0.6


def test_constant_gaps_when_burstiness_is_infinite() -> None:
    t = arrival_offsets(5, 4.0, burstiness=math.inf)
    assert np.allclose(np.diff(t), 0.25)


def test_same_seed_same_schedule_other_seed_differs() -> None:
    a = arrival_offsets(100, RATE, seed=3)
    assert np.array_equal(a, arrival_offsets(100, RATE, seed=3))
    assert not np.array_equal(a, arrival_offsets(100, RATE, seed=4))
    it = iter_arrival_offsets(RATE, seed=3)
    assert [next(it) for _ in range(100)] == list(a)  # the endless form yields the same numbers


def test_infinite_rate_sends_everything_at_once() -> None:
    assert list(arrival_offsets(3, math.inf)) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("rate", "burstiness"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)])
def test_bad_parameters_are_rejected(rate: float, burstiness: float) -> None:
    with pytest.raises(ValueError):
        arrival_offsets(3, rate, burstiness)
