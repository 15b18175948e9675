"""Decisions that hold on a busy machine: compiles, cache reuse and benchmarks, quiet against loaded.

The protocol, end to end, on ONNX Runtime CPU:

1. Models written in plain PyTorch in tools/ (EfficientNet-B0 and MobileNetV2 from ``bench_deprune.py``,
   ResNet-18 from ``bench_user_graphs.py``; trained-like BatchNorm statistics), batch 1, 224x224, exported with
   ``torch.onnx.export(..., dynamo=False)``. Recipes: ``deprune-bh`` on the first two,
   ``groupwise-50`` on ResNet-18; and a speed target, ``filter-l2 --target-speedup 2`` on the ResNet-50-style
   model of ``speed_target_models.py`` (its latency tables and correction rounds are timed too; its
   claim is the speedup the compile measured for the allocation it chose).
2. Quiet: one compile per model with a fresh timing cache; the speedup its report claims (the
   whole-model check's paired CPU-time speedup) is measured again (60 paired runs, one thread);
   one compile with ``--cost-model analytic`` and no cache.
3. Loaded (``--busy`` processes running ``while True: pass``): ``--loaded-compiles`` compiles per
   model, each with a fresh cache; ``sparsecc bench`` of the model against its quiet compile.
4. Quiet again: a compile from a copy of a cache filled under load (are the decisions the quiet
   machine's?); ``--cost-model analytic`` with the loaded cache and with the quiet one (the same bytes
   as with none?); ``sparsecc bench`` of the same pair (do the intervals overlap the loaded ones?).

Every figure carries the load average (1 minute) before and after. "Quiet" is whatever the machine
is without the busy loops (shared machines: the report says what its load was). Writes one JSON
and a Markdown table; prints the wall time the protocol took.

Usage::

    python tools/bench_decisions_under_load.py --out decisions-under-load   # 16 min at load 6-10 on 2 cores
    python tools/bench_decisions_under_load.py --models resnet18 --loaded-compiles 1 --out quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_deprune import build_own, trained_like_batchnorm  # noqa: E402  (model code written in tools/)
from bench_user_graphs import build as build_user_graph  # noqa: E402
from speed_target_models import MODELS as SPEED_TARGET_MODELS  # noqa: E402
from speed_target_models import build as build_speed_target_model  # noqa: E402
from speed_target_models import export as export_speed_target_model  # noqa: E402

from sparsecc.compiler import compile_model  # noqa: E402
from sparsecc.environment import environment  # noqa: E402
from sparsecc.measure import MeasureSettings, measure_models, read_load  # noqa: E402
from sparsecc.measure.readout import readout  # noqa: E402
from sparsecc.tables import markdown_table  # noqa: E402

SPEED_TARGET = "filter-l2 --target-speedup 2"
CASES = {"efficientnet-b0": ("own-efficientnet-b0", "deprune-bh"), "mobilenetv2": ("own-mobilenetv2", "deprune-bh"),
         "resnet18": ("resnet18", "groupwise-50"), "resnet50-target": ("resnet50", SPEED_TARGET)}
CHECK_PASSES = {"deprune-bh": "deprune-model-check", "groupwise-50": "groupwise-rewrite", SPEED_TARGET: "plan-filters"}
COMPILE_LABELS = [("quiet, cache filled under load", "reused"), ("analytic, no cache", "analytic_none"),
                  ("analytic, loaded cache", "analytic_loaded_cache"),
                  ("analytic, quiet cache", "analytic_quiet_cache")]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {read_load()[0]:.2f}] {message}", file=sys.stderr, flush=True)


class BusyLoops:
    """``count`` processes running ``while True: pass`` while the block runs (each ended by its own pid)."""

    def __init__(self, count: int, settle_s: float):
        self.count, self.settle_s, self.processes = count, settle_s, []

    def __enter__(self):
        for _ in range(self.count):
            self.processes.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        time.sleep(self.settle_s)  # the 1-minute load average climbs towards the new load
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

def export(name: str, folder: Path) -> Path:
    import torch

    path = folder / f"{name}.onnx"
    if name in SPEED_TARGET_MODELS:
        net, example = build_speed_target_model(name)
        export_speed_target_model(net, example, path)
        return path
    torch.manual_seed(0)
    net = build_user_graph(name) if name == "resnet18" else build_own(name)
    trained_like_batchnorm(net)
    torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    return path


# ----------------------------------------------------------------------------------------------
# One compile, and what it decided
# ----------------------------------------------------------------------------------------------

def decisions(report: dict) -> dict:
    """Per lowering pass, each layer's lowering; whether each whole-model check kept the result."""
    found = {}
    for record in report["passes"]:
        details = record.get("details") or {}
        layers = {name: info["lowering"] for name, info in (details.get("layers") or {}).items() if "lowering" in info}
        if layers:
            found[record["name"]] = layers
        target = details.get("speed_target") or {}
        if record["name"] == "plan-filters" and target.get("rounds"):  # a speed target: the counts it chose
            found["plan-filters:kept"] = target["rounds"][target["chosen_round"]]["kept"]
        check = details.get("model_check") or (details if record["name"] == "deprune-model-check" else None)
        if check and "kept" in check:
            found[record["name"] + ":kept"] = check["kept"]
    return found


