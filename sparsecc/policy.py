"""The decision policy: when timing may decide, and what decides when it cannot.

Pure functions of plain values (work profiles, verdicts, estimates): no clock, no graph, no
cache, so every rule here is tested without timing anything.

1. A rewrite that **only removes work** (:func:`removes_work`: no new op kind, no op kind more
   often, no new weight layer, no layer with more MACs, fewer MACs in all) is kept whatever a
   timing says (:func:`judge_removal`). A *conclusive* slowdown is flagged so it can be fixed
   where it comes from (channel counts off the kernels' preferred multiples), never by undoing.
2. **Timing decides only between alternatives that each cost something** (:func:`choose`,
   :func:`keep_or_undo`): a Gather and a smaller GEMM against the dense layer, DR sub-GEMMs
   against the depthwise conv, a plugin against the native layer.
3. **An inconclusive timing defers to the analytic model** (calibrated on this machine where a
   calibration exists), and the decision says so; it never defaults to "undo". Between lowerings,
   an estimate must clear the threshold by the timing's margin: a layer that neither the timing nor
   the model can call faster keeps its baseline, so noise in a calibration does not flip it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

from sparsecc.measure.evidence import MEASURE_NAMES, Verdict

REMOVES_WORK = "removes work"
ANALYTIC = "analytic model"


@dataclass(frozen=True)
class WorkProfile:
    """What a graph does, as far as classifying a rewrite needs.

    Attributes:
        ops: Node count per op type.
        layer_macs: MACs per weight layer (by node name).
    """

    ops: Mapping[str, int]
    layer_macs: Mapping[str, int] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        return sum(self.layer_macs.values())


def removes_work(before: WorkProfile, after: WorkProfile) -> tuple[bool, str]:
    """Whether ``after`` only removes work from ``before``, and the reason either way."""
    grown = sorted(op for op, count in after.ops.items() if count > before.ops.get(op, 0))
    if grown:
        return False, f"adds nodes ({', '.join(grown)}): a trade-off, not only less work"
    new = sorted(set(after.layer_macs) - set(before.layer_macs))
    if new:
        return False, f"adds weight layers ({', '.join(new[:3])}{' ...' if len(new) > 3 else ''})"
    more = sorted(name for name, macs in after.layer_macs.items() if macs > before.layer_macs[name])
    if more:
        return False, f"layers with more MACs ({', '.join(more[:3])}{' ...' if len(more) > 3 else ''})"
    if after.macs >= before.macs:
        return False, "no fewer MACs"
    return True, (f"only removes work: the same op kinds, no layer with more MACs, {before.macs:,} -> "
                  f"{after.macs:,} MACs")


def op_counts(op_types) -> dict[str, int]:
    """Node count per op type, from an iterable of op type names."""
    return dict(Counter(op_types))


@dataclass(frozen=True)
class Decision:
    """A decision and what it rests on.

    Attributes:
        choice: The option taken (a candidate's name, or "keep" / "undo").
        by: What decided: "CPU time" or "wall clock" (a conclusive timing), "analytic model"
            (no timing, or an inconclusive one: ``fallback`` says which), "removes work".
        reason: One sentence for the report.
        fallback: An inconclusive timing deferred to the analytic model.
        slowdown: Removed work that timing found conclusively slower (to fix at its source).
    """

    choice: str
    by: str
    reason: str
    fallback: bool = False
    slowdown: bool = False


@dataclass(frozen=True)
class Option:
    """One alternative to a baseline.

    Attributes:
        name: Its name.
        verdict: Its timing against the baseline, judged at the decision's threshold; None if untimed.
        estimate: The analytic model's speedup (baseline estimate / this one's); None if not estimated.
    """

    name: str
    verdict: Verdict | None = None
    estimate: float | None = None


def needs_estimates(options: list[Option]) -> bool:
    """Whether some option has no conclusive timing, so the analytic model must estimate it."""
    return any(o.verdict is None or not o.verdict.conclusive for o in options)


def _needed(option: Option, threshold: float, estimate_margin: float) -> float:
    """What an estimate must reach: the threshold, raised by the margin when a timing was tried and
    could not decide (the estimate then stands in for a measurement too close to call)."""
    return threshold * (1.0 + estimate_margin) if option.verdict is not None else threshold


def _why(option: Option, threshold: float, analytic: str, estimate_margin: float) -> str:
    if option.verdict is not None and option.verdict.conclusive:
        return f"{option.name}: {option.verdict.reason}"
    lead = f"{option.name}: timing inconclusive ({option.verdict.reason}), so the {analytic} estimates " \
        if option.verdict is not None else f"{option.name}: the {analytic} estimates "
    return lead + f"{option.estimate:.3f}x (needs {_needed(option, threshold, estimate_margin):.3g}x)"


def choose(baseline: str, options: list[Option], threshold: float, analytic: str = ANALYTIC,
           estimate_margin: float = 0.0) -> Decision:
    """The option to take instead of ``baseline`` (or the baseline), among alternatives that each cost something.

    An option with a conclusive timing is judged by it; one without (untimed, or its interval
    straddles ``threshold``) by its analytic estimate, which must then be given. An estimate that
    stands in for an inconclusive timing must reach ``threshold * (1 + estimate_margin)``. Options
    that pass by a conclusive timing come before those that pass by the estimate; among equals the
    larger speedup wins.

    Raises:
        ValueError: an option needs an estimate and has none.
    """
    passed = []
    for option in options:
        timed = option.verdict is not None and option.verdict.conclusive
        if timed:
            ok, speedup = option.verdict.outcome == "faster", option.verdict.interval.estimate
        else:
            if option.estimate is None:
                raise ValueError(f"option {option.name!r} has no conclusive timing and no analytic estimate")
            ok, speedup = option.estimate >= _needed(option, threshold, estimate_margin), option.estimate
        if ok:
            passed.append((timed, speedup, option))
    reasons = "; ".join(_why(o, threshold, analytic, estimate_margin) for o in options)
    if not passed:
        return Decision(baseline, _decided_by(options, analytic), f"{baseline} kept: {reasons}" if options
                        else f"{baseline}: no alternative", fallback=_fell_back(options))
    timed, _, best = max(passed, key=lambda p: (p[0], p[1]))
    by = MEASURE_NAMES[best.verdict.measure] if timed else analytic
    return Decision(best.name, by, f"{best.name} taken: {reasons}",
                    fallback=not timed and best.verdict is not None)


def _decided_by(options: list[Option], analytic: str) -> str:
    timed = [o for o in options if o.verdict is not None and o.verdict.conclusive]
    if len(timed) == len(options) and options:
        return " + ".join(sorted({MEASURE_NAMES[o.verdict.measure] for o in timed}))
    return analytic


def _fell_back(options: list[Option]) -> bool:
    return any(o.verdict is not None and not o.verdict.conclusive for o in options)


def keep_or_undo(verdict: Verdict | None, estimate: float | None, threshold: float = 1.0,
                 analytic: str = ANALYTIC) -> Decision:
    """Keep a rewrite that is a trade-off (it adds work somewhere to save it elsewhere) or undo it.

    Only the trade-off is at stake (the lowerings of a pass, not work removed before them):
    a conclusive timing decides; an inconclusive one defers to the analytic ``estimate``.
    """
    return choose("undo", [Option("keep", verdict, estimate)], threshold, analytic)


def judge_removal(verdict: Verdict | None) -> Decision:
    """Removed work is kept, whatever the timing says; a conclusive slowdown is flagged, not undone."""
    if verdict is None:
        return Decision("keep", REMOVES_WORK, "only removes work: kept with no timing veto (not timed)")
    if verdict.outcome == "slower":
        return Decision("keep", REMOVES_WORK,
                        f"only removes work: kept with no timing veto; timing found it conclusively slower "
                        f"({verdict.reason}), which is fixed at its source, not by undoing", slowdown=True)
    return Decision("keep", REMOVES_WORK, f"only removes work: kept with no timing veto ({verdict.reason})")
