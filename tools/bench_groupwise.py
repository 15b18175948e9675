"""Benchmark the group-wise rewrite (Gather + smaller GEMM) against the masked dense model.

What it times: host wall-clock of ``session.run`` on ONNX Runtime CPU, sessions from
``OrtBackend(threads=N)`` (intra-op threads fixed, default graph optimisations,
``session.force_spinning_stop``), the masked dense model and the rewritten model interleaved
A B A B in one process (``sparsecc.bench.time_interleaved``: warm-up rounds, then timed rounds),
median and min of each. ``speedup = median(dense) / median(rewritten)``,
``ideal = dense MACs / rewritten MACs`` (Conv/Gemm/MatMul MACs from shapes; the one-hot depthwise
Conv of a tap-gather lowering counts, ~2% of the layer at 50% kept),
``efficiency = speedup / ideal``.

Cases (the issue's targets):
  linear   Linear 4096x4096 (Gemm transB=1, bias), batch 64, 50% of groups kept: speedup >= 0.8 x ideal
  conv50   VGG-16 conv 512->512 3x3 at 28x28, batch 1, 50% kept: speedup >= 1.5
  conv25   the same conv, 25% kept: speedup >= 3
  vgg16, resnet18   whole models (ImageNet shapes, batch 1, random init) with 50% kept on every conv
           but the first: faster than dense, with the per-layer breakdown (lowering chosen, layer time
           dense vs rewritten as measured by the pass's cost model on one-layer models)
  compile  wall-clock of ``compile_model(resnet18, "groupwise-50")``: target < 30 s

Usage: python tools/bench_groupwise.py [--cases linear conv50 ...] [--runs 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from sparsecc.backends.ort import OrtBackend
from sparsecc.bench import time_interleaved
from sparsecc.layers import find_weight_layers
from sparsecc.model import Model, clamp_ir_version, load_model, model_from_proto
from sparsecc.passes.canonicalize import CANONICAL_PASSES
from sparsecc.passmanager import PassContext, PassManager, make_pass
from sparsecc.shapes import infer_shapes

CASES = ("linear", "conv50", "conv25", "vgg16", "resnet18", "compile")
TARGETS = {"linear": "speedup >= 0.8 x ideal", "conv50": "speedup >= 1.5", "conv25": "speedup >= 3",
           "vgg16": "speedup > 1", "resnet18": "speedup > 1", "compile": "< 30 s"}


def _proto(nodes, x_shape, y_shape, inits):
    graph = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    clamp_ir_version(model)
    return model


def linear_model(rng):
    weight = (rng.standard_normal((4096, 4096)) * 0.02).astype(np.float32)  # PyTorch Linear: [out, in]
    bias = rng.standard_normal(4096).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="linear", transB=1)
    return _proto([node], [64, 4096], [64, 4096], [numpy_helper.from_array(weight, "W"),
                                                   numpy_helper.from_array(bias, "B")])


def vgg_conv_model(rng):
    weight = (rng.standard_normal((512, 512, 3, 3)) * 0.02).astype(np.float32)
    bias = rng.standard_normal(512).astype(np.float32)
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    return _proto([node], [1, 512, 28, 28], [1, 512, 28, 28], [numpy_helper.from_array(weight, "W"),
                                                               numpy_helper.from_array(bias, "B")])


def compile_groupwise(model: Model, keep: float, layers: dict, rewrite: dict) -> PassContext:
    """Canonical passes, plan-groupwise, apply-plan, groupwise-rewrite (verified by the PassManager)."""
    ctx = PassContext(model)
    passes = [make_pass(n) for n in CANONICAL_PASSES] + [
        make_pass("plan-groupwise", keep=keep, criterion="l1", layers=layers), make_pass("apply-plan"),
        make_pass("groupwise-rewrite", **rewrite)]
    PassManager(passes).run(ctx)
    return ctx


def total_macs(model: Model) -> int:
    layers, _ = find_weight_layers(model, infer_shapes(model))
    return sum(layer.macs or 0 for layer in layers)


def time_pair(dense: Model, rewritten: Model, threads: int, warmup: int, runs: int) -> dict:
    backend = OrtBackend(threads=threads)
    sessions = {"dense": backend.load(dense.to_bytes()), "rewritten": backend.load(rewritten.to_bytes())}
    rng = np.random.default_rng(0)
    feed = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in dense.input_shapes.items()}
    timings = time_interleaved(sessions, {"dense": feed, "rewritten": feed}, warmup, runs)
    dense_macs, rewritten_macs = total_macs(dense), total_macs(rewritten)
    speedup = timings["dense"].median_ms / timings["rewritten"].median_ms
    ideal = dense_macs / rewritten_macs
    return {"dense_ms": {"median": round(timings["dense"].median_ms, 3), "min": round(timings["dense"].min_ms, 3)},
            "rewritten_ms": {"median": round(timings["rewritten"].median_ms, 3),
                             "min": round(timings["rewritten"].min_ms, 3)},
            "speedup": round(speedup, 3), "ideal": round(ideal, 3), "efficiency": round(speedup / ideal, 3),
            "dense_gmacs": round(dense_macs / 1e9, 3), "rewritten_gmacs": round(rewritten_macs / 1e9, 3),
            "runs": runs, "warmup": warmup}


def run_case(name: str, args) -> dict:
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    if name == "compile":
        return compile_case(args)
    if name == "linear":
        model, keep, layers, rewrite = model_from_proto(linear_model(rng), "linear 4096x4096"), 0.5, \
            {"names": ["linear"], "exclude_first_last": False}, {"lowering": "channel-gather"}
    elif name in ("conv50", "conv25"):
        model, keep = model_from_proto(vgg_conv_model(rng), "vgg16 conv 512x512 3x3 @28"), 0.5 if name == "conv50" else 0.25
        layers, rewrite = {"names": ["conv"], "exclude_first_last": False}, {"lowering": "tap-gather"}
    else:
        from sparsecc.zoo import export_onnx

        path = Path(args.workdir) / f"{name}.onnx"
        if not path.exists():
            export_onnx(name, path)
        model, keep = load_model(path), 0.5
        # every conv but the first (the last weight layer is the classifier, not a conv)
        layers, rewrite = {"kinds": ["conv", "pointwise", "grouped"], "exclude_first_last": True}, {}
    ctx = compile_groupwise(model, keep, layers, rewrite)
    compile_s = time.perf_counter() - start
    result = time_pair(ctx.masked, ctx.model, args.threads, args.warmup, args.runs)
    result.update(case=name, keep=keep, target=TARGETS[name], compile_s=round(compile_s, 2))
    result["layers"] = [
        {"layer": layer, "lowering": info.get("lowering"),
         "dense_ms": info.get("candidates_ms", {}).get("dense"),
         "rewritten_ms": info.get("candidates_ms", {}).get(info.get("lowering")),
         "reason": info.get("reason", ""), **({"fold": info["fold"]} if "fold" in info else {})}
        for layer, info in ctx.details_of("groupwise-rewrite")["layers"].items()]
    return result


def compile_case(args) -> dict:
    from sparsecc.compiler import compile_model
    from sparsecc.zoo import export_onnx

    path = Path(args.workdir) / "resnet18.onnx"
    if not path.exists():
        export_onnx("resnet18", path)
    start = time.perf_counter()
    compile_model(path, "groupwise-50", Path(args.workdir) / "resnet18-groupwise-50")
    seconds = time.perf_counter() - start
    return {"case": "compile", "model": "resnet18", "recipe": "groupwise-50", "seconds": round(seconds, 2),
            "target": TARGETS["compile"]}


def print_table(results: list[dict]) -> None:
    print(f"{'case':10s} {'dense ms (med/min)':>20s} {'rewritten ms':>18s} {'speedup':>8s} {'ideal':>6s} "
          f"{'eff':>5s}  target")
    for r in results:
        if r["case"] == "compile":
            print(f"{'compile':10s} resnet18 groupwise-50: {r['seconds']:.1f} s  (target {r['target']})")
            continue
        d, w = r["dense_ms"], r["rewritten_ms"]
        print(f"{r['case']:10s} {d['median']:9.2f}/{d['min']:<9.2f} {w['median']:8.2f}/{w['min']:<8.2f} "
              f"{r['speedup']:8.2f} {r['ideal']:6.2f} {r['efficiency']:5.2f}  {r['target']}")
    for r in results:
        if r.get("layers") and r["case"] in ("vgg16", "resnet18"):
            print(f"\n{r['case']}: per layer (one-layer models timed by the cost model, ms)")
            for row in r["layers"]:
                dense = f"{row['dense_ms']:.2f}" if row["dense_ms"] is not None else "-"
                new = f"{row['rewritten_ms']:.2f}" if row["rewritten_ms"] is not None else "-"
                print(f"  {row['layer']:40s} {row['lowering'] or '-':15s} dense {dense:>8s}  rewritten {new:>8s}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--runs", type=int, default=20, help="timed rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--workdir", default=None, help="where exported models go (default a temp dir)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.runs < 20:
        parser.error("--runs must be at least 20 (BENCHMARKS.md)")
    with tempfile.TemporaryDirectory() as tmp:
        args.workdir = args.workdir or tmp
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        results = []
        for case in args.cases:
            print(f"running {case} ...", file=sys.stderr, flush=True)
            results.append(run_case(case, args))
    import onnxruntime

    env = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
           "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "python": platform.python_version()}
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
