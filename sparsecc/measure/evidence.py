"""What paired runs showed (evidence), and the verdict it supports at a threshold.

A :class:`RatioEvidence` is what a timing cache entry holds: the paired speedup of a candidate
over its baseline by wall clock and by CPU time, each with its interval, the medians, the load
around the runs, when they were taken, the thread count and whether ONNX Runtime's threads could
spin. It holds no verdict: :func:`judge` reaches one from it at whatever threshold a decision
needs, the same way every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparsecc.measure.machine import LoadReading, load_level
from sparsecc.measure.stats import Interval

MEASURE_NAMES = {"cpu": "CPU time", "wall": "wall clock"}
OUTCOMES = ("faster", "slower", "inconclusive")


# A verdict must clear its threshold by this much: CPU-time speedups of one pair of models moved
# by up to 5% between runs here (BENCHMARKS.md), so a difference smaller than that is not one
# timing can be trusted to call the same way twice; the analytic model decides those.
MARGIN = 0.05

# One-thread CPU-time ratios stayed within 2% from a quiet machine up to 6.9 per core here
# (BENCHMARKS.md); beyond the load they were tested at they are not trusted.
ONE_THREAD_LIMIT_PER_CORE = 7.0


def deciding_measure(threads: int) -> str:
    """The measure a verdict is read from: "cpu" with one thread, else "wall".

    With one thread, CPU time is the time of the run minus the time spent waiting for a core: on
    a quiet machine the two agree, under load CPU time stays and wall clock grows. With more
    threads, CPU time also counts the work of every thread (a candidate that parallelises worse
    looks better by it than by wall clock), so wall clock decides, and only on a quiet machine.
    """
    return "cpu" if threads == 1 else "wall"


def too_busy(threads: int, per_core: float) -> str | None:
    """Why a timing taken at this load (1-minute load average per core) cannot decide, or None.

    One thread: CPU time holds up to :data:`ONE_THREAD_LIMIT_PER_CORE`. Several threads: only a
    quiet machine; under load wall clock takes in the waiting, and CPU time moved by 11% between a
    quiet machine and two busy loops (BENCHMARKS.md).
    """
    if threads == 1:
        if per_core >= ONE_THREAD_LIMIT_PER_CORE:
            return (f"load {per_core:.1f} per core, beyond the {ONE_THREAD_LIMIT_PER_CORE:g} per core up to which "
                    "one-thread CPU time was measured steady")
        return None
    if load_level(per_core) != "quiet":
        return (f"{threads} threads on a busy machine ({per_core:.1f} per core): neither wall clock nor CPU time "
                "holds (time with one thread to decide under load)")
    return None


@dataclass(frozen=True)
class RatioEvidence:
    """Paired runs of a baseline and one candidate: speedups (baseline time / candidate time).

    Attributes:
        baseline: Label of the baseline.
        candidate: Label of the candidate.
        pairs: Paired runs taken.
        wall: Paired median speedup by wall clock, with its interval.
        cpu: Paired median speedup by CPU time of the process, with its interval.
        wall_ms: Median wall-clock time of (baseline, candidate) per run, ms.
        cpu_ms: Median CPU time of (baseline, candidate) per run, ms.
        load: Load averages before and after.
        threads: ONNX Runtime intra-op threads.
        spinning: Whether ONNX Runtime's worker threads could spin (CPU time means work done only without).
        cpu_per_wall: Total CPU time over total wall time of the runs (about 1 with one thread on a
            quiet machine; below that, the runs waited for a core).
        taken_at: When the runs ended (UTC, ISO 8601).
        stopped: Why the runs stopped ("decided", "time budget", "max pairs", "fixed count", "too busy").
    """

    baseline: str
    candidate: str
    pairs: int
    wall: Interval
    cpu: Interval
    wall_ms: tuple[float, float]
    cpu_ms: tuple[float, float]
    load: LoadReading
    threads: int
    spinning: bool
    cpu_per_wall: float
    taken_at: str
    stopped: str

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "candidate": self.candidate, "pairs": self.pairs,
                "wall": self.wall.to_dict(), "cpu": self.cpu.to_dict(),
                "wall_ms": [round(v, 5) for v in self.wall_ms], "cpu_ms": [round(v, 5) for v in self.cpu_ms],
                "load": self.load.to_dict(), "threads": self.threads, "spinning": self.spinning,
                "cpu_per_wall": round(self.cpu_per_wall, 4), "taken_at": self.taken_at, "stopped": self.stopped}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RatioEvidence":
        """Read evidence back (as stored by :meth:`to_dict`).

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not evidence in this form.
        """
        return cls(str(data["baseline"]), str(data["candidate"]), int(data["pairs"]),
                   Interval.from_dict(data["wall"]), Interval.from_dict(data["cpu"]),
                   (float(data["wall_ms"][0]), float(data["wall_ms"][1])),
                   (float(data["cpu_ms"][0]), float(data["cpu_ms"][1])),
                   LoadReading.from_dict(data["load"]), int(data["threads"]), bool(data["spinning"]),
                   float(data["cpu_per_wall"]), str(data["taken_at"]), str(data["stopped"]))

    def summary(self) -> str:
        """One line: both ratios with their intervals, pairs, threads and load."""
        return (f"wall {self.wall}, CPU {self.cpu} ({self.wall.confidence:.0%} CI, {self.pairs} pairs, "
                f"{self.threads} thread{'s' if self.threads != 1 else ''}, {self.load})")


@dataclass(frozen=True)
class Verdict:
    """Where the evidence puts a candidate against a threshold.

    Attributes:
        outcome: "faster" (the interval lies above the threshold by more than :data:`MARGIN`),
            "slower" (below it by more than that) or "inconclusive" (it straddles that band, lies
            within it, or the machine was too busy to trust it).
        measure: "cpu" or "wall": the measure read; None when the machine was too busy.
        interval: That measure's interval, or None.
        threshold: The speedup the candidate had to beat.
        reason: One sentence a report can show.
    """

    outcome: str
    measure: str | None
    interval: Interval | None
    threshold: float
    reason: str

    @property
    def conclusive(self) -> bool:
        return self.outcome != "inconclusive"


def judge(evidence: RatioEvidence, threshold: float) -> Verdict:
    """The verdict ``evidence`` supports at ``threshold`` (a speedup, e.g. 1.1 = 10% faster needed)."""
    busy = too_busy(evidence.threads, evidence.load.per_core)
    if busy:
        return Verdict("inconclusive", None, None, threshold,
                       f"the machine was too busy to trust the timing ({busy}; {evidence.load}); "
                       f"wall {evidence.wall}, CPU {evidence.cpu}")
    measure = deciding_measure(evidence.threads)
    interval = evidence.cpu if measure == "cpu" else evidence.wall
    side = interval.side(threshold, MARGIN)
    outcome = {"above": "faster", "below": "slower"}.get(side, "inconclusive")
    where = {"above": f"above {threshold:.3g} (by more than {MARGIN:.0%})",
             "below": f"below {threshold:.3g} (by more than {MARGIN:.0%})",
             "within": f"within {MARGIN:.0%} of {threshold:.3g}: too close to call",
             "straddles": f"straddles {threshold:.3g} (+-{MARGIN:.0%})"}[side]
    return Verdict(outcome, measure, interval,
                   threshold, f"{MEASURE_NAMES[measure]} speedup {interval} ({interval.confidence:.0%} CI, "
                              f"{evidence.pairs} pairs, {evidence.load}) {where}")
