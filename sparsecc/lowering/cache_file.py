"""The timing cache's file: read tolerantly, merged and replaced under a lock.

What the cache stores is :mod:`sparsecc.lowering.timing_cache`'s business; this module only moves a
``{FORMAT_KEY: version, "entries": {key: entry}}`` JSON file between disk and memory, so that:

- several compiles can share one file: each write takes a lock (``<file>.lock``, ``flock``), reads
  what is there now, adds its new entries and replaces the file atomically, so no entry is lost;
- a file that is corrupt, of another format, too large or of the wrong structure is moved aside
  (``<file>.unreadable-<time>``) with a warning, and the compile goes on measuring;
- a file that cannot be written is a warning: the compile's outputs never depend on it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from sparsecc.errors import OutputError
from sparsecc.limits import MAX_TIMING_CACHE_BYTES, human_bytes
from sparsecc.locks import FileLock
from sparsecc.log import logger

Entries = dict[str, dict[str, Any]]


def read_entries(path: Path, format_key: str, version: int, valid: Callable[[Any], bool]) -> Entries:
    """The entries in the file (none if it is missing). A file that cannot be used is moved aside with a
    warning; entries that ``valid`` refuses are left out with a warning."""
    try:
        if not path.exists():
            return {}
        size = path.stat().st_size
        if size > MAX_TIMING_CACHE_BYTES:
            return _set_aside(path, f"it is {human_bytes(size)}, above the limit of "
                                    f"{human_bytes(MAX_TIMING_CACHE_BYTES)}")
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return _set_aside(path, f"it cannot be read as JSON ({type(exc).__name__}: {str(exc)[:200]})")
    if not isinstance(data, dict) or data.get(format_key) != version:
        return _set_aside(path, f"it is not a sparsecc timing cache (format {version})")
    entries = data.get("entries", {})
    if not isinstance(entries, dict):
        return _set_aside(path, "its 'entries' is not a mapping")
    kept = {k: v for k, v in entries.items() if isinstance(k, str) and valid(v)}
    if len(kept) < len(entries):
        logger.warning("warning: the timing cache %s holds %d malformed entr%s, left out (measured again)",
                       path, len(entries) - len(kept), "y" if len(entries) - len(kept) == 1 else "ies")
    return kept


def _set_aside(path: Path, why: str) -> Entries:
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.replace(path, aside)
        where = f"moved to {aside}"
    except OSError as exc:
        where = f"left where it is ({exc.strerror})"
    logger.warning("warning: the timing cache %s was set aside: %s; %s, and timings are measured afresh",
                   path, why, where)
    return {}


def merge_entries(path: Path, format_key: str, version: int, new: Entries, valid: Callable[[Any], bool]) -> bool:
    """Add ``new`` to the file, keeping what other compiles wrote since it was read; True when saved.

    A file that cannot be written (permissions, a full disk) is a warning, never an error.
    """
    from sparsecc.outputs import write_bytes_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.with_name(path.name + ".lock")):
            entries = read_entries(path, format_key, version, valid)
            entries.update(new)
            text = json.dumps({format_key: version, "entries": entries}, indent=1, sort_keys=True)
            write_bytes_atomic(path, (text + "\n").encode())
        return True
    except (OSError, OutputError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc.what
        logger.warning("warning: the timing cache %s cannot be written (%s): this compile's %d new timing(s) are "
                       "not kept", path, reason, len(new))
        return False
