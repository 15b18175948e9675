"""Recipes: which passes a compile runs, with their options.

A recipe is a YAML or JSON file, or the name of a built-in one (the files in
``sparsecc/recipes/``; ``sparsecc recipes`` lists them)::

    name: groupwise-50
    description: Keep 50% of the groups of every conv but the first and last.
    verify: {atol: 1.0e-5, rtol: 1.0e-4}     # optional
    passes:
      - plan-groupwise: {keep: 0.5, criterion: l1}
      - apply-plan
      - groupwise-rewrite

The canonicalisation passes always run first and are not listed. ``imports:`` (optional) lists
modules of the user's own lowerings, passes or importance criteria to import first, by module
name or ``.py`` path relative to the recipe file (see :mod:`sparsecc.extensions`)::

    imports: [my_lowerings.py]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sparsecc.errors import OptionError
from sparsecc.limits import MAX_RECIPE_BYTES, MAX_RECIPE_TEXT, MAX_RECIPE_VALUES, count_values, human_bytes
from sparsecc.passmanager import Pass, make_pass

_KEYS = {"name", "description", "passes", "verify", "imports"}
# Former names of built-in recipes, still accepted.
ALIASES = {"zeros": "detect"}


@dataclass
class Recipe:
    name: str
    description: str = ""
    passes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    verify: dict[str, Any] = field(default_factory=dict)
    source: str = "built-in"
    imports: list[str] = field(default_factory=list)
    base_dir: Path | None = None  # the recipe file's folder: relative imports are found there

    def load_imports(self) -> None:
        """Import the modules the recipe names, so their lowerings, passes and criteria register."""
        from sparsecc.extensions import import_extension

        for spec in self.imports:
            import_extension(spec, self.base_dir, where=f"imports: of recipe '{self.name}' ({self.source})")

    def build_passes(self) -> list[Pass]:
        """The compile's passes: canonicalisation (one pipeline), then the recipe's, with their options."""
        from sparsecc.passes.canonicalize import Canonicalize

        self.load_imports()
        return [Canonicalize()] + [make_pass(n, **o) for n, o in self.passes]

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "description": self.description, "source": self.source,
                "passes": [{n: o} if o else n for n, o in self.passes], "verify": self.verify}
        if self.imports:
            data["imports"] = list(self.imports)
        return data


def builtin_recipes() -> dict[str, Recipe]:
    found = {}
    for entry in sorted(resources.files("sparsecc").joinpath("recipes").iterdir(), key=lambda p: p.name):
        if entry.name.endswith((".yaml", ".yml", ".json")):
            recipe = parse_recipe(entry.read_text(), f"built-in {entry.name}")
            found[recipe.name] = recipe
    return found


def load_recipe(name_or_path: str) -> Recipe:
    """A built-in recipe by name (or by a former name, see ``ALIASES``), or a recipe file by path."""
    builtins = builtin_recipes()
    name = ALIASES.get(name_or_path, name_or_path)
    if name in builtins:
        return builtins[name]
    path = Path(name_or_path)
    if not path.exists():
        raise OptionError(f"'{name_or_path}' is neither a built-in recipe nor a file",
                          fix=f"built-in recipes: {', '.join(builtins)} (sparsecc recipes), or a path to a YAML/JSON file")
    try:
        if not path.is_file():
            raise OptionError("the recipe is not a file", where=str(path), fix="give a YAML or JSON recipe file")
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise OptionError(f"the recipe file is {human_bytes(path.stat().st_size)}, above the limit of "
                              f"{human_bytes(MAX_RECIPE_BYTES)}", where=str(path),
                              fix="a recipe lists passes and their options: a few hundred bytes")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"cannot read the recipe ({getattr(exc, 'strerror', None) or exc})", where=str(path),
                          fix="give a YAML or JSON recipe file (UTF-8 text)") from None
    return parse_recipe(text, str(path), base_dir=path.parent)


def parse_recipe(text: str, source: str, base_dir: Path | None = None) -> Recipe:
    """A recipe from its text; every key checked for type and size (YAML aliases included) before use."""
    try:
        data = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise OptionError(f"the recipe is not valid YAML/JSON: {str(exc)[:300]}", where=source) from None
    if count_values(data, MAX_RECIPE_VALUES) is None:
        raise OptionError(f"the recipe holds more than {MAX_RECIPE_VALUES} values once its YAML aliases are "
                          "expanded (the limit)", where=source, fix="write the recipe without repeated aliases")
    if not isinstance(data, dict):
        raise OptionError("a recipe is a mapping with keys name, description, passes (and verify, imports)",
                          where=source)
    unknown = sorted(map(str, set(data) - _KEYS))
    if unknown:
        raise OptionError(f"unknown recipe key(s) {unknown}", where=source, fix=f"use {sorted(_KEYS)}")
    name, description = data.get("name") or Path(source).stem, data.get("description") or ""
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str) or len(value) > MAX_RECIPE_TEXT:
            raise OptionError(f"'{key}' must be text of at most {MAX_RECIPE_TEXT} characters, got "
                              f"{_kind(value)}", where=source, fix=f"write {key}: as one line of text")
    steps = data.get("passes") or []
    if not isinstance(steps, list):
        raise OptionError(f"'passes' must be a list of passes, got {_kind(steps)}", where=source,
                          fix="passes:\n  - plan-groupwise: {keep: 0.5}\n  - apply-plan")
    verify = data.get("verify") or {}
    if not isinstance(verify, dict):
        raise OptionError(f"'verify' must be a mapping, got {_kind(verify)}", where=source,
                          fix="verify: {atol: 1.0e-5, rtol: 1.0e-4}")
    passes = []
    for index, item in enumerate(steps):
        if isinstance(item, str):
            passes.append((item, {}))
        elif isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item)), str):
            pass_name, options = next(iter(item.items()))
            if options is not None and not isinstance(options, dict):
                raise OptionError(f"options of pass '{pass_name}' must be a mapping, got {_kind(options)}",
                                  where=f"{source}: passes[{index}]")
            check_option_types(pass_name, options or {}, f"{source}: passes[{index}]")
            passes.append((pass_name, dict(options or {})))
        else:
            raise OptionError("each pass is a name or a one-key mapping {name: {options}}",
                              where=f"{source}: passes[{index}]")
    imports = data.get("imports") or []
    imports = [imports] if isinstance(imports, str) else imports
    if not isinstance(imports, list) or not all(isinstance(i, str) and i.strip() for i in imports):
        raise OptionError("imports: is a list of module names or .py files", where=f"{source}: imports",
                          fix="e.g. imports: [my_lowerings.py] or imports: [mypackage.lowerings]")
    return Recipe(name, description, passes, dict(verify), source, list(imports), base_dir)


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def check_option_types(name: str, options: dict[str, Any], where: str) -> None:
    """Each option of a pass against its default's type (a number where a number is expected, ...);
    options whose default is None are the pass's to check."""
    import inspect

    from sparsecc.passmanager import available_passes

    cls = available_passes().get(name)
    if cls is None:
        return  # an unknown pass is refused, with the list of passes, when the recipe is built
    parameters = inspect.signature(cls.__init__).parameters
    for key, value in options.items():
        default = parameters[key].default if key in parameters else None
        expected = _EXPECTED.get(type(default))
        if expected is not None and not (isinstance(value, expected[0]) and not
                                         (isinstance(value, bool) and bool not in expected[0])):
            raise OptionError(f"option '{key}' of pass '{name}' must be {expected[1]} (its default is "
                              f"{default!r}), got {_kind(value)}", where=where,
                              fix="see sparsecc compile --list-passes and the recipes in sparsecc recipes")


# default's type -> (accepted types, how to say it)
_EXPECTED = {bool: ((bool,), "true or false"), int: ((int,), "a whole number"),
             float: ((int, float), "a number"), str: ((str,), "text")}