def compile_recipe(recipe: str):
    """A recipe name as ``compile_model`` takes it (the speed target: filter-l2 with the target set)."""
    from sparsecc.recipe import load_recipe, with_speed_target

    return with_speed_target(load_recipe("filter-l2"), 2.0, None) if recipe == SPEED_TARGET else recipe


def claimed_speedup(report: dict, recipe: str) -> dict | None:
    """The whole-model check's evidence, as the report gives it (None when nothing was timed)."""
    record = next(r for r in report["passes"] if r["name"] == CHECK_PASSES[recipe])
    details = record.get("details") or {}
    if recipe == SPEED_TARGET:  # the measured speedup of the allocation the compile chose
        result = (details.get("speed_target") or {}).get("result") or {}
        if "achieved" not in result:
            return None
        return {"cpu": result["achieved"], "wall": result["wall"], "kept": True, "decided_by": "CPU time",
                "reason": f"target {result['target']}, reached: {result['reached']}"}
    check = details.get("model_check") if recipe == "groupwise-50" else details
    if not check or "evidence" not in check:
        return None
    evidence = check["evidence"]
    return {"cpu": evidence["cpu"]["estimate"], "wall": evidence["wall"]["estimate"], "kept": check["kept"],
            "decided_by": check.get("decided_by"), "reason": check.get("reason")}


def compile_once(model: Path, recipe: str, out: Path, cache, cost_model: str | None = None) -> dict:
    before = read_load()
    start = time.perf_counter()
    result = compile_model(model, compile_recipe(recipe), out, timing_cache=cache, cost_model=cost_model, force=True)
    seconds = time.perf_counter() - start
    report = result.report
    return {"macs_before": report["summary"]["macs_before"], "macs_after": report["summary"]["macs_after"],
            "sha256": hashlib.sha256(result.model_path.read_bytes()).hexdigest(), "seconds": round(seconds, 1),
            "load_before": before[0], "load_after": read_load()[0], "decisions": decisions(report),
            "claimed": claimed_speedup(report, recipe), "timing_cache": report.get("timing_cache"),
            "model": str(result.model_path)}


def remeasure(model: Path, compiled: Path, pairs: int) -> dict:
    measured = measure_models({"input": model, "compiled": compiled}, "input", None, 1, MeasureSettings.fixed(pairs))
    return readout(measured.evidence["compiled"])


def bench_pair(model: Path, compiled: Path, runs: int, threads: int) -> dict:
    from sparsecc.bench import bench_models

    result = bench_models([model, compiled], threads=threads, runs=runs)
    return {k: result[k] for k in ("speedup", "speedup_ci", "cpu_speedup", "cpu_speedup_ci", "load", "notes", "ideal")}


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


# ----------------------------------------------------------------------------------------------
# The protocol
# ----------------------------------------------------------------------------------------------

def _step(case: dict, what: str, work) -> None:
    """Run one step of a case; a failure is recorded in the case (the protocol goes on with the others)."""
    try:
        work()
    except Exception as err:  # noqa: BLE001 - recorded, and the other models still run
        case.setdefault("errors", []).append(f"{what}: {type(err).__name__}: {err}")
        say(f"{case['source']}: {what} FAILED: {err}")


def _quiet_first(case: dict, name: str, recipe: str, work: Path, args) -> None:
    model = export(case["source"], work)
    case["model"] = str(model)
    quiet_cache = work / f"{name}-quiet-cache.json"
    quiet_cache.unlink(missing_ok=True)
    case["quiet"] = compile_once(model, recipe, work / f"{name}-quiet", quiet_cache)
    case["quiet_remeasured"] = remeasure(model, Path(case["quiet"]["model"]), args.pairs)
    case["analytic_none"] = compile_once(model, recipe, work / f"{name}-analytic-none", "off", "analytic")


