"""Timings users can read: a measured speedup with its interval, the CPU-time ratio, the load, and
plain words when a figure should not be trusted.

Pure: it turns a :class:`~sparsecc.measure.RatioEvidence` (and the ideal, the MAC ratio) into
figures and sentences for ``sparsecc bench``, the demo and the tools.
"""

from __future__ import annotations

from typing import Any

from sparsecc.measure.evidence import RatioEvidence, too_busy

WIDE = 0.2  # an interval wider than 20% of its estimate is called wide
# An ideal speedup (MAC ratio) within 1% of 1 counts as the same work as the baseline: a difference that small
# is a few MACs in one layer, far below what a timing interval here can resolve (they span several percent),
# so a measured figure away from 1 for such a variant is noise, not the work it removed.
SAME_WORK_TOLERANCE = 0.01


def same_work(ideal: float | None) -> bool:
    """Whether a candidate with this ideal speedup does (within :data:`SAME_WORK_TOLERANCE`) the baseline's work."""
    return ideal is not None and abs(ideal - 1.0) < SAME_WORK_TOLERANCE


def readout(evidence: RatioEvidence, ideal: float | None = None) -> dict[str, Any]:
    """Figures and notes for one candidate against its baseline.

    Returns:
        ``speedup`` (paired median by wall clock, what users see) with ``speedup_ci``,
        ``cpu_speedup`` (by CPU time, work done) with ``cpu_speedup_ci``, ``pairs``, ``load``
        (before/after, cores, level) and ``notes``: sentences that say when a figure is not to be
        trusted, and why.
    """
    wall, cpu, load = evidence.wall, evidence.cpu, evidence.load
    notes = []
    where = f"load {load.before[0]:.1f} -> {load.after[0]:.1f} on {load.cores} cores"
    busy = too_busy(evidence.threads, load.per_core)
    if busy:
        notes.append(f"The machine was too busy to trust these figures ({where}; {busy}): measure again on a "
                     "quieter machine.")
    elif load.level != "quiet":
        notes.append(f"The machine was {load.level} ({where}): wall-clock times include waiting for a core; the "
                     "CPU-time ratio (one thread, work done) is the figure to trust.")
    if same_work(ideal):
        notes.append(f"The candidate does the same work as the baseline (ideal {ideal:.4g}x, within "
                     f"{SAME_WORK_TOLERANCE:.0%} of 1): a figure away from 1 is noise or memory layout, not a speedup.")
        if cpu.side(1.0) != "straddles":
            notes.append(f"The CPU-time interval [{cpu.low:.3f}, {cpu.high:.3f}] excludes 1 although the work is the "
                         "same: a sign the measurement was disturbed (other jobs, CPU frequency changes); measure "
                         "again on a quieter machine.")
    if wall.side(1.0) == "straddles":
        notes.append(f"No measurable difference in wall clock: the {wall.confidence:.0%} interval "
                     f"[{wall.low:.3f}, {wall.high:.3f}] includes 1.")
    if wall.width > WIDE and not busy:
        notes.append(f"The wall-clock interval is wide ({wall.width:.0%} of the estimate): more runs would narrow it.")
    return {"speedup": round(wall.estimate, 4), "speedup_ci": [round(wall.low, 4), round(wall.high, 4)],
            "cpu_speedup": round(cpu.estimate, 4), "cpu_speedup_ci": [round(cpu.low, 4), round(cpu.high, 4)],
            "confidence": wall.confidence, "pairs": evidence.pairs, "load": load.to_dict(),
            "trusted": busy is None, "notes": notes}


def speedup_text(figures: dict[str, Any]) -> str:
    """'1.272x [1.265, 1.281] (CPU time 1.269x [1.25, 1.29])' from :func:`readout`'s figures."""
    low, high = figures["speedup_ci"]
    cpu_low, cpu_high = figures["cpu_speedup_ci"]
    return (f"{figures['speedup']:.3f}x [{low:.3f}, {high:.3f}] (CPU time {figures['cpu_speedup']:.3f}x "
            f"[{cpu_low:.3f}, {cpu_high:.3f}])")
