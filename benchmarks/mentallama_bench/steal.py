"""CPU time the hypervisor gave to other guests during a run (`steal` in /proc/stat), for the reports.

On a shared virtual machine a run can lose a large part of its CPUs to neighbours without the load average or
the run's own processes showing it: in one session on the 2-core CI kind, runs of the same side differed by up
to 40 % while the machine as a whole had 3.7 % steal. Each run's share says which runs measured a machine that
was not the same machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

__all__ = ["CpuCounters", "steal_percent"]


class CpuCounters(NamedTuple):
    """All CPU time and the stolen part, in clock ticks since boot summed over the CPUs; 0 where unknown."""

    total: int
    steal: int

    @classmethod
    def now(cls) -> CpuCounters:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return cls(0, 0)
        # cpu user nice system idle iowait irq softirq steal guest guest_nice; guest time is inside user.
        ticks = [int(v) for v in fields[1:9]]
        return cls(sum(ticks), ticks[7] if len(ticks) > 7 else 0)


def steal_percent(before: CpuCounters, after: CpuCounters) -> float | None:
    """Share of all CPU time between the two readings that was stolen; None without /proc/stat."""
    total = after.total - before.total
    return None if total <= 0 else 100.0 * (after.steal - before.steal) / total
