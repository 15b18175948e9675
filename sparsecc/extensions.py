"""Extensions: a user's module of lowerings, passes or importance criteria, imported so they register.

A lowering registers with :func:`sparsecc.lowering.register_lowering`, a pass with
:func:`sparsecc.passmanager.register_pass`, a filter importance with
:func:`sparsecc.sparsity.importance.register_filter_importance` and a group-wise criterion with
:func:`sparsecc.sparsity.importance.register_group_criterion`, all when their module is imported.
Two ways to have it imported:

- a recipe's ``imports:`` list, each item a module name (``mypackage.lowerings``) or a path to a
  ``.py`` file (relative to the recipe file's folder)::

      name: my-recipe
      imports: [my_lowerings.py]
      passes:
        - plan-groupwise: {keep: 0.5}
        - apply-plan
        - groupwise-rewrite: {lowering: my-lowering}

- an installed package's entry point in the group ``sparsecc.extensions`` (imported the first time
  the pass registry is listed)::

      [project.entry-points."sparsecc.extensions"]
      my-lowerings = "mypackage.lowerings"
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from sparsecc.errors import OptionError

ENTRY_POINT_GROUP = "sparsecc.extensions"
_FILE_MODULES: dict[Path, ModuleType] = {}
_installed_loaded = False


def import_extension(spec: str, base_dir: str | Path | None = None, where: str | None = None) -> ModuleType:
    """Import a module of extensions, by module name or by the path of a ``.py`` file.

    Args:
        spec: ``package.module``, or a path ending in ``.py``.
        base_dir: Folder a relative path is resolved against (the recipe file's). Defaults to the
            current folder.
        where: Where ``spec`` was named, for messages (e.g. the recipe file). Defaults to none.

    Raises:
        OptionError: The file does not exist, or importing the module failed (the message gives the
            exception it raised).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise OptionError(f"an import must be a module name or a .py file, not {spec!r}", where=where,
                          fix="e.g. imports: [my_lowerings.py] or imports: [mypackage.lowerings]")
    if spec.endswith(".py"):
        return _import_file(Path(base_dir or ".") / Path(spec).expanduser(), spec, where)
    try:
        return importlib.import_module(spec)
    except Exception as exc:  # noqa: BLE001  (a user's module can raise anything; say what and where)
        raise OptionError(f"cannot import module '{spec}': {type(exc).__name__}: {exc}", where=where,
                          fix="install the package that provides it, or give the path of a .py file") from None


def _import_file(path: Path, spec: str, where: str | None) -> ModuleType:
    path = path.resolve()
    if path in _FILE_MODULES:
        return _FILE_MODULES[path]
    if not path.is_file():
        raise OptionError(f"the extension file '{spec}' does not exist ({path})", where=where,
                          fix="give a path relative to the recipe file's folder, or an absolute one")
    # one module name per file, so two files called lowerings.py do not replace each other
    name = f"sparsecc_extension_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        del sys.modules[name]
        raise OptionError(f"importing '{path}' failed: {type(exc).__name__}: {exc}", where=where,
                          fix="fix the module (run `python FILE` to see the traceback)") from None
    _FILE_MODULES[path] = module
    return module


def load_installed_extensions() -> list[str]:
    """Import every module of the ``sparsecc.extensions`` entry point group, once; their names."""
    global _installed_loaded
    if _installed_loaded:
        return []
    from importlib.metadata import entry_points

    loaded = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:  # noqa: BLE001
            raise OptionError(f"the installed extension '{entry.name}' ({entry.value}) cannot be imported: "
                              f"{type(exc).__name__}: {exc}", where=f"entry point group {ENTRY_POINT_GROUP}",
                              fix="fix or uninstall the package that declares it") from None
        loaded.append(entry.value)
    _installed_loaded = True
    return loaded
