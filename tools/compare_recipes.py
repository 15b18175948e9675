"""Do two sparsecc installations compile the zoo models alike? MACs and verification per recipe.

Runs ``SPARSECC compile MODEL --recipe R --json`` for every built-in recipe (group-wise recipes with
``groupwise-rewrite: {cost_model: analytic}``, written as recipe files, so the choice does not depend
on timing noise) with each of two ``sparsecc`` executables, and prints per (model, recipe): MACs
after, the ideal speedup, whether verification passed, the worst relative error, and whether the
two agree. Exit status 1 when any MAC count or verification result differs.

    python tools/compare_recipes.py BASELINE_SPARSECC CANDIDATE_SPARSECC [--models a.onnx ...]

Without ``--models`` it uses the zoo's trained checkpoints.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPES = ["none", "groupwise-75", "groupwise-50", "groupwise-25", "zeros", "filter-l1", "filter-l2", "hybrid-24",
           "24-only", "24-then-filter"]


def recipe_file(name: str, folder: Path, extra: dict | None = None) -> str:
    """The built-in recipe, with the group-wise cost model made analytic (deterministic), plus ``extra``
    options of groupwise-rewrite."""
    import yaml

    import sparsecc

    source = Path(sparsecc.__file__).parent / "recipes" / f"{name}.yaml"
    recipe = yaml.safe_load(source.read_text())
    if "groupwise-rewrite" not in recipe.get("passes", []):
        return name
    options = {"cost_model": "analytic", **(extra or {})}
    recipe["passes"] = [{"groupwise-rewrite": options} if p == "groupwise-rewrite" else p for p in recipe["passes"]]
    recipe["name"] = f"{name}-analytic"
    path = folder / f"{name}-analytic.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def batch_one(model: Path) -> list[str]:
    """``--shape`` options fixing a dynamic batch dimension to 1 (other dims must be static)."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    options = []
    for tensor in proto.graph.input:
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in tensor.type.tensor_type.shape.dim]
        options += ["--shape", f"{tensor.name}:{'x'.join(map(str, dims))}"]
    return options


def compile_json(executable: str, model: Path, recipe: str, out: Path) -> dict:
    result = subprocess.run([executable, "compile", str(model), "--recipe", recipe, "-o", str(out), "--json",
                             *batch_one(model)], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        return {"error": f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1:]}"}
    report = json.loads(result.stdout)
    exact = report["verification"]["exact"]
    return {"macs": report["summary"]["macs_after"], "ideal": report["summary"]["ideal_speedup"],
            "passed": exact["passed"], "error": None, "worst": exact["worst_relative_error"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline")
    parser.add_argument("candidate")
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--recipes", nargs="*", default=RECIPES)
    parser.add_argument("--rewrite-options", default="{}",
                        help='more groupwise-rewrite options, as JSON (e.g. \'{"fold": false}\')')
    args = parser.parse_args()
    import sparsecc.models as models_pkg

    models = [Path(m) for m in args.models] if args.models else \
        sorted((Path(models_pkg.__file__).parent / "checkpoints").glob("*.onnx"))
    differ = 0
    print(f"{'model':22} {'recipe':16} {'MACs base':>12} {'MACs new':>12} {'ideal':>7} {'verified':>9} "
          f"{'worst err base/new':>20} same")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for model in models:
            for name in args.recipes:
                recipe = recipe_file(name, folder, json.loads(args.rewrite_options))
                base = compile_json(args.baseline, model, recipe, folder / "base")
                new = compile_json(args.candidate, model, recipe, folder / "new")
                same = base.get("macs") == new.get("macs") and base.get("passed") == new.get("passed") \
                    and bool(base["error"]) == bool(new["error"])
                differ += not same
                if base["error"] or new["error"]:
                    print(f"{model.stem:22} {name:16} base: {base['error']}  new: {new['error']}  "
                          f"{'yes' if same else 'NO'}")
                    continue
                print(f"{model.stem:22} {name:16} {base['macs']:>12,} {new['macs']:>12,} {new['ideal']:>7} "
                      f"{str(base['passed']) + '/' + str(new['passed']):>9} "
                      f"{base['worst']:>9.2g}/{new['worst']:<9.2g} {'yes' if same else 'NO'}", flush=True)
    print(f"{differ} difference(s)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
