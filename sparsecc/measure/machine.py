"""How busy the machine is: load averages around a measurement.

The 1-minute load average counts the runnable tasks (the measuring process included) averaged
over the last minute, so it lags a change of load by tens of seconds; it is read before and after
every measurement and the larger of the two is used. Divided by the cores this process may run
on, it gives three levels for reports:

- ``quiet`` (below 1 per core): every measure is usable; wall clock is what users see.
- ``loaded`` (1 to 3 per core): other work competes for the cores; wall-clock times take in the
  waiting, CPU time (work done, with ONNX Runtime's spinning off) stays steady.
- ``heavy`` (3 per core and over): wall-clock spreads of 100-4000% were seen here at load 5-9 on
  2 cores; only one-thread CPU time is still read (up to the limit of
  :func:`sparsecc.measure.evidence.too_busy`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

LOADED_PER_CORE = 1.0
HEAVY_PER_CORE = 3.0
LEVELS = ("quiet", "loaded", "heavy")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def read_load() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages (NaN where the system has none)."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return (float("nan"),) * 3
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def load_level(per_core: float) -> str:
    """"quiet", "loaded" or "heavy" for a load average per core (an unknown load counts as loaded)."""
    if per_core != per_core:  # NaN: no load average on this system
        return "loaded"
    if per_core >= HEAVY_PER_CORE:
        return "heavy"
    return "loaded" if per_core >= LOADED_PER_CORE else "quiet"


@dataclass(frozen=True)
class LoadReading:
    """The load averages before and after a measurement, and the cores it was divided by.

    Attributes:
        before: (1, 5, 15)-minute load averages when the measurement started.
        after: The same when it ended.
        cores: Cores this process could run on.
    """

    before: tuple[float, float, float]
    after: tuple[float, float, float]
    cores: int

    @property
    def per_core(self) -> float:
        """The larger 1-minute load average of the two readings, per core."""
        return max(self.before[0], self.after[0]) / self.cores

    @property
    def level(self) -> str:
        return load_level(self.per_core)

    def __str__(self) -> str:
        return f"load {self.before[0]:.2f} -> {self.after[0]:.2f} on {self.cores} cores ({self.level})"

    def to_dict(self) -> dict[str, Any]:
        return {"before": list(self.before), "after": list(self.after), "cores": self.cores,
                "per_core": round(self.per_core, 3), "level": self.level}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoadReading":
        return cls(tuple(float(v) for v in data["before"]), tuple(float(v) for v in data["after"]),
                   int(data["cores"]))
