"""Paired runs: each candidate timed against a baseline, round after round, until the answer is clear.

Every run is timed twice: wall clock (``time.perf_counter_ns``, what users see) and the CPU time
of the process (``time.process_time_ns``, the work done; it means that only when ONNX Runtime's
worker threads do not spin, so timing sessions turn spinning off). Runs are paired: round ``i``
runs the baseline and every candidate once, in an order that alternates round by round, and the
speedup of a candidate is taken pair by pair (baseline / candidate), so a load that drifts
between rounds weighs on both sides of a pair alike. The median of the pair ratios gets a seeded
bootstrap interval; more rounds are run only while some candidate's interval straddles the
threshold, within a time budget and a cap on pairs.

Sessions too large to keep two alive (whole models of several hundred MB) are timed in blocks
instead (:func:`measure_in_blocks`): one session at a time, baseline block, candidate blocks,
then the other way round; the i-th run of one block is paired with the i-th of the next.
"""

from __future__ import annotations

import gc
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import numpy as np

from sparsecc.measure.evidence import MARGIN, RatioEvidence, Verdict, deciding_measure, judge, too_busy
from sparsecc.measure.machine import LoadReading, read_load, usable_cores
from sparsecc.measure.stats import grouped_ratio_interval, ratio_interval

Run = Callable[[], Any]


@dataclass(frozen=True)
class MeasureSettings:
    """How long to measure.

    Attributes:
        confidence: Coverage of the intervals. Defaults to 0.9.
        min_pairs: Pairs taken before any interval is looked at. Defaults to 10.
        max_pairs: Most pairs taken. Defaults to 200.
        batch: Rounds added between two looks at the intervals. Defaults to 10.
        budget_s: Seconds of timed runs after which no more rounds start (the round under way
            ends first). Defaults to 10.
        warmup: Untimed rounds first. Defaults to 2.
        seed: Seed of the bootstrap resampling. Defaults to 0.
        resamples: Bootstrap resamples. Defaults to 2000.
    """

    confidence: float = 0.9
    min_pairs: int = 10
    max_pairs: int = 200
    batch: int = 10
    budget_s: float = 10.0
    warmup: int = 2
    seed: int = 0
    resamples: int = 2000

    def __post_init__(self):
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence {self.confidence} is not in [0.5, 1)")
        if not 1 <= self.min_pairs <= self.max_pairs or self.batch < 1 or self.warmup < 0 or self.budget_s < 0:
            raise ValueError("need 1 <= min_pairs <= max_pairs, batch >= 1, warmup >= 0, budget_s >= 0; got "
                             f"{self.min_pairs}, {self.max_pairs}, {self.batch}, {self.warmup}, {self.budget_s}")

    @classmethod
    def fixed(cls, pairs: int, warmup: int = 2) -> "MeasureSettings":
        """Exactly ``pairs`` pairs, whatever the intervals (a benchmark that reports, not decides)."""
        return cls(min_pairs=pairs, max_pairs=pairs, batch=pairs, budget_s=float("inf"), warmup=warmup)


@dataclass(frozen=True)
class Clocks:
    """The two clocks read around each run (replaceable in tests)."""

    wall_ns: Callable[[], int] = time.perf_counter_ns
    cpu_ns: Callable[[], int] = time.process_time_ns


