"""Which file holds the bytes of each weight array read from one, so they can be read from it again.

When a weight is read from a file (the input model's external data, or a
:class:`~sparsecc.session_files.SessionFiles` data file), its array is remembered with the file and
offset of its bytes: a later file can reference those bytes instead of writing them again, and a
copy kept only to be compared against can map them instead of holding the array
(:func:`~sparsecc.session_files.release_to_files`). Arrays are held weakly.
"""

from __future__ import annotations

import sys
import weakref
from pathlib import Path

import numpy as np

# Arrays read from a file, and where their bytes lie in it: SessionFiles links that file instead of
# writing the bytes again (id(array) -> (weak reference, resolved path, offset)).
_ORIGINS: dict[int, tuple[weakref.ref, Path, int]] = {}
_PRUNE_AT = 1024  # dead entries are pruned when the table reaches this size


def weak(array: np.ndarray):
    """A weak reference to ``array`` (one that is always dead where numpy arrays cannot be referenced weakly)."""
    try:
        return weakref.ref(array)
    except TypeError:
        return lambda: None


def remember_origin(array: np.ndarray, path: Path, offset: int) -> None:
    """``array``'s bytes are those of ``path`` at ``offset`` (the entry dies with the array)."""
    if sys.byteorder != "little" or not array.flags.c_contiguous:
        return
    try:
        # no callback: Python code run by the garbage collector turns an interrupt into a printed traceback;
        # entries of dead arrays are pruned here instead (and never match: origin_of checks identity)
        ref = weakref.ref(array)
    except TypeError:
        return
    global _PRUNE_AT
    if len(_ORIGINS) >= _PRUNE_AT:
        for key in [k for k, (r, _, _) in _ORIGINS.items() if r() is None]:
            del _ORIGINS[key]
        _PRUNE_AT = max(1024, 2 * len(_ORIGINS))
    _ORIGINS[id(array)] = (ref, Path(path).resolve(), offset)


def origin_of(array: np.ndarray) -> tuple[Path, int] | None:
    """(file, offset) that holds ``array``'s bytes, or None."""
    known = _ORIGINS.get(id(array))
    if known is None or known[0]() is not array:
        return None
    return known[1], known[2]


def resident_by_origin() -> dict[tuple[Path, int], np.ndarray]:
    """In-memory arrays (not file mappings) by where their bytes lie in a file."""
    resident = {}
    for ref, path, offset in list(_ORIGINS.values()):
        array = ref()
        if array is not None and not isinstance(array, np.memmap):
            resident[(path, offset)] = array
    return resident




def forget_origins_in(folder: Path) -> None:
    """Forget every array whose bytes lie in a file of ``folder`` (a folder about to be deleted)."""
    folder = Path(folder).resolve()
    for key, (_, path, _) in list(_ORIGINS.items()):
        if path.parent == folder:
            _ORIGINS.pop(key, None)
