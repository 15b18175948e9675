"""Does a change keep sparsecc's output identical? Compile digests of every built-in recipe on the zoo's models.

Compiles every built-in recipe on the zoo's trained checkpoints (``models/checkpoints/*.onnx``) with
``--cost-model analytic --timing-cache off`` and ``--disable-pass deprune-model-check`` (the one pass that
times the whole model whatever the cost model; so no choice depends on a timing) and records, per model and
recipe: the sha256 of ``model.onnx`` and ``plan.json``, the MACs and parameters before and after, and the
decisions of the report (each pass's status, rewrite count, notes, details and the layers it left with
their reasons; the shape changes; the verification figures), both as a digest and as a short readable list.
Run-dependent fields (seconds, paths, the environment) are left out. A recipe that refuses a model (e.g.
DEPrune's on a model without depthwise convolutions) is recorded with its exit code and message.

    python tools/compare_builds.py --save baseline.json            # record
    python tools/compare_builds.py --against baseline.json         # record again and compare; exit 1 if any differs

It compiles with the sparsecc that ``--python`` imports (``python -m sparsecc.cli``; this interpreter
by default), from this tree's folder: run the copy of the tool in the checkout whose code is compiled
(a baseline from an unchanged checkout, with its own environment). ``--models`` and ``--recipes``
narrow the set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare_recipes import batch_one  # the --shape options fixing dynamic dims to 1 (a script beside this one)

ROOT = Path(__file__).resolve().parent.parent
# Passes that time the whole model whatever the cost model says: disabled, so that no choice depends on a timing.
TIMED_PASSES = ("deprune-model-check",)
# Fields of the report that change from run to run (or with the machine), not with what was compiled.
VOLATILE = {"seconds", "compile_seconds", "environment", "outputs", "timing_cache", "input", "source"}


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def strip_volatile(value):
    """The report without the fields in ``VOLATILE`` (at any depth)."""
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def builtin_recipe_names(python: str) -> list[str]:
    code = "import json, sparsecc.recipe as r; print(json.dumps(sorted(r.builtin_recipes())))"
    return json.loads(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout)


def compile_one(python: str, model: Path, recipe: str, out: Path) -> dict:
    """One compile's record: digests of its outputs and its decisions, or its refusal."""
    disabled = [option for name in TIMED_PASSES for option in ("--disable-pass", name)]
    # relative to the tree compiled from: reports (which name the model) then read alike from any checkout
    shown = model.relative_to(ROOT) if model.is_relative_to(ROOT) else model
    command = [python, "-m", "sparsecc.cli", "compile", str(shown), "--recipe", recipe, "-o", str(out),
               "--cost-model", "analytic", "--timing-cache", "off", "--json", *disabled, *batch_one(model)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return {"exit": result.returncode, "message": lines[-1] if lines else ""}
    report = strip_volatile(json.loads(result.stdout))
    summary = report["summary"]
    decisions = {"passes": report["passes"], "skipped": report["skipped"],
                 "shape_changes": report["shape_changes"], "verification": report["verification"]}
    return {
        "exit": 0,
        "model_sha256": sha256(out / "model.onnx"),
        "data_sha256": sha256(out / "model.onnx.data"),
        "plan_sha256": sha256(out / "plan.json"),
        "macs": [summary["macs_before"], summary["macs_after"]],
        "params": [summary["params_before"], summary["params_after"]],
        "warnings": summary.get("warnings", []),
        "passes": [[p["name"], p["status"], p.get("rewrites", 0)] for p in report["passes"]],
        "left_as_they_were": [[s["pass"], s["layer"], s["reason"]] for s in report["skipped"]],
        "decisions_sha256": digest(decisions),
        "report_sha256": digest(report),
    }


def compare(baseline: dict, current: dict) -> list[str]:
    """One line per (model, recipe) whose record differs, naming the fields."""
    differences = []
    for model in sorted(set(baseline) | set(current)):
        recipes_base, recipes_now = baseline.get(model, {}), current.get(model, {})
        for recipe in sorted(set(recipes_base) | set(recipes_now)):
            if recipe not in recipes_base or recipe not in recipes_now:
                differences.append(f"{model} {recipe}: only in {'current' if recipe in recipes_now else 'baseline'}")
                continue
            a, b = recipes_base[recipe], recipes_now[recipe]
            fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if fields:
                differences.append(f"{model} {recipe}: differs in {', '.join(fields)}")
    return differences


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save", metavar="FILE", help="write the records to FILE (JSON)")
    parser.add_argument("--against", metavar="FILE", help="compare with the records in FILE; exit 1 if any differs")
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose sparsecc compiles. "
                                                                  "Default: this one")
    parser.add_argument("--models", nargs="*", help="ONNX files. Default: models/checkpoints/*.onnx")
    parser.add_argument("--recipes", nargs="*", help="recipe names. Default: every built-in recipe")
    args = parser.parse_args()
    models = [Path(m).resolve() for m in args.models] if args.models else \
        sorted((ROOT / "models" / "checkpoints").glob("*.onnx"))
    recipes = args.recipes or builtin_recipe_names(args.python)
    records: dict[str, dict] = {}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for recipe in recipes:
                record = compile_one(args.python, model, recipe, Path(tmp) / f"{model.stem}-{recipe}")
                records.setdefault(model.name, {})[recipe] = record
                shown = record.get("model_sha256", "")[:12] if record["exit"] == 0 else \
                    f"exit {record['exit']}: {record['message'][:80]}"
                print(f"{model.name:40} {recipe:24} {shown}", flush=True)
    print(f"{sum(len(r) for r in records.values())} compiles in {time.time() - started:.0f} s")
    if args.save:
        Path(args.save).write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.save}")
    if args.against:
        differences = compare(json.loads(Path(args.against).read_text()), records)
        for line in differences:
            print(line)
        print(f"{len(differences)} difference(s) from {args.against}")
        return 1 if differences else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
