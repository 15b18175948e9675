"""Evidence made by hand, for tests of decisions that must not depend on a clock."""

from __future__ import annotations

from sparsecc.measure import Interval, LoadReading, RatioEvidence


def evidence(cpu: tuple[float, float, float], wall: tuple[float, float, float] | None = None, load: float = 0.5,
             threads: int = 1, baseline: str = "dense", candidate: str = "rewritten") -> RatioEvidence:
    """Evidence with CPU-time speedup ``cpu`` = (estimate, low, high) (wall clock the same unless given),
    taken at a 1-minute load average of ``load`` on 2 cores."""
    wall = wall or cpu
    reading = LoadReading((load, load, load), (load, load, load), 2)
    return RatioEvidence(baseline, candidate, 40, Interval(*wall), Interval(*cpu), (2.0, 2.0 / wall[0]),
                         (2.0, 2.0 / cpu[0]), reading, threads, False, 0.98, "2026-01-01T00:00:00+00:00", "decided")


FASTER = (1.30, 1.25, 1.35)
SLOWER = (0.70, 0.65, 0.75)
STRADDLES = (1.05, 0.80, 1.40)