def _loaded(case: dict, name: str, recipe: str, work: Path, args) -> None:
    model = Path(case["model"])
    case["loaded"] = []
    for index in range(args.loaded_compiles):
        say(f"{name}: compile {index + 1}/{args.loaded_compiles} under {args.busy} busy loops")
        cache = work / f"{name}-loaded-cache-{index}.json"
        cache.unlink(missing_ok=True)
        case["loaded"].append(compile_once(model, recipe, work / f"{name}-loaded-{index}", cache))
    say(f"{name}: bench under load")
    case["bench_loaded"] = {t: bench_pair(model, Path(case["quiet"]["model"]), args.runs, t) for t in (1, 2)}


def _quiet_again(case: dict, name: str, recipe: str, work: Path, args) -> None:
    model = Path(case["model"])
    reused = work / f"{name}-reused-cache.json"
    shutil.copy(work / f"{name}-loaded-cache-0.json", reused)
    case["reused"] = compile_once(model, recipe, work / f"{name}-reused", reused)
    case["analytic_loaded_cache"] = compile_once(model, recipe, work / f"{name}-analytic-loaded",
                                                 work / f"{name}-loaded-cache-0.json", "analytic")
    case["analytic_quiet_cache"] = compile_once(model, recipe, work / f"{name}-analytic-quiet",
                                                work / f"{name}-quiet-cache.json", "analytic")
    case["bench_quiet"] = {t: bench_pair(model, Path(case["quiet"]["model"]), args.runs, t) for t in (1, 2)}
    case["checks"] = checks(case)


def run(args) -> dict:
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"environment": environment(), "settings": vars(args), "cases": {}}
    cases = {name: CASES[name] for name in args.models}
    started = time.perf_counter()
    for name, (source, recipe) in cases.items():
        say(f"{name}: export and quiet compiles ({recipe})")
        case = results["cases"][name] = {"recipe": recipe, "source": source}
        _step(case, "quiet compiles", lambda: _quiet_first(case, name, recipe, work, args))
    save(results, out)  # what is measured so far survives an interrupted run
    ready = {name: c for name, c in results["cases"].items() if "quiet" in c}
    with BusyLoops(args.busy, args.settle_s):
        for name, case in ready.items():
            _step(case, "loaded compiles", lambda: _loaded(case, name, case["recipe"], work, args))
    save(results, out)
    for name, case in ready.items():
        if "loaded" in case and case["loaded"]:
            say(f"{name}: quiet again: cache filled under load, analytic with caches, bench")
            _step(case, "quiet again", lambda: _quiet_again(case, name, case["recipe"], work, args))
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def checks(case: dict) -> dict:
    quiet = case["quiet"]
    claimed = quiet["claimed"]
    again = case["quiet_remeasured"]
    claim = (claimed["cpu"] if claimed["kept"] else 1.0) if claimed else None
    return {
        "loaded_same_macs": [c["macs_after"] == quiet["macs_after"] for c in case["loaded"]],
        "loaded_same_decisions": [c["decisions"] == quiet["decisions"] for c in case["loaded"]],
        "claim_vs_remeasured": None if claim is None else round(again["cpu_speedup"] / claim, 4),
        "claim_within_10pct": None if claim is None else abs(again["cpu_speedup"] / claim - 1.0) <= 0.10,
        "reused_loaded_cache_gives_quiet_decisions": case["reused"]["decisions"] == quiet["decisions"],
        "reused_same_bytes_as_quiet": case["reused"]["sha256"] == quiet["sha256"],
        "analytic_identical": len({case[k]["sha256"] for k in ("analytic_none", "analytic_loaded_cache",
                                                               "analytic_quiet_cache")}) == 1,
        "bench_wall_overlap": {t: _overlap(case["bench_quiet"][t]["speedup_ci"], case["bench_loaded"][t]["speedup_ci"])
                               for t in case["bench_quiet"]},
        "bench_cpu_overlap": {t: _overlap(case["bench_quiet"][t]["cpu_speedup_ci"],
                                          case["bench_loaded"][t]["cpu_speedup_ci"]) for t in case["bench_quiet"]},
    }


def _load(record: dict) -> str:
    return f"{record['load_before']:.1f}->{record['load_after']:.1f}"


