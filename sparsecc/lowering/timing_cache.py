"""The timing cache: measured timings kept in a file, so a compile is reproducible (as TensorRT's).

An entry is keyed by what decides a timing: the op and the structure of the measured graph
(shapes, dtypes, attributes, index constants; not float weight values), the lowering, the
backend and its thread count, and the CPU model. A compile that finds every timing it needs in
the cache makes the same decisions, so the same model compiled again on the same machine gives a
byte-identical ``model.onnx``.

The file is JSON (``{"sparsecc_timing_cache": 1, "entries": {key: entry}}``), merged with what is on
disk and replaced atomically under a lock, so compiles can share it; a corrupt or foreign file is set
aside with a warning, an unwritable one is a warning (:mod:`~sparsecc.lowering.cache_file`). Its location is, in order:
``--timing-cache FILE``, the environment variable ``SPARSECC_TIMING_CACHE``, then
``~/.cache/sparsecc/timing-cache.json`` (``$XDG_CACHE_HOME`` respected). ``off`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.lowering.cache_file import merge_entries, read_entries
from sparsecc.measure.cached import ENTRY_FORM, evidence_of

ENV = "SPARSECC_TIMING_CACHE"
FORMAT_KEY = "sparsecc_timing_cache"
FORMAT = 1
# what an entry holds: the paired evidence of a candidate against its baseline (a layer's, or a whole
# model's: sparsecc.measure.cached), or this machine's calibration of the analytic model
# (/2: a factor per reference layer, looked up by geometry; /1 entries, one factor per lowering, are
# still read as valid and listed, but not used: their key differs)
CALIBRATION_FORM = "analytic-calibration/2"
_CALIBRATION_FORMS = ("analytic-calibration/1", CALIBRATION_FORM)
# entries of earlier versions (a timing without evidence): read, listed, never used as a decision
_OLDER_FIELDS = ({"seconds", "spread"}, {"dense_ms", "rewritten_ms", "spread", "runs"})


def valid_entry(entry: Any) -> bool:
    """An entry this version reads: evidence, a calibration, or an older timing; every number finite."""
    if not isinstance(entry, dict):
        return False
    if entry.get("form") == ENTRY_FORM:
        evidence = evidence_of(entry)
        return evidence is not None and all(np.isfinite(v) and v > 0 for v in (*evidence.cpu_ms, *evidence.wall_ms))
    if entry.get("form") in _CALIBRATION_FORMS:
        factors = entry.get("factors")
        return isinstance(factors, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0
            for v in factors.values())
    if not any(fields <= set(entry) for fields in _OLDER_FIELDS):
        return False
    numbers = [entry[k] for fields in _OLDER_FIELDS for k in fields if k in entry]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0
               for v in numbers)


def default_timing_cache_path() -> Path | None:
    """``$SPARSECC_TIMING_CACHE``, else ``~/.cache/sparsecc/timing-cache.json``; None when set to "off"."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in ("off", "none", "") else Path(value).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sparsecc" / "timing-cache.json"


def graph_signature(graph: gs.Graph) -> str:
    """A digest of what a graph's run time depends on: ops, attributes, shapes, dtypes, index values.

    Float weight values are left out (a dense kernel takes as long whatever its values), integer
    constants (Gather indices) are in: they decide how much data moves.
    """
    digest = hashlib.sha256()
    for tensor in graph.inputs:
        digest.update(repr(("in", tensor.shape, str(tensor.dtype))).encode())
    for node in graph.nodes:
        parts: list[Any] = [node.op, node.domain, sorted((k, repr(v)) for k, v in node.attrs.items())]
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant):
                values = tensor.values
                data = values.tobytes() if not np.issubdtype(values.dtype, np.floating) else b""
                parts.append(("const", values.shape, str(values.dtype), hashlib.sha256(data).hexdigest()))
            else:
                parts.append(("var", tensor.shape, str(tensor.dtype)))
        digest.update(repr(parts).encode())
    return digest.hexdigest()


class TimingCache:
    """Timings by key, loaded from and saved to one JSON file (or kept in memory when ``path`` is None).

    Args:
        path: The cache file. None keeps the cache in memory only.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, dict[str, Any]] = {}
        self._new: set[str] = set()
        self.hits = 0
        self.misses = 0
        if self.path is not None:
            self.entries = read_entries(self.path, FORMAT_KEY, FORMAT, valid_entry)

    @staticmethod
    def key(fields: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self.entries[key] = entry
        self._new.add(key)

    def save(self) -> None:
        """Write new entries to the file, merged with what another compile may have written since (a file
        that cannot be written is a warning: the timings are then kept for this compile only)."""
        if self.path is None or not self._new:
            return
        merge_entries(self.path, FORMAT_KEY, FORMAT, {key: self.entries[key] for key in self._new}, valid_entry)
        self._new.clear()

    def clear(self) -> int:
        """Delete every entry, in memory and in the file (the file is removed); returns how many there were."""
        count = len(self.entries)
        if self.path is not None and self.path.exists():
            count = len(read_entries(self.path, FORMAT_KEY, FORMAT, valid_entry))
        self.entries.clear()
        self._new.clear()
        if self.path is not None and self.path.exists():
            self.path.unlink()
        return count

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "hits": self.hits, "misses": self.misses}


def open_timing_cache(option: str | os.PathLike | None) -> TimingCache:
    """The cache a compile uses: ``option`` (a path, or "off"), else the default location."""
    if option is not None and str(option).strip().lower() in ("off", "none"):
        return TimingCache(None)
    path = Path(option).expanduser() if option is not None else default_timing_cache_path()
    return TimingCache(path)
