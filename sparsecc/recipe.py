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

The canonicalisation passes always run first and are not listed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sparsecc.errors import OptionError
from sparsecc.passmanager import Pass, make_pass

_KEYS = {"name", "description", "passes", "verify"}
# Former names of built-in recipes, still accepted.
ALIASES = {"zeros": "detect"}


@dataclass
class Recipe:
    name: str
    description: str = ""
    passes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    verify: dict[str, Any] = field(default_factory=dict)
    source: str = "built-in"

    def build_passes(self) -> list[Pass]:
        from sparsecc.passes.canonicalize import CANONICAL_PASSES

        return [make_pass(n) for n in CANONICAL_PASSES] + [make_pass(n, **o) for n, o in self.passes]

    def with_options(self, pass_name: str, options: dict[str, Any], why: str) -> "Recipe":
        """A copy with ``options`` added to every ``pass_name`` pass (e.g. a speed target on ``plan-filters``).

        Raises:
            OptionError: The recipe has no such pass (``why`` names the option that needed it).
        """
        if not any(name == pass_name for name, _ in self.passes):
            raise OptionError(f"{why} needs a recipe with a {pass_name} pass; recipe '{self.name}' has none",
                              where=self.source, fix="use a filter recipe (filter-l1, filter-l2, hybrid-24) or your "
                                                     f"own with {pass_name}")
        passes = [(name, {**opts, **options} if name == pass_name else dict(opts)) for name, opts in self.passes]
        return Recipe(self.name, self.description, passes, dict(self.verify), self.source)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "source": self.source,
                "passes": [{n: o} if o else n for n, o in self.passes], "verify": self.verify}


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
        text = path.read_text()
    except OSError as exc:
        raise OptionError(f"cannot read the recipe ({exc.strerror})", where=str(path)) from None
    return parse_recipe(text, str(path))


def parse_recipe(text: str, source: str) -> Recipe:
    try:
        data = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise OptionError(f"the recipe is not valid YAML/JSON: {exc}", where=source) from None
    if not isinstance(data, dict):
        raise OptionError("a recipe is a mapping with keys name, description, passes", where=source)
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise OptionError(f"unknown recipe key(s) {unknown}", where=source, fix=f"use {sorted(_KEYS)}")
    passes = []
    for index, item in enumerate(data.get("passes") or []):
        if isinstance(item, str):
            passes.append((item, {}))
        elif isinstance(item, dict) and len(item) == 1:
            name, options = next(iter(item.items()))
            if options is not None and not isinstance(options, dict):
                raise OptionError(f"options of pass '{name}' must be a mapping", where=f"{source}: passes[{index}]")
            passes.append((name, dict(options or {})))
        else:
            raise OptionError("each pass is a name or a one-key mapping {name: {options}}",
                              where=f"{source}: passes[{index}]")
    name = data.get("name") or Path(source).stem
    return Recipe(str(name), str(data.get("description", "")), passes, dict(data.get("verify") or {}), source)