def _ci(figures: dict, key: str) -> str:
    low, high = figures[key + "_ci"]
    return f"{figures[key]:.3f} [{low:.3f}, {high:.3f}]"


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = ["# Decisions under load", "",
             f"{env.get('cpu')} ({env.get('cpu_count')} cores), onnxruntime {env.get('onnxruntime')}; "
             f"{results['settings']['busy']} busy loops for the loaded runs; protocol time {results['seconds']} s. "
             "Load = 1-minute load average before->after each step.", "", "## Compiles", ""]
    rows = []
    for name, case in results["cases"].items():
        loaded = [(f"loaded {i + 1}", r) for i, r in enumerate(case.get("loaded", []))]
        records = [("quiet", case.get("quiet"))] + loaded
        records += [(label, case.get(key)) for label, key in COMPILE_LABELS]
        for label, record in [(label, record) for label, record in records if record]:
            claimed = record["claimed"]
            rows.append([name, case["recipe"], label, _load(record), f"{record['macs_before'] / 1e6:.1f}M",
                         f"{record['macs_after'] / 1e6:.1f}M", record["sha256"][:12],
                         "-" if not claimed else f"{claimed['cpu']:.3f} ({claimed['decided_by']})", record["seconds"]])
    lines += markdown_table(rows, ["model", "recipe", "compile", "load", "MACs before", "MACs after",
                                   "model.onnx sha256", "claimed speedup (CPU)", "s"]).split("\n")
    lines += ["", "## Checks", ""]
    rows = []
    done = {name: case for name, case in results["cases"].items() if "checks" in case}
    for name, case in done.items():
        c = case["checks"]
        rows.append([name, f"{sum(c['loaded_same_macs'])}/{len(c['loaded_same_macs'])}",
                     f"{sum(c['loaded_same_decisions'])}/{len(c['loaded_same_decisions'])}",
                     f"{c['claim_vs_remeasured']} ({'yes' if c['claim_within_10pct'] else 'NO'})",
                     "yes" if c["reused_loaded_cache_gives_quiet_decisions"] else "NO",
                     "yes" if c["analytic_identical"] else "NO",
                     ", ".join(f"{t} thr: wall {'yes' if c['bench_wall_overlap'][t] else 'NO'} / CPU "
                               f"{'yes' if c['bench_cpu_overlap'][t] else 'NO'}" for t in c["bench_wall_overlap"])])
    lines += markdown_table(rows, ["model", "loaded compiles, same MACs as quiet", "same decisions",
                                   "re-measured / claimed (within 10%)", "loaded cache -> quiet decisions",
                                   "analytic byte-identical", "bench intervals overlap"]).split("\n")
    lines += ["", "## sparsecc bench, quiet vs loaded", ""]
    rows = []
    for name, case in done.items():
        for t in case["bench_quiet"]:
            for label in ("quiet", "loaded"):
                figures = case[f"bench_{label}"][t]
                load = figures["load"]
                rows.append([name, t, label, f"{load['before'][0]:.1f}->{load['after'][0]:.1f} ({load['level']})",
                             _ci(figures, "speedup"), _ci(figures, "cpu_speedup"), f"{figures['ideal']:.2f}"])
    lines += markdown_table(rows, ["model", "threads", "machine", "load", "wall speedup [90% CI]",
                                   "CPU-time speedup [90% CI]", "ideal"]).split("\n")
    errors = [f"- {name}: {e}" for name, case in results["cases"].items() for e in case.get("errors", [])]
    if errors:
        lines += ["", "## Errors", "", *errors]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="decisions-under-load", help="folder for the JSON, Markdown and models")
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--loaded-compiles", type=int, default=3, help="compiles per model under load. Default: 3")
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes for the load. Default: 2")
    parser.add_argument("--settle-s", type=float, default=30.0, help="wait after starting them. Default: 30")
    parser.add_argument("--runs", type=int, default=60, help="paired rounds of each bench. Default: 60")
    parser.add_argument("--pairs", type=int, default=60, help="paired runs of each re-measurement. Default: 60")
    args = parser.parse_args(argv)
    results = run(args)
    out = Path(args.out)
    save(results, out)
    (out / "decisions-under-load.md").write_text(markdown(results))
    say(f"wrote {out / 'decisions-under-load.json'} and .md in {results['seconds']} s")
    return 1 if any(c.get("errors") for c in results["cases"].values()) else 0


def save(results: dict, out: Path) -> None:
    (out / "decisions-under-load.json").write_text(json.dumps(results, indent=1, default=_plain) + "\n")


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    sys.exit(main())
