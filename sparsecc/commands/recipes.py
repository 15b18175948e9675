"""sparsecc recipes: list the built-in recipes."""

from __future__ import annotations

from sparsecc.commands._common import print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("recipes", help="list the built-in recipes", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from sparsecc.recipe import builtin_recipes

    recipes = builtin_recipes()
    if args.json:
        print_json([r.to_dict() for r in recipes.values()])
        return 0
    width = max(len(n) for n in recipes)
    for name, recipe in recipes.items():
        steps = " -> ".join(n for n, _ in recipe.passes) or "(canonicalise only)"
        print(f"{name.ljust(width)}  {recipe.description}\n{' ' * width}  passes: {steps}")
    return 0
