"""Keep Polygraphy from importing PyTorch inside a probe that swallows interrupts.

Polygraphy asks, for every array it handles, whether it is a ``torch.Tensor``; to answer, its lazy
``torch`` module *imports torch* inside a bare ``except:`` (``LazyModule.is_importable``). A Ctrl-C
during that import (seconds long) was swallowed, and the half-imported torch later crashed the
process. An object can only be a tensor of a module that is already imported, so the guard answers
from ``sys.modules`` and never imports: the same answers, no import, nothing swallowed.
"""

from __future__ import annotations

import importlib
import sys

# Polygraphy modules that probe for torch through a module-level lazy import named ``torch``.
_PROBING_MODULES = ("polygraphy.util.array", "polygraphy.comparator.compare", "polygraphy.comparator.data_loader",
                    "polygraphy.json.serde", "polygraphy.datatype.torch")


class _ImportedOnly:
    """Stands in for Polygraphy's lazy ``torch``: installed and importable only once torch is imported."""

    def __init__(self, lazy):
        self._lazy = lazy

    def is_installed(self) -> bool:
        return "torch" in sys.modules

    def is_importable(self) -> bool:
        return "torch" in sys.modules

    def __getattr__(self, name):
        return getattr(self._lazy, name)


def guard_polygraphy() -> None:
    """Install the guard in every Polygraphy module that probes for torch (idempotent)."""
    for name in _PROBING_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        lazy = getattr(module, "torch", None)
        if lazy is not None and not isinstance(lazy, _ImportedOnly):
            module.torch = _ImportedOnly(lazy)