@dataclass
class Measurement:
    """Paired runs of a baseline and candidates, and what they showed.

    Attributes:
        baseline: Label of the baseline.
        evidence: Per candidate label, its :class:`RatioEvidence` against the baseline.
        wall_ms: Per label, the wall-clock time of each run, ms, in order.
        cpu_ms: Per label, the CPU time of each run, ms, in order.
        load: Load averages before and after.
        threads: ONNX Runtime intra-op threads of the sessions (as stated by the caller).
        spinning: Whether their worker threads could spin.
        seconds: Wall-clock seconds the timed runs took.
        stopped: Why the runs stopped.
        schedule: "interleaved" (run by run) or "blocks" (one session alive at a time).
    """

    baseline: str
    evidence: dict[str, RatioEvidence]
    wall_ms: dict[str, list[float]]
    cpu_ms: dict[str, list[float]]
    load: LoadReading
    threads: int
    spinning: bool
    seconds: float
    stopped: str
    schedule: str = "interleaved"

    def verdict(self, label: str, threshold: float) -> Verdict:
        """The verdict on candidate ``label`` at ``threshold`` (see :func:`~sparsecc.measure.judge`)."""
        return judge(self.evidence[label], threshold)

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """JSON-ready; ``samples`` adds every run's times."""
        data: dict[str, Any] = {
            "baseline": self.baseline, "candidates": {k: v.to_dict() for k, v in self.evidence.items()},
            "medians_ms": {label: {"wall": round(float(np.median(self.wall_ms[label])), 5),
                                   "cpu": round(float(np.median(self.cpu_ms[label])), 5),
                                   "wall_min": round(float(np.min(self.wall_ms[label])), 5)}
                           for label in self.wall_ms},
            "load": self.load.to_dict(), "threads": self.threads, "spinning": self.spinning,
            "seconds": round(self.seconds, 3), "stopped": self.stopped, "schedule": self.schedule,
            "deciding_measure": deciding_measure(self.threads),
            "too_busy": too_busy(self.threads, self.load.per_core)}
        if samples:
            data["samples_ms"] = {label: {"wall": [round(v, 5) for v in self.wall_ms[label]],
                                          "cpu": [round(v, 5) for v in self.cpu_ms[label]]} for label in self.wall_ms}
        return data


@dataclass
class _Samples:
    wall_ns: dict[str, list[int]] = field(default_factory=dict)
    cpu_ns: dict[str, list[int]] = field(default_factory=dict)

    def add(self, label: str, wall: int, cpu: int) -> None:
        self.wall_ns.setdefault(label, []).append(wall)
        self.cpu_ns.setdefault(label, []).append(cpu)

    def pairs(self) -> int:
        """Complete rounds (one run of every label); with one label alone, its runs."""
        return min((len(v) for v in self.wall_ns.values()), default=0)


def _timed(run: Run, clocks: Clocks) -> tuple[int, int]:
    wall, cpu = clocks.wall_ns(), clocks.cpu_ns()
    run()
    return clocks.wall_ns() - wall, clocks.cpu_ns() - cpu


def _evidence(samples: _Samples, baseline: str, label: str, settings: MeasureSettings, context: dict
              ) -> RatioEvidence:
    interval = {}
    medians = {}
    for measure, table in (("wall", samples.wall_ns), ("cpu", samples.cpu_ns)):
        # one CPU-clock tick can read 0 ns for a tiny run: never divide by it
        base = np.maximum(np.asarray(table[baseline], dtype=np.float64), 1.0)
        cand = np.maximum(np.asarray(table[label], dtype=np.float64), 1.0)
        interval[measure] = ratio_interval(base, cand, settings.confidence, settings.resamples, settings.seed)
        medians[measure] = (float(np.median(base)) / 1e6, float(np.median(cand)) / 1e6)
    return RatioEvidence(baseline, label, samples.pairs(), interval["wall"], interval["cpu"], medians["wall"],
                         medians["cpu"], **context)


def _all_decided(samples: _Samples, baseline: str, labels: list[str], threshold: float, threads: int,
                 settings: MeasureSettings) -> bool:
    measure = deciding_measure(threads)
    table = samples.cpu_ns if measure == "cpu" else samples.wall_ns
    for label in labels:
        base = np.maximum(np.asarray(table[baseline], dtype=np.float64), 1.0)
        cand = np.maximum(np.asarray(table[label], dtype=np.float64), 1.0)
        interval = ratio_interval(base, cand, settings.confidence, settings.resamples, settings.seed)
        if interval.side(threshold, MARGIN) == "straddles":  # "within" is decided: too close to call
            return False
    return True


