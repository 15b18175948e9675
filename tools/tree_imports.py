"""Import sparsecc from this working tree on a machine where it is not installed (a GPU machine with no network).

``pip install -e .`` maps ``plugins/``, ``models/`` and ``passes/`` to ``sparsecc.plugins``, ``sparsecc.models``
and ``sparsecc.passes``; :func:`use_working_tree` does the same for one process by putting the repository
root on ``sys.path`` and on ``sparsecc.__path__``. Where sparsecc is installed it does nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def use_working_tree() -> None:
    """Make ``import sparsecc`` (with its plugins, models and passes) work from this tree."""
    try:
        import sparsecc.plugins  # noqa: F401
        return
    except ImportError:
        pass
    sys.path.insert(0, str(ROOT))
    for name in [n for n in sys.modules if n == "sparsecc" or n.startswith("sparsecc.")]:
        del sys.modules[name]
    import sparsecc

    sparsecc.__path__.append(str(ROOT))
