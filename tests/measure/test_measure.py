"""The measurement method, on simulated clocks: the statistics, the stopping rule, the verdicts.

No test here reads a real clock: runs advance a simulated wall clock and CPU clock by amounts the
test chooses, so every assertion is about the method, not about this machine's speed.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

from sparsecc.measure import (Clocks, Interval, LoadReading, MeasureSettings, RatioEvidence, bootstrap_median,
                              deciding_measure, judge, load_level, measure, measure_in_blocks, paired_ratios,
                              ratio_interval, too_busy, usable_cores)


class SimulatedMachine:
    """A wall clock and a CPU clock that runs advance: ``work`` ns of CPU, plus ``wait`` ns off CPU."""

    def __init__(self, seed: int = 0):
        self.wall = 0
        self.cpu = 0
        self.rng = np.random.default_rng(seed)

    def clocks(self) -> Clocks:
        return Clocks(wall_ns=lambda: self.wall, cpu_ns=lambda: self.cpu)

    def runner(self, work_ns: float, cpu_noise: float = 0.0, wait_ns: float = 0.0):
        def run():
            work = int(work_ns * (1 + cpu_noise * self.rng.standard_normal()))
            waited = int(self.rng.exponential(wait_ns)) if wait_ns else 0
            self.cpu += work
            self.wall += work + waited
        return run


def _per_core(value):
    """A load reader giving ``value`` per core on whatever machine runs the test."""
    return lambda: (value * usable_cores(),) * 3


quiet = _per_core(0.1)
heavy = _per_core(9.0)


def test_bootstrap_interval_is_seeded_and_covers_the_median():
    values = np.random.default_rng(1).normal(1.3, 0.05, 400)
    first, second = bootstrap_median(values), bootstrap_median(values)
    assert first == second  # the same samples give the same interval, every time
    assert first.low <= np.median(values) <= first.high and first.estimate == pytest.approx(np.median(values))
    assert bootstrap_median(values, seed=1) != first
    wider = bootstrap_median(values[:10])
    assert wider.high - wider.low > first.high - first.low  # fewer pairs, wider interval
    assert bootstrap_median([2.0]) == Interval(2.0, 2.0, 2.0, 0.9)


def test_pair_ratios_and_interval_sides():
    assert paired_ratios([2.0, 3.0], [1.0, 1.5]).tolist() == [2.0, 2.0]
    for bad in (([1.0], [1.0, 2.0]), ([], []), ([1.0], [0.0])):
        with pytest.raises(ValueError):
            paired_ratios(*bad)
    interval = Interval(1.2, 1.1, 1.3)
    assert (interval.side(1.0), interval.side(1.5), interval.side(1.2)) == ("above", "below", "straddles")
    # with a margin: clear of the band, inside it (too close to call), or across an edge of it
    assert Interval(1.2, 1.16, 1.25).side(1.1, 0.05) == "above" and Interval(1.2, 1.12, 1.25).side(1.1, 0.05) == \
        "straddles"
    assert Interval(1.1, 1.06, 1.14).side(1.1, 0.05) == "within" and Interval(1.0, 0.9, 1.03).side(1.1, 0.05) == \
        "below"
    assert ratio_interval([2.0] * 5, [1.0] * 5) == Interval(2.0, 2.0, 2.0, 0.9)
    assert Interval.from_dict(interval.to_dict()) == interval


def test_load_levels_and_which_measure_decides():
    assert [load_level(x) for x in (0.5, 1.5, 3.5, float("nan"))] == ["quiet", "loaded", "heavy", "loaded"]
    reading = LoadReading((1.0, 1.0, 1.0), (5.0, 2.0, 1.0), 2)
    assert reading.per_core == 2.5 and reading.level == "loaded"  # the larger of before and after
    assert LoadReading.from_dict(reading.to_dict()) == reading
    assert deciding_measure(1) == "cpu" and deciding_measure(2) == "wall"
    # one thread: CPU time holds up to 7 per core; several threads: only a quiet machine is trusted
    assert too_busy(1, 5.0) is None and "beyond the 7 per core" in too_busy(1, 7.5)
    assert too_busy(2, 0.5) is None and "2 threads on a busy machine" in too_busy(2, 1.5)


def _evidence(wall, cpu, threads=1, load=(0.5, 0.5, 0.5)):
    return RatioEvidence("dense", "x", 40, wall, cpu, (2.0, 1.0), (2.0, 1.0), LoadReading(load, load, 2), threads,
                         False, 0.99, "2026-01-01T00:00:00+00:00", "decided")


def test_verdicts_read_the_deciding_measure_and_distrust_a_heavy_load():
    noisy_wall, steady_cpu = Interval(1.2, 0.8, 1.9), Interval(1.27, 1.25, 1.29)
    verdict = judge(_evidence(noisy_wall, steady_cpu), 1.1)
    assert (verdict.outcome, verdict.measure) == ("faster", "cpu") and "CPU time speedup 1.270" in verdict.reason
    # two threads on a quiet machine: wall clock is what users see, and it straddles here
    verdict = judge(_evidence(noisy_wall, steady_cpu, threads=2), 1.1)
    assert (verdict.outcome, verdict.measure) == ("inconclusive", "wall")
    assert judge(_evidence(noisy_wall, Interval(0.9, 0.85, 0.95)), 1.0).outcome == "slower"
    # one thread at 4 per core: CPU time still decides; two threads there: nothing does
    assert judge(_evidence(noisy_wall, steady_cpu, load=(8.0, 8.0, 8.0)), 1.1).outcome == "faster"
    loaded_two = judge(_evidence(steady_cpu, steady_cpu, threads=2, load=(3.0, 3.0, 3.0)), 1.1)
    assert loaded_two.outcome == "inconclusive" and loaded_two.measure is None
    busy = judge(_evidence(steady_cpu, steady_cpu, load=(15.0, 6.0, 5.0)), 1.1)
    assert busy.outcome == "inconclusive" and busy.measure is None and "too busy" in busy.reason
    evidence = _evidence(noisy_wall, steady_cpu)
    assert RatioEvidence.from_dict(evidence.to_dict()) == evidence


def test_a_clear_difference_stops_at_the_first_look():
    machine = SimulatedMachine()
    runners = {"dense": machine.runner(2e6, 0.02), "pruned": machine.runner(1e6, 0.02)}
    settings = MeasureSettings(min_pairs=10, batch=10, max_pairs=200)
    m = measure(runners, "dense", threshold=1.1, settings=settings, clocks=machine.clocks(), load_reader=quiet)
    assert m.stopped == "decided" and m.evidence["pruned"].pairs == 10
    assert m.verdict("pruned", 1.1).outcome == "faster"
    assert m.evidence["pruned"].cpu.estimate == pytest.approx(2.0, rel=0.05)
    assert len(m.wall_ms["dense"]) == len(m.wall_ms["pruned"]) == 10


def test_a_close_call_takes_more_pairs_until_the_cap():
    machine = SimulatedMachine()
    runners = {"dense": machine.runner(1e6, 0.2), "same": machine.runner(1e6, 0.2)}
    settings = MeasureSettings(min_pairs=10, batch=10, max_pairs=60, budget_s=1e9)
    m = measure(runners, "dense", threshold=1.0, settings=settings, clocks=machine.clocks(), load_reader=quiet)
    assert m.stopped == "max pairs" and m.evidence["same"].pairs == 60
    assert m.verdict("same", 1.0).outcome == "inconclusive"


def test_the_time_budget_ends_a_close_call():
    machine = SimulatedMachine()
    runners = {"dense": machine.runner(1e8, 0.2), "same": machine.runner(1e8, 0.2)}  # 0.1 s per run
    settings = MeasureSettings(min_pairs=10, batch=10, max_pairs=1000, budget_s=5.0)
    m = measure(runners, "dense", threshold=1.0, settings=settings, clocks=machine.clocks(), load_reader=quiet)
    assert m.stopped == "time budget" and 10 <= m.evidence["same"].pairs <= 30


def test_under_load_cpu_time_keeps_the_answer_wall_clock_loses():
    # the candidate does 0.8 of the work; every run also waits for a core a random, heavy-tailed time
    machine = SimulatedMachine(seed=3)
    runners = {"dense": machine.runner(1e6, 0.01, wait_ns=2e6), "pruned": machine.runner(0.8e6, 0.01, wait_ns=2e6)}
    m = measure(runners, "dense", threshold=1.1, settings=MeasureSettings(max_pairs=100), clocks=machine.clocks(),
                load_reader=_per_core(1.5))
    evidence = m.evidence["pruned"]
    assert evidence.load.level == "loaded" and evidence.cpu_per_wall < 0.5
    assert evidence.cpu.estimate == pytest.approx(1.25, rel=0.03) and evidence.cpu.side(1.1) == "above"
    assert evidence.wall.high - evidence.wall.low > 5 * (evidence.cpu.high - evidence.cpu.low)
    assert m.verdict("pruned", 1.1).measure == "cpu" and m.stopped == "decided"


def test_a_heavy_load_stops_early_and_decides_nothing():
    machine = SimulatedMachine()
    runners = {"dense": machine.runner(2e6), "pruned": machine.runner(1e6)}
    m = measure(runners, "dense", threshold=1.1, clocks=machine.clocks(), load_reader=heavy)
    assert m.stopped == "too busy" and m.evidence["pruned"].pairs == MeasureSettings().min_pairs
    assert m.verdict("pruned", 1.1).outcome == "inconclusive"


def test_without_a_threshold_exactly_the_fixed_count():
    machine = SimulatedMachine()
    order = []
    runners = {label: (lambda label=label: order.append(label) or machine.runner(1e6)()) for label in "abc"}
    m = measure(runners, "a", settings=MeasureSettings.fixed(7, warmup=1), clocks=machine.clocks(),
                load_reader=quiet)
    assert m.stopped == "fixed count" and set(m.evidence) == {"b", "c"} and m.evidence["c"].pairs == 7
    assert order[:3] == list("abc") and order[3:9] == list("abccba")  # warm-up, then alternating rounds
    with pytest.raises(ValueError):
        measure(runners, "z")


def test_blocks_keep_one_session_alive_at_a_time():
    machine = SimulatedMachine()
    alive, most, opened = set(), [0], []

    def opener(label, work):
        @contextmanager
        def open_():
            alive.add(label)
            most[0] = max(most[0], len(alive))
            opened.append(label)
            yield machine.runner(work, 0.01)
            alive.discard(label)
        return open_

    m = measure_in_blocks({"dense": opener("dense", 2e6), "pruned": opener("pruned", 1e6)}, "dense", threshold=1.1,
                          settings=MeasureSettings(min_pairs=10, batch=5), clocks=machine.clocks(), load_reader=quiet)
    assert most[0] == 1 and opened[:4] == ["dense", "pruned", "pruned", "dense"]
    assert m.schedule == "blocks" and m.evidence["pruned"].pairs == 10 and m.verdict("pruned", 1.1).outcome == "faster"


def test_settings_are_checked():
    with pytest.raises(ValueError):
        MeasureSettings(min_pairs=0)
    with pytest.raises(ValueError):
        MeasureSettings(min_pairs=20, max_pairs=10)
    with pytest.raises(ValueError):
        MeasureSettings(confidence=1.0)


def test_replications_that_disagree_widen_the_interval():
    from sparsecc.measure.runner import combine
    from sparsecc.measure.stats import grouped_ratio_interval

    rng = np.random.default_rng(0)
    slower = (np.ones(30), rng.normal(1 / 0.95, 0.01, 30))  # one set of sessions: 0.95x
    faster = (np.ones(30), rng.normal(1 / 1.07, 0.01, 30))  # a second one: 1.07x
    alone = ratio_interval(*slower)
    both = grouped_ratio_interval([slower, faster])
    assert alone.high < 1.0 and both.low < 0.96 and both.high > 1.06  # spans both: neither call is made
    assert grouped_ratio_interval([slower]) == alone
    # two replications of one simulated comparison: the combined evidence counts every pair
    machine = SimulatedMachine()
    runs = [measure({"dense": machine.runner(2e6, 0.02), "pruned": machine.runner(1e6, 0.02)}, "dense", 1.1,
                    settings=MeasureSettings(min_pairs=10), clocks=machine.clocks(), load_reader=quiet)
            for _ in range(2)]
    combined = combine(runs)
    assert combined.evidence["pruned"].pairs == 20 and combined.schedule == "interleaved x2"
    assert combined.verdict("pruned", 1.1).outcome == "faster" and len(combined.wall_ms["dense"]) == 20


def test_readout_calls_a_figure_for_the_same_work_noise_and_a_cpu_gap_a_disturbance():
    from sparsecc.measure.readout import readout

    evidence = _evidence(Interval(1.14, 0.96, 1.36), Interval(0.74, 0.55, 0.92))
    notes = readout(evidence, ideal=1.0008)["notes"]
    assert any("same work as the baseline (ideal 1.001x, within 1% of 1)" in note for note in notes)
    assert any("excludes 1 although the work is the same" in note and "disturbed" in note for note in notes)
    level = readout(_evidence(Interval(1.14, 0.96, 1.36), Interval(1.01, 0.97, 1.04)), ideal=1.0)["notes"]
    assert any("same work" in note for note in level) and not any("disturbed" in note for note in level)
    # a real difference in work: CPU time below 1 is a slowdown, not a disturbance
    assert not any("same work" in note or "disturbed" in note
                   for note in readout(evidence, ideal=1.3)["notes"])
