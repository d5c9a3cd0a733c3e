"""`mentallama_bench.steal`: the hypervisor's share of the CPUs during a run, from /proc/stat."""

from __future__ import annotations

from pathlib import Path

import pytest

from mentallama_bench import steal
from mentallama_bench.steal import CpuCounters, steal_percent


def test_steal_is_the_stolen_share_of_all_cpu_time() -> None:
    assert steal_percent(CpuCounters(1000, 10), CpuCounters(1400, 110)) == pytest.approx(25.0)
    assert steal_percent(CpuCounters(1000, 10), CpuCounters(1000, 10)) is None  # no time passed: no share


def test_counters_read_the_cpu_line_of_proc_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice: guest time is already in user
    stat.write_text("cpu  100 5 20 800 10 0 5 60 40 0\ncpu0 50 2 10 400 5 0 2 30 20 0\n")
    real_path = steal.Path
    monkeypatch.setattr(steal, "Path", lambda name: stat if name == "/proc/stat" else real_path(name))
    assert CpuCounters.now() == CpuCounters(1000, 60)
    stat.unlink()
    assert CpuCounters.now() == CpuCounters(0, 0)  # no /proc/stat: unknown, and steal_percent says None


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="Linux only: /proc/stat")
def test_counters_on_this_machine_only_grow() -> None:
    first = CpuCounters.now()
    sum(range(200_000))
    second = CpuCounters.now()
    assert second.total >= first.total > 0 and second.steal >= first.steal >= 0
