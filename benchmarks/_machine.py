"""What the benchmark scripts print about the machine they ran on."""

from __future__ import annotations


def loadavg() -> str:
    """The 1/5/15-minute load average: on a shared machine it says how far wall-clock
    numbers can be trusted ("unknown" where /proc is absent)."""
    try:
        with open("/proc/loadavg") as stats:
            return " ".join(stats.read().split()[:3])
    except OSError:
        return "unknown"
