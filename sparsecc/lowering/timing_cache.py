"""The timing cache: measured timings kept in a file, so a compile is reproducible (as TensorRT's).

An entry is keyed by what decides a timing: the op and the structure of the measured graph
(shapes, dtypes, attributes, index constants; not float weight values), the lowering, the
backend and its thread count, and the CPU model. A compile that finds every timing it needs in
the cache makes the same decisions, so the same model compiled again on the same machine gives a
byte-identical ``model.onnx``.

The file is JSON (``{"sparsecc_timing_cache": 1, "entries": {key: entry}}``), written atomically
and merged with what is on disk, so two compiles can share it. Its location is, in order:
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

from sparsecc.errors import OptionError

ENV = "SPARSECC_TIMING_CACHE"
FORMAT = 1


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
        if self.path is not None and self.path.exists():
            self.entries = self._read(self.path)

    @staticmethod
    def _read(path: Path) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise OptionError(f"the timing cache cannot be read ({exc})", where=str(path),
                              fix="delete the file (it is rebuilt by measuring), or give another --timing-cache")
        if not isinstance(data, dict) or data.get("sparsecc_timing_cache") != FORMAT:
            raise OptionError("this file is not a sparsecc timing cache (format 1)", where=str(path),
                              fix="delete it, or give another --timing-cache")
        return dict(data.get("entries", {}))

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
        """Write new entries to the file, merged with what another compile may have written since."""
        if self.path is None or not self._new:
            return
        from sparsecc.model import write_bytes_atomic

        on_disk = self._read(self.path) if self.path.exists() else {}
        on_disk.update({key: self.entries[key] for key in self._new})
        text = json.dumps({"sparsecc_timing_cache": FORMAT, "entries": on_disk}, indent=1, sort_keys=True)
        write_bytes_atomic(self.path, (text + "\n").encode())
        self._new.clear()

    def clear(self) -> int:
        """Delete every entry, in memory and in the file (the file is removed); returns how many there were."""
        count = len(self._read(self.path)) if self.path is not None and self.path.exists() else len(self.entries)
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
