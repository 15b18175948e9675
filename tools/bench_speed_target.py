"""Peer benchmark: sparsecc pruning to a speed target against Torch-Pruning, on ONNX Runtime CPU.

For each model (written in ``speed_target_models.py`` in plain PyTorch: ResNet-50-, MobileNetV2- and
VGG-style, trained-like BatchNorm, seeded; exported with plain ``torch.onnx.export``):

1. sparsecc: ``plan-filters`` (L2, global) with ``target_speedup`` X, then ``remove-filters``; the
   first layer may be pruned as Torch-Pruning's may (only the classifier is left whole in both);
   the compile measures the result and reports target vs achieved vs ideal.
2. Torch-Pruning (global and per-layer ``MagnitudePruner``, L2, ``round_to=8``, classifier ignored):
   a. at the same MACs as sparsecc's output (pruning ratio bisected on the exported MACs);
   b. at the MACs its own notion of the target gives (dense MACs / X, as Torch-Pruning's benchmarks
      define speed-up), with sparsecc's allocation at those same MACs beside it (sparsecc's target
      bisected with the tables alone, no correction rounds);
   c. at the same measured speed as sparsecc's output (pruning ratio bisected on paired CPU-time
      speedups, one thread).
3. Every variant, BatchNorm folded (``compile --recipe none``), timed in one process interleaved
   against the dense model (``sparsecc.measure``: paired rounds, ONNX Runtime spinning off, CPU time
   and wall clock per run, 90% bootstrap intervals, the load before and after), at 1 thread and at
   2; and sparsecc's output against each Torch-Pruning variant directly, from the same rounds.

Writes ``bench.json`` and ``bench.md`` into ``--out`` (figures with the load beside each). The
compiles go through ``--timing-cache`` (default: ``OUT/timing-cache.json``): rerun with the same cache,
every choice is the same and only the final timings move. Run time on a quiet 2-core machine: about
6 minutes for ResNet-50-style with an empty cache, 3 with a full one; the three models together
about 15 (the tool prints its own).

Usage: python tools/bench_speed_target.py [--models resnet50 mobilenetv2 vgg] [--target 2] [--pairs 30]
       [--out docs/speed-target] [--timing-cache FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_target_models import MODELS, build, export  # noqa: E402


def say(message: str, started=[time.perf_counter()]) -> None:  # noqa: B006 - one clock for the run
    print(f"[{time.perf_counter() - started[0]:6.0f} s] {message}", file=sys.stderr, flush=True)


def sparsecc_recipe(options: dict):
    from sparsecc.recipe import parse_recipe

    plan = {"metric": "l2", "scope": "global", "round_to": 8, "layers": {"exclude_first_last": False}, **options}
    return parse_recipe(json.dumps({"name": "filter-l2-target", "passes": [{"plan-filters": plan}, "apply-plan",
                                                                           "remove-filters"]}), "bench.json")


def compiled(path: Path, recipe, out: Path, cache: str):
    from sparsecc.compiler import compile_model

    return compile_model(path, recipe, out, force=True, timing_cache=cache)


def onnx_macs(path: Path, shapes: dict | None = None) -> int:
    from sparsecc.layers import analyse_layers
    from sparsecc.model import load_model

    return sum(layer.macs or 0 for layer in analyse_layers(load_model(path, shapes))[0])


def torch_pruned(model, example, ratio: float, global_pruning: bool):
    """Torch-Pruning's MagnitudePruner (L2, round_to 8) at ``ratio``; the classifier is left whole."""
    import torch
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    classifier = [m for m in pruned.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(pruned, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=[classifier],
                                       global_pruning=global_pruning, round_to=8)
    pruner.step()
    return pruned.eval()


def bisect(measure, target: float, low: float, high: float, steps: int, tolerance: float):
    """The argument in [low, high] whose ``measure`` (increasing in it) comes closest to ``target``."""
    best = None
    for _ in range(steps):
        middle = (low + high) / 2
        value = measure(middle)
        if best is None or abs(value - target) < abs(best[1] - target):
            best = (middle, value)
        if abs(value - target) <= tolerance * target:
            break
        low, high = (middle, high) if value < target else (low, middle)
    return best


class Variants:
    """The benchmark's ONNX files of one model, BatchNorm folded, and what each is."""

    def __init__(self, name: str, work: Path, cache: str):
        self.name, self.work, self.cache = name, work, cache
        self.model, self.example = build(name)
        self.dense_path = work / "dense.onnx"
        export(self.model, self.example, self.dense_path)
        self.folded = {"dense": self._fold(self.dense_path, "dense")}
        self.dense_macs = onnx_macs(self.folded["dense"])
        self.rows: dict[str, dict] = {"dense": {"what": "unpruned (BatchNorm folded)", "macs": self.dense_macs}}

    def _fold(self, path: Path, label: str) -> Path:
        from sparsecc.compiler import compile_model

        return compile_model(path, "none", self.work / f"folded-{label}", force=True,
                             timing_cache=self.cache).model_path

    def add_torch(self, label: str, ratio: float, global_pruning: bool, what: str) -> Path:
        path = self.work / f"{label}.onnx"
        export(torch_pruned(self.model, self.example, ratio, global_pruning), self.example, path)
        self.folded[label] = self._fold(path, label)
        self.rows[label] = {"what": what, "ratio": round(ratio, 5), "macs": onnx_macs(self.folded[label])}
        return self.folded[label]

    def torch_macs(self, ratio: float, global_pruning: bool) -> int:
        path = self.work / "probe.onnx"
        export(torch_pruned(self.model, self.example, ratio, global_pruning), self.example, path)
        return onnx_macs(path)

    def allocation_macs(self, speedup: float) -> int:
        """MACs of sparsecc's allocation for a tables' target (no correction rounds, nothing compiled)."""
        return self.allocation(speedup)["macs"]

    def allocation(self, speedup: float) -> dict:
        """sparsecc's allocation for a tables' target: the plan's round (kept counts per group, MACs, the
        tables' prediction), without correction rounds and with nothing compiled."""
        from sparsecc.lowering import open_timing_cache
        from sparsecc.passmanager import PassContext, PassManager, make_pass

        if not hasattr(self, "_canonical"):
            self._canonical, self._cache = canonical_model(self.dense_path), open_timing_cache(self.cache)
        options = sparsecc_recipe({"target_speedup": speedup, "target_rounds": 0}).passes[0][1]
        ctx = PassContext(self._canonical.copy(), timing_cache=self._cache)
        PassManager([make_pass("plan-filters", **options)], verify=None).run(ctx)
        return ctx.details_of("plan-filters")["speed_target"]["rounds"][-1]

    def add_sparsecc(self, label: str, options: dict, what: str) -> dict:
        result = compiled(self.dense_path, sparsecc_recipe(options), self.work / label, self.cache)
        self.folded[label] = result.model_path
        summary = result.report["summary"]
        planning = next(p for p in result.report["passes"] if p["name"] == "plan-filters")["details"]["speed_target"]
        self.rows[label] = {"what": what, "macs": summary["macs_after"], "compile": summary.get("speed_target_result"),
                            "compile_seconds": summary["compile_seconds"],
                            "rounds": [{k: v for k, v in r.items() if k != "kept"} for r in planning["rounds"]]}
        return self.rows[label]


def canonical_model(path: Path):
    from sparsecc.model import load_model
    from sparsecc.passes.canonicalize import CANONICAL_PASSES
    from sparsecc.passmanager import PassContext, PassManager, make_pass

    ctx = PassContext(load_model(path))
    PassManager([make_pass(n) for n in CANONICAL_PASSES], verify=None).run(ctx)
    return ctx.model


def measured_speedup(variants: Variants, path: Path, pairs: int = 12) -> float:
    from sparsecc.measure import MeasureSettings, measure_models

    result = measure_models({"dense": variants.folded["dense"], "candidate": path}, "dense", threads=1,
                            settings=MeasureSettings.fixed(pairs), one_at_a_time=False)
    return result.evidence["candidate"].cpu.estimate


def bench_model(name: str, target: float, pairs: int, work: Path, cache: str) -> dict:
    variants = Variants(name, work, cache)
    say(f"{name}: dense {variants.dense_macs:,} MACs; sparsecc at {target}x")
    ours = variants.add_sparsecc("sparsecc", {"target_speedup": target},
                                 f"sparsecc --target-speedup {target:g} (L2, knapsack on measured tables)")
    say(f"{name}: sparsecc {ours['macs']:,} MACs, compile: {json.dumps(ours['compile'])}")
    for global_pruning, kind in ((True, "global"), (False, "per-layer")):
        ratio, _ = bisect(lambda r: variants.dense_macs / variants.torch_macs(r, global_pruning),
                          variants.dense_macs / ours["macs"], 0.0, 0.95, 14, 0.003)
        variants.add_torch(f"tp-{kind}-same-macs", ratio, global_pruning,
                           f"Torch-Pruning {kind}, at sparsecc's MACs")
        say(f"{name}: Torch-Pruning {kind} at sparsecc's MACs: ratio {ratio:.4f}, "
            f"{variants.rows[f'tp-{kind}-same-macs']['macs']:,} MACs")
    tp_target = add_torch_at_target(variants, "tp-global-target", target)
    tp_macs = variants.rows["tp-global-target"]["macs"]
    say(f"{name}: Torch-Pruning global at MACs / {target:g}: {tp_macs:,} MACs; sparsecc at those MACs")
    add_sparsecc_at_macs(variants, "sparsecc-tp-macs", tp_macs, target)
    speed = measured_speedup(variants, variants.folded["sparsecc"], pairs)
    say(f"{name}: sparsecc measured {speed:.3f}x; Torch-Pruning at that speed")
    for global_pruning, kind in ((True, "global"), (False, "per-layer")):
        ratio, value = bisect(lambda r: measured_speedup(variants, variants.add_torch(
            "probe", r, global_pruning, "probe")), speed, 0.0, 0.95, 9, 0.01)
        variants.add_torch(f"tp-{kind}-same-speed", ratio, global_pruning,
                           f"Torch-Pruning {kind}, at sparsecc's measured speed ({value:.3f}x when matched)")
    variants.rows.pop("probe", None)
    variants.folded.pop("probe", None)
    return {"model": name, "input": list(variants.example.shape), "target": target,
            "rows": variants.rows, "timings": final_timings(variants, pairs), "tp_target_path": str(tp_target)}


def add_torch_at_target(variants: Variants, label: str, target: float) -> Path:
    """Torch-Pruning global at its own notion of ``target``: dense MACs / target (ratio bisected on MACs)."""
    ratio, _ = bisect(lambda r: variants.dense_macs / variants.torch_macs(r, True), target, 0.0, 0.95, 14, 0.003)
    return variants.add_torch(label, ratio, True,
                              f"Torch-Pruning global, at its own {target:g}x (dense MACs / {target:g})")


def add_sparsecc_at_macs(variants: Variants, label: str, macs: int, target: float) -> dict:
    """sparsecc's allocation at ``macs`` (the tables' target bisected on MACs, no correction rounds)."""
    matched = bisect(lambda x: variants.dense_macs / variants.allocation_macs(x), variants.dense_macs / macs,
                     1.05, 2.0 * target, 12, 0.003)
    row = variants.add_sparsecc(label, {"target_speedup": matched[0], "target_rounds": 0},
                                "sparsecc's allocation at Torch-Pruning global's MACs (tables' target "
                                f"{matched[0]:.3f}x)")
    row["tables_target"] = matched[0]
    return row


def final_timings(variants: Variants, pairs: int) -> dict:
    """Every variant against the dense model, interleaved, at 1 and 2 threads; sparsecc against each rival."""
    from sparsecc.measure import MeasureSettings, measure_models, ratio_interval

    out = {}
    for threads in (1, 2):
        say(f"{variants.name}: timing {len(variants.folded)} variants interleaved, {threads} thread(s), {pairs} pairs")
        result = measure_models(variants.folded, "dense", threads=threads, settings=MeasureSettings.fixed(pairs),
                                one_at_a_time=False)
        rows = {label: {"cpu": e.cpu.to_dict(), "wall": e.wall.to_dict(), "cpu_ms": e.cpu_ms[1],
                        "wall_ms": e.wall_ms[1]} for label, e in result.evidence.items()}
        head_to_head = {}
        for rival in [label for label in variants.folded if label.startswith("tp-")]:
            head_to_head[rival] = {"cpu": ratio_interval(result.cpu_ms[rival], result.cpu_ms["sparsecc"]).to_dict(),
                                   "wall": ratio_interval(result.wall_ms[rival],
                                                          result.wall_ms["sparsecc"]).to_dict()}
        head_to_head["tp-global-target vs sparsecc-tp-macs"] = {
            "cpu": ratio_interval(result.cpu_ms["tp-global-target"], result.cpu_ms["sparsecc-tp-macs"]).to_dict(),
            "wall": ratio_interval(result.wall_ms["tp-global-target"], result.wall_ms["sparsecc-tp-macs"]).to_dict()}
        out[f"threads_{threads}"] = {"vs_dense": rows, "sparsecc_vs": head_to_head, "load": result.load.to_dict(),
                                     "pairs": pairs, "dense_cpu_ms": float(np.median(result.cpu_ms["dense"])),
                                     "dense_wall_ms": float(np.median(result.wall_ms["dense"]))}
    return out


def render(report: dict) -> str:
    env = report["environment"]
    lines = ["# Speed target: sparsecc vs Torch-Pruning on ONNX Runtime CPU", "",
             f"CPU {env['cpu']}, {env.get('cpu_count')} cores, onnxruntime {env.get('onnxruntime')}, torch "
             f"{env.get('torch')}, torch-pruning {report['torch_pruning']}; run took {report['seconds']} s. "
             "Speedups are paired medians over dense (interleaved rounds, ONNX Runtime spinning off) with 90% "
             "bootstrap intervals; CPU time decides at 1 thread, wall clock is what users see; load = 1-minute "
             "load average before -> after, on the cores given.", "",
             f"Command: `{report.get('command', '(not recorded)')}`", ""]
    for model in report["models"]:
        lines += [f"## {model['model']}-style, input {'x'.join(map(str, model['input']))}, target {model['target']:g}x",
                  ""]
        ours = model["rows"]["sparsecc"]["compile"] or {}
        if ours.get("achieved") is not None:
            lines.append(f"sparsecc's compile: target {ours['target_speedup']:.3f}x, achieved {ours['achieved']:.3f}x "
                         f"[{ours['achieved_interval'][0]:.3f}, {ours['achieved_interval'][1]:.3f}] CPU time (wall "
                         f"{ours['wall']:.3f}x), predicted {ours['predicted']}x, ideal {ours['ideal']}x, load "
                         f"{ours['load']['before'][0]:.2f} -> {ours['load']['after'][0]:.2f}: "
                         f"{'reached' if ours['reached'] else 'NOT reached'}.")
            lines.append("")
        for key, timing in model["timings"].items():
            threads = key.split("_")[1]
            load = timing["load"]
            lines += [f"{threads} thread(s), {timing['pairs']} pairs, load {load['before'][0]:.2f} -> "
                      f"{load['after'][0]:.2f} on {load['cores']} cores ({load['level']}); dense "
                      f"{timing['dense_cpu_ms']:.2f} ms CPU, {timing['dense_wall_ms']:.2f} ms wall.", "",
                      "| variant | what | MACs | ideal | speedup CPU [90% CI] | speedup wall [90% CI] |",
                      "|---|---|---|---|---|---|"]
            for label, row in model["rows"].items():
                if label == "dense":
                    continue
                t = timing["vs_dense"][label]
                lines.append(f"| {label} | {row['what']} | {row['macs']:,} | "
                             f"{model['rows']['dense']['macs'] / row['macs']:.3f}x | {_interval(t['cpu'])} | "
                             f"{_interval(t['wall'])} |")
            lines += ["", "sparsecc's output against each rival (rival time / sparsecc time, same rounds):", "",
                      "| rival | CPU [90% CI] | wall [90% CI] |", "|---|---|---|"]
            for rival, t in timing["sparsecc_vs"].items():
                lines.append(f"| {rival} | {_interval(t['cpu'])} | {_interval(t['wall'])} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _interval(data: dict) -> str:
    return f"{data['estimate']:.3f} [{data['low']:.3f}, {data['high']:.3f}]"


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch_pruning

    from sparsecc.environment import environment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--target", type=float, default=2.0, help="speedup target (default 2)")
    parser.add_argument("--pairs", type=int, default=30, help="paired rounds of the final timings (default 30)")
    parser.add_argument("--out", type=Path, default=Path("docs/speed-target"))
    parser.add_argument("--timing-cache", help="timing cache of the compiles (default OUT/timing-cache.json)")
    args = parser.parse_args(argv)
    command = " ".join(["python", f"tools/{Path(__file__).name}", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.timing_cache or str(args.out / "timing-cache.json")
    started = time.perf_counter()
    report = {"command": command, "environment": environment(), "torch_pruning": torch_pruning.__version__,
              "target": args.target,
              "load_at_start": list(os.getloadavg()), "models": []}
    with tempfile.TemporaryDirectory(prefix="sparsecc-speed-target-") as folder:
        for name in args.models:
            work = Path(folder) / name
            work.mkdir()
            report["models"].append(bench_model(name, args.target, args.pairs, work, cache))
            report["seconds"] = round(time.perf_counter() - started)
            (args.out / "bench.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["load_at_end"] = list(os.getloadavg())
    (args.out / "bench.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "bench.md").write_text(render(report))
    say(f"wrote {args.out}/bench.md and bench.json ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
