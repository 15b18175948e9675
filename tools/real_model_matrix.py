"""Compile every real model (tools/fetch_real_models.py) with several recipes and tabulate the contract.

For each model x recipe: did it compile (or the error's first line), does the compiled model run at
another batch (the compile's own second-shape check, else a batch-2 run), are the model-level fields
kept, and the speedup over the input model measured by ``sparsecc bench`` (interleaved, host
wall-clock, ONNX Runtime CPU) with the 1-minute load average beside it. Prints a Markdown table and
writes the rows as JSON.

    python tools/real_model_matrix.py [--models DIR] [--recipes none,detect,...] [--runs 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from fetch_real_models import MODEL_INPUTS  # noqa: E402

RECIPES = ["none", "detect", "filter-l2", "groupwise-50", "hybrid-24", "deprune-bh"]


def _fields(path: Path) -> dict:
    proto = onnx.load(str(path), load_external_data=False)
    return {"metadata_props": {p.key: p.value for p in proto.metadata_props}, "producer": proto.producer_name,
            "doc": proto.doc_string, "version": proto.model_version}


def _runs_at_batch_two(report: dict, compiled: Path, feeds) -> str:
    second = report["verification"].get("second_shape") or {}
    if second.get("shapes"):
        return "yes (checked at compile)" if second.get("passed") else f"not checked: {second['note'][:60]}"
    return "batch fixed by the input model"


def one(model: Path, recipe: str, spec: dict, runs: int, work: Path) -> dict:
    from sparsecc.bench import bench_models
    from sparsecc.compiler import compile_model
    from sparsecc.errors import SparseccError
    from sparsecc.feeds import FeedOptions

    shapes = {name: tuple(shape) for name, shape in spec.get("shapes", {}).items()}
    feeds = FeedOptions(ranges={n: tuple(r) for n, r in spec.get("ranges", {}).items()}) if spec.get("ranges") \
        else None
    row = {"model": model.name, "recipe": recipe}
    started = time.perf_counter()
    try:
        result = compile_model(model, recipe, work / recipe, shapes=shapes, force=True, inputs=feeds,
                               cost_model="analytic", timing_cache="off")
    except SparseccError as exc:
        row.update(compiled=f"no: {exc.what.splitlines()[0][:110]}")
        return row
    except Exception as exc:  # noqa: BLE001 - a crash is a finding, recorded as one
        row.update(compiled=f"CRASH {type(exc).__name__}: {str(exc)[:100]}")
        return row
    report = result.report
    row.update(compiled="yes", seconds=round(time.perf_counter() - started, 1),
               ideal=report["summary"]["ideal_speedup"],
               another_batch=_runs_at_batch_two(report, result.model_path, feeds),
               fields_kept=_fields(model) == _fields(result.model_path))
    bench = bench_models([model, result.model_path], shapes=shapes, runs=runs, warmup=3, inputs=feeds)
    row.update(speedup=round(bench["speedup"], 3), load=round(os.getloadavg()[0], 2))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO / ".real_models")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--only", help="comma-separated model file names")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    only = set(args.only.split(",")) if args.only else None
    for model in sorted(args.models.glob("**/*.onnx")):
        spec = MODEL_INPUTS.get(model.name)
        if spec is None or (only and model.name not in only):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            for recipe in args.recipes.split(","):
                row = one(model, recipe, spec, args.runs, Path(tmp))
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print("| model | recipe | compiled | runs at another batch | fields kept | ideal | speedup (load) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['speedup']:.2f}x ({r['load']})" if "speedup" in r else "-"
        print(f"| {r['model']} | {r['recipe']} | {r['compiled']} | {r.get('another_batch', '-')} | "
              f"{r.get('fields_kept', '-')} | {r.get('ideal', '-')} | {speed} |")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
