"""The decision policy, on values made by hand: no test here times anything."""

from __future__ import annotations

import pytest
from evidence import FASTER, SLOWER, STRADDLES, evidence

from sparsecc.measure import judge
from sparsecc.policy import (REMOVES_WORK, Option, WorkProfile, choose, judge_removal, keep_or_undo, needs_estimates,
                             removes_work)

BEFORE = WorkProfile({"Conv": 3, "Relu": 2}, {"a": 100, "b": 200, "c": 50})


@pytest.mark.parametrize("after, expected, words", [
    (WorkProfile({"Conv": 3, "Relu": 2}, {"a": 60, "b": 200, "c": 50}), True, "only removes work"),
    (WorkProfile({"Conv": 3}, {"a": 100, "b": 100, "c": 50}), True, "only removes work"),  # a node went too
    (WorkProfile({"Conv": 3, "Relu": 2, "Gather": 1}, {"a": 40, "b": 200, "c": 50}), False, "adds nodes (Gather)"),
    (WorkProfile({"Conv": 4, "Relu": 2}, {"a": 40, "b": 200, "c": 50, "d": 1}), False, "adds nodes (Conv)"),
    (WorkProfile({"Conv": 3, "Relu": 2}, {"a": 40, "b": 200, "d": 1}), False, "adds weight layers (d)"),
    (WorkProfile({"Conv": 3, "Relu": 2}, {"a": 40, "b": 210, "c": 10}), False, "layers with more MACs (b)"),
    (WorkProfile({"Conv": 3, "Relu": 2}, {"a": 100, "b": 200, "c": 50}), False, "no fewer MACs"),
])
def test_what_only_removes_work(after, expected, words):
    less, why = removes_work(BEFORE, after)
    assert less is expected and words in why


@pytest.mark.parametrize("timing", [FASTER, SLOWER, STRADDLES, None])
def test_removed_work_is_kept_whatever_the_timing_says(timing):
    verdict = judge(evidence(timing), 1.0) if timing else None
    decision = judge_removal(verdict)
    assert decision.choice == "keep" and decision.by == REMOVES_WORK and "no timing veto" in decision.reason
    assert decision.slowdown is (timing == SLOWER)  # flagged, to be fixed where it comes from


def test_removed_work_under_heavy_load_is_kept_and_not_trusted():
    verdict = judge(evidence(SLOWER, load=16.0), 1.0)  # 8 per core on 2 cores
    assert not verdict.conclusive and "too busy" in verdict.reason
    decision = judge_removal(verdict)
    assert decision.choice == "keep" and not decision.slowdown


def test_a_conclusive_timing_chooses_between_alternatives_that_each_cost_something():
    options = [Option("channel-gather", judge(evidence(FASTER), 1.1)),
               Option("tap-gather", judge(evidence(SLOWER), 1.1))]
    assert not needs_estimates(options)
    decision = choose("dense", options, 1.1)
    assert (decision.choice, decision.by, decision.fallback) == ("channel-gather", "CPU time", False)
    decision = choose("dense", [Option("tap-gather", judge(evidence(SLOWER), 1.1))], 1.1)
    assert (decision.choice, decision.by) == ("dense", "CPU time") and "below 1.1" in decision.reason


@pytest.mark.parametrize("estimate, expected", [(1.5, "tap-gather"), (0.8, "dense")])
def test_an_inconclusive_timing_defers_to_the_analytic_model(estimate, expected):
    verdict = judge(evidence(STRADDLES), 1.1)
    option = Option("tap-gather", verdict)
    assert needs_estimates([option])
    with pytest.raises(ValueError, match="no analytic estimate"):
        choose("dense", [option], 1.1)
    decision = choose("dense", [Option("tap-gather", verdict, estimate)], 1.1, "analytic model (calibrated)")
    assert decision.choice == expected and decision.by == "analytic model (calibrated)" and decision.fallback
    assert "timing inconclusive" in decision.reason and f"{estimate:.3f}x" in decision.reason


def test_evidence_beats_an_estimate_and_the_larger_speedup_wins():
    conclusive = Option("channel-gather", judge(evidence((1.22, 1.17, 1.27)), 1.1))
    estimated = Option("tap-gather", judge(evidence(STRADDLES), 1.1), 3.0)
    assert choose("dense", [estimated, conclusive], 1.1).choice == "channel-gather"
    two = [Option("a", judge(evidence((1.22, 1.17, 1.27)), 1.1)), Option("b", judge(evidence(FASTER), 1.1))]
    assert choose("dense", two, 1.1).choice == "b"
    assert choose("dense", [Option("a", None, 1.05), Option("b", None, 1.3)], 1.1).choice == "b"


def test_a_trade_off_is_undone_only_by_a_conclusive_slowdown():
    assert keep_or_undo(judge(evidence(SLOWER), 1.0), None).choice == "undo"
    assert keep_or_undo(judge(evidence(FASTER), 1.0), None).choice == "keep"
    # inconclusive: the analytic model, never "undo" by default
    kept = keep_or_undo(judge(evidence(STRADDLES), 1.0), 1.4)
    assert kept.choice == "keep" and kept.fallback and kept.by == "analytic model"
    assert keep_or_undo(judge(evidence(STRADDLES), 1.0), 0.9).choice == "undo"
    # a machine too busy for the measure makes any timing inconclusive (one thread: 8 per core here)
    assert keep_or_undo(judge(evidence(SLOWER, load=16.0), 1.0), 1.4).choice == "keep"


def test_a_difference_smaller_than_the_margin_is_too_close_to_call():
    verdict = judge(evidence((1.11, 1.08, 1.14)), 1.1)  # within 5% of the threshold
    assert not verdict.conclusive and "too close to call" in verdict.reason
    decision = choose("dense", [Option("tap-gather", verdict, 1.3)], 1.1)
    assert decision.choice == "tap-gather" and decision.fallback and decision.by == "analytic model"
    assert not judge(evidence((1.13, 1.12, 1.20)), 1.1).conclusive  # above 1.1, but not by the margin


def test_an_estimate_standing_in_for_an_inconclusive_timing_must_clear_the_margin():
    # the calibration behind a fallback estimate is measured too: an estimate at the threshold is too
    # close to call, and the layer keeps its baseline instead of flipping with the calibration's noise
    verdict = judge(evidence(STRADDLES), 1.1)
    for estimate, expected in ((1.10, "dense"), (1.15, "dense"), (1.16, "tap-gather")):
        decision = choose("dense", [Option("tap-gather", verdict, estimate)], 1.1, estimate_margin=0.05)
        assert decision.choice == expected, estimate
    assert "needs 1.16x" in choose("dense", [Option("tap-gather", verdict, 1.12)], 1.1, estimate_margin=0.05).reason
    # an estimate with no timing behind it (the analytic cost model) needs only the threshold
    assert choose("dense", [Option("tap-gather", None, 1.10)], 1.1, estimate_margin=0.05).choice == "tap-gather"
    # the whole-model check has no margin on its estimate: a trade-off is not undone for want of one
    assert keep_or_undo(verdict, 1.02).choice == "keep"
