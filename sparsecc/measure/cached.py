"""Measurements through a timing cache: what an entry holds, and when it is used again.

This module is the content of the cache, not the file: it needs an object with ``get(key)`` and
``put(key, entry)`` (:class:`~sparsecc.lowering.TimingCache`, or a dict-backed stand-in in tests)
and never touches a file itself.

An entry holds evidence, never a verdict: the :class:`~sparsecc.measure.RatioEvidence` of one
candidate against its baseline (both ratios with their intervals, medians, load, when, threads,
spinning). Whoever reads it judges it at the threshold of the decision at hand. The rule for using
an entry again (:func:`reuse_rule`):

- no entry, or one in an older form (a timing without evidence): measure;
- evidence taken when the machine was too busy to trust it (:func:`~sparsecc.measure.evidence.too_busy`),
  on a machine calm enough now: measure again (the new entry replaces the old);
- anything else is used as it is. Evidence that straddles the threshold stays inconclusive and
  the analytic model decides (measuring again would spend the same budget for the same answer,
  and would make a compile from the cache differ from the one that filled it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from sparsecc.measure.evidence import RatioEvidence, too_busy
from sparsecc.measure.machine import read_load, usable_cores
from sparsecc.measure.runner import Measurement

ENTRY_FORM = "paired-evidence/1"
FROM_CACHE = "timing cache"
MEASURED = "measured"


class EntryStore(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, entry: dict[str, Any]) -> None: ...


def entry_for(evidence: RatioEvidence, what: dict[str, Any]) -> dict[str, Any]:
    """The cache entry for ``evidence``; ``what`` says what was measured (for ``sparsecc cache show``)."""
    return {"form": ENTRY_FORM, "what": dict(what), "evidence": evidence.to_dict()}


def evidence_of(entry: dict[str, Any] | None) -> RatioEvidence | None:
    """The evidence an entry holds; None for no entry or an entry in another form."""
    if not isinstance(entry, dict) or entry.get("form") != ENTRY_FORM:
        return None
    try:
        return RatioEvidence.from_dict(entry["evidence"])
    except (KeyError, TypeError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Reuse:
    """Whether a cached entry is used as it is, and why (or why not)."""

    use: bool
    reason: str


def reuse_rule(evidence: RatioEvidence | None, per_core_now: float, entry_present: bool = True) -> Reuse:
    """Use the evidence as it is, or measure again (see the module's docstring); ``per_core_now`` is the
    1-minute load average per core now."""
    if evidence is None:
        return Reuse(False, "an older cache entry with no evidence: measured again" if entry_present
                     else "not in the timing cache: measured")
    busy = too_busy(evidence.threads, evidence.load.per_core)
    if busy and not too_busy(evidence.threads, per_core_now):
        return Reuse(False, f"the cached timing was taken when the machine was too busy ({busy}); it is calmer now "
                            f"({per_core_now:.1f} per core): measured again")
    return Reuse(True, f"from the timing cache (taken {evidence.taken_at}, {evidence.load})")


def load_now() -> float:
    """The machine's 1-minute load average per usable core, now."""
    return read_load()[0] / usable_cores()


@dataclass(frozen=True)
class Sourced:
    """Evidence and where it came from ("timing cache" or "measured") with the reason."""

    evidence: RatioEvidence
    source: str
    note: str


def compare_through_cache(cache: EntryStore, keys: dict[str, str], what: dict[str, dict[str, Any]],
                          measure_missing: Callable[[list[str]], Measurement],
                          load: Callable[[], float] = load_now) -> dict[str, Sourced]:
    """Evidence for every candidate label in ``keys``: from ``cache`` where the reuse rule allows, the
    rest measured together in one call of ``measure_missing(labels)`` and stored.

    Args:
        cache: The entry store.
        keys: candidate label -> its cache key (baseline, candidate, backend, threads, CPU).
        what: candidate label -> what was measured, stored beside the evidence.
        measure_missing: Measures the baseline against these candidate labels.
        load: The machine's load average per core now. Defaults to reading it.
    """
    found: dict[str, Sourced] = {}
    missing: dict[str, str] = {}
    now = None
    for label, key in keys.items():
        entry = cache.get(key)
        evidence = evidence_of(entry)
        if evidence is not None and now is None and too_busy(evidence.threads, evidence.load.per_core):
            now = load()  # read only when an entry could be measured again
        rule = reuse_rule(evidence, now if now is not None else 0.0, entry is not None)
        if rule.use:
            found[label] = Sourced(evidence, FROM_CACHE, rule.reason)
        else:
            missing[label] = rule.reason
    if missing:
        measurement = measure_missing(list(missing))
        for label, why in missing.items():
            entry = entry_for(measurement.evidence[label], what[label])
            cache.put(keys[label], entry)
            # decide from the evidence as stored (rounded), so a compile from the cache decides and
            # reports exactly as this one does
            found[label] = Sourced(evidence_of(entry), MEASURED, why)
    return found


def describe_entry(entry: Any) -> dict[str, Any]:
    """One cache entry as ``sparsecc cache show`` lists it: what was measured and what it showed."""
    evidence = evidence_of(entry)
    if evidence is not None:
        what = entry.get("what", {})
        subject = " ".join(f"{k}={v}" for k, v in what.items() if k != "what") or "?"
        return {"form": "evidence", "what": what.get("what", "pair"), "subject": subject,
                "cpu": str(evidence.cpu), "wall": str(evidence.wall), "pairs": evidence.pairs,
                "threads": evidence.threads, "load": evidence.load.level, "load_before": evidence.load.before[0],
                "load_after": evidence.load.after[0], "taken_at": evidence.taken_at, "stopped": evidence.stopped}
    if isinstance(entry, dict) and str(entry.get("form", "")).startswith("analytic-calibration"):
        factors = entry.get("factors", {})
        return {"form": "calibration", "what": "analytic-calibration",
                "subject": ", ".join(f"{k} x{v}" for k, v in sorted(factors.items())),
                "threads": entry.get("threads"), "load": (entry.get("load") or {}).get("level"),
                "taken_at": entry.get("taken_at")}
    return {"form": "older", "what": "a timing without evidence (never reused: measured again when needed)"}
