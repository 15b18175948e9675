"""The registry of passes: recipes name a pass, the registry builds it.

Built-in passes register when :mod:`sparsecc.passes` is imported (every module in it); a user's
passes register when their module is imported (a recipe's ``imports:``, or the
``sparsecc.extensions`` entry point group, see :mod:`sparsecc.extensions`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from sparsecc.errors import OptionError
from sparsecc.passmanager.contract import Pass, Role

PASS_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to recipes by its name."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.role not in Role.ALL:
        raise TypeError(f"pass {cls.name!r} has role {cls.role!r}; use one of {Role.ALL}")
    if cls.name in PASS_REGISTRY and PASS_REGISTRY[cls.name] is not cls:
        raise TypeError(f"two passes are named {cls.name!r}")
    PASS_REGISTRY[cls.name] = cls
    return cls


def available_passes() -> dict[str, type[Pass]]:
    """Every registered pass (imports every module of :mod:`sparsecc.passes` and the installed extensions)."""
    import sparsecc.passes as package
    from sparsecc.extensions import load_installed_extensions

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"sparsecc.passes.{module.name}")
    load_installed_extensions()
    return dict(sorted(PASS_REGISTRY.items()))


def make_pass(name: str, **options: Any) -> Pass:
    """Build a registered pass by name, with its options."""
    passes = available_passes()
    if name not in passes:
        raise OptionError(f"there is no pass named '{name}'",
                          fix=f"known passes: {', '.join(passes)} (sparsecc compile --list-passes; a pass of your "
                              "own registers when its module is imported: a recipe's imports: list)")
    try:
        return passes[name](**options)
    except TypeError as exc:
        raise OptionError(f"bad options for pass '{name}': {exc}", fix="see sparsecc compile --list-passes") from None