def _collect(step: Callable[[int, int], None], labels: list[str], baseline: str, threshold: float | None,
             threads: int, spinning: bool, settings: MeasureSettings, samples: _Samples,
             load_reader: Callable[[], tuple[float, float, float]], clocks: Clocks, schedule: str) -> Measurement:
    """The adaptive loop both schedules share: ``step(rounds, index)`` adds ``rounds`` pairs."""
    cores = usable_cores()
    before = load_reader()
    candidates = [label for label in labels if label != baseline]
    start = clocks.wall_ns()
    index, stopped = 0, ""
    collecting = gc.isenabled()
    gc.disable()  # a collection inside a timed run would be charged to whichever variant ran
    try:
        while not stopped:
            rounds = min(settings.batch, settings.max_pairs - samples.pairs())
            step(rounds, index)
            index += 1
            pairs = samples.pairs()
            elapsed = (clocks.wall_ns() - start) / 1e9
            if pairs < settings.min_pairs:
                continue
            if threshold is None:
                stopped = "fixed count"
                continue
            if too_busy(threads, max(before[0], load_reader()[0]) / cores):
                stopped = "too busy"  # no verdict will be read from these runs: stop spending time on them
            elif _all_decided(samples, baseline, candidates, threshold, threads, settings):
                stopped = "decided"
            elif pairs >= settings.max_pairs:
                stopped = "max pairs"
            elif elapsed >= settings.budget_s:
                stopped = "time budget"
    finally:
        if collecting:
            gc.enable()
    seconds = (clocks.wall_ns() - start) / 1e9
    load = LoadReading(tuple(before), tuple(load_reader()), cores)
    total_wall = sum(sum(v) for v in samples.wall_ns.values())
    total_cpu = sum(sum(v) for v in samples.cpu_ns.values())
    context = {"load": load, "threads": threads, "spinning": spinning,
               "cpu_per_wall": total_cpu / total_wall if total_wall else float("nan"),
               "taken_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "stopped": stopped}
    evidence = {label: _evidence(samples, baseline, label, settings, context) for label in candidates}
    return Measurement(baseline, evidence,
                       {k: [v / 1e6 for v in vs] for k, vs in samples.wall_ns.items()},
                       {k: [v / 1e6 for v in vs] for k, vs in samples.cpu_ns.items()},
                       load, threads, spinning, seconds, stopped, schedule)


def _check_labels(labels: list[str], baseline: str) -> None:
    if baseline not in labels:
        raise ValueError(f"the baseline {baseline!r} is not one of the labels {labels}")


def measure(runners: Mapping[str, Run], baseline: str, threshold: float | None = None, threads: int = 1,
            spinning: bool = False, settings: MeasureSettings | None = None, clocks: Clocks | None = None,
            load_reader: Callable[[], tuple[float, float, float]] = read_load) -> Measurement:
    """Time ``runners`` interleaved, paired against ``baseline``, until every verdict is clear.

    Args:
        runners: label -> a function that does one run (e.g. ``lambda: session.run(feed)``).
        baseline: The label the others are compared with.
        threshold: The speedup each candidate is judged against (1.0: any speedup; 1.1: 10%).
            None measures exactly ``settings.min_pairs`` pairs (a benchmark). Defaults to None.
        threads: The sessions' intra-op threads (recorded; it decides which measure is read).
            Defaults to 1.
        spinning: Whether the sessions' worker threads may spin (recorded). Defaults to False.
        settings: Pairs, budget and interval settings. Defaults to ``MeasureSettings()``.
        clocks: The wall and CPU clocks. Defaults to the process's.
        load_reader: Returns the (1, 5, 15)-minute load averages. Defaults to the system's.
    """
    settings = settings or MeasureSettings()
    clocks = clocks or Clocks()
    labels = list(runners)
    _check_labels(labels, baseline)
    for _ in range(settings.warmup):
        for label in labels:
            runners[label]()
    samples = _Samples()

    def step(rounds: int, index: int) -> None:
        for offset in range(rounds):
            # alternate the order so no variant always runs right after another (caches, clock boost)
            order = labels if (index * settings.batch + offset) % 2 == 0 else labels[::-1]
            for label in order:
                samples.add(label, *_timed(runners[label], clocks))

    return _collect(step, labels, baseline, threshold, threads, spinning, settings, samples, load_reader, clocks,
                    "interleaved")


def measure_in_blocks(openers: Mapping[str, Callable[[], AbstractContextManager[Run]]], baseline: str,
                      threshold: float | None = None, threads: int = 1, spinning: bool = False,
                      settings: MeasureSettings | None = None, clocks: Clocks | None = None,
                      load_reader: Callable[[], tuple[float, float, float]] = read_load) -> Measurement:
    """:func:`measure` with one session alive at a time.

    ``openers[label]()`` is a context manager giving a run function (a session loaded on entry,
    freed on exit). Each step opens every label in turn (the order reverses step by step), does
    one untimed run, then ``settings.batch`` timed runs; the i-th runs of a step are paired.
    Other arguments as for :func:`measure` (``settings.warmup`` is not used: each block warms up).
    """
    settings = settings or MeasureSettings()
    clocks = clocks or Clocks()
    labels = list(openers)
    _check_labels(labels, baseline)
    samples = _Samples()

    def step(rounds: int, index: int) -> None:
        for label in labels if index % 2 == 0 else labels[::-1]:
            with openers[label]() as run:
                run()  # a fresh session's first run pays for allocations
                for _ in range(rounds):
                    samples.add(label, *_timed(run, clocks))

    return _collect(step, labels, baseline, threshold, threads, spinning, settings, samples, load_reader, clocks,
                    "blocks")



def combine(measurements: list[Measurement], settings: MeasureSettings | None = None) -> Measurement:
    """One measurement from several replications of the same comparison (each with its own sessions).

    The intervals come from a two-level bootstrap (:func:`~sparsecc.measure.stats.grouped_ratio_interval`),
    so replications that disagree give an interval wide enough to say so: within one process and one
    pair of sessions, runs agree more closely than two compiles minutes apart do.
    """
    settings = settings or MeasureSettings()
    first, last = measurements[0], measurements[-1]
    if len(measurements) == 1:
        return first
    labels = list(first.wall_ms)
    wall = {label: [v for m in measurements for v in m.wall_ms[label]] for label in labels}
    cpu = {label: [v for m in measurements for v in m.cpu_ms[label]] for label in labels}
    load = LoadReading(first.load.before, last.load.after, first.load.cores)
    evidence = {}
    for label, one in first.evidence.items():
        intervals = {}
        for name, table in (("wall", "wall_ms"), ("cpu", "cpu_ms")):
            groups = [(np.maximum(getattr(m, table)[first.baseline], 1e-6), np.maximum(getattr(m, table)[label], 1e-6))
                      for m in measurements]
            intervals[name] = grouped_ratio_interval(groups, settings.confidence, settings.resamples, settings.seed)
        total_wall = sum(sum(v) for v in wall.values())
        evidence[label] = RatioEvidence(
            first.baseline, label, sum(m.evidence[label].pairs for m in measurements), intervals["wall"],
            intervals["cpu"], (float(np.median(wall[first.baseline])), float(np.median(wall[label]))),
            (float(np.median(cpu[first.baseline])), float(np.median(cpu[label]))), load, one.threads, one.spinning,
            sum(sum(v) for v in cpu.values()) / total_wall if total_wall else float("nan"),
            last.evidence[label].taken_at, f"{len(measurements)} replications: "
                                           + ", ".join(m.evidence[label].stopped for m in measurements))
    return Measurement(first.baseline, evidence, wall, cpu, load, first.threads, first.spinning,
                       sum(m.seconds for m in measurements), ", ".join(m.stopped for m in measurements),
                       f"{first.schedule} x{len(measurements)}")
