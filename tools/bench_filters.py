"""Filter removal on real architectures: ONNX Runtime CPU speedup, and the coupled channel groups found.

What it measures (BENCHMARKS.md): for VGG-16 and ResNet-18 (ImageNet shapes, batch 1, random
weights from the zoo), the dense model (BatchNorm folded) against the model with 40% and 50% of
the filters of every prunable channel group removed (``plan-filters`` per layer, L1, kept counts
multiples of 8, then ``apply-plan`` + ``remove-filters``). Both run in ONNX Runtime sessions with
2 intra-op threads (``OrtBackend(threads=2)``, default graph optimisations), interleaved A B A B
in one process after warm-up; host wall-clock per run, median and min. ``ideal`` is the ratio of
Conv/Gemm/MatMul MACs, ``efficiency = speedup / ideal``.

Then, for every model listed (zoo and the real ONNX files of PyPI packages), it reports the
channel groups (editable and blocked, with the blockers' reasons) and checks numerically that
removing 40% of the filters per group equals the masked original (the pass manager's exact
verification of ``remove-filters``).

Usage: python tools/bench_filters.py [--runs 20] [--json out.json] [--skip-speed] [--skip-groups]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import tempfile
from collections import Counter
from pathlib import Path

REAL_ONNX = "/tmp/realonnx/x/**/*.onnx"
ZOO_GROUP_MODELS = ("resnet18", "vgg16", "mobilenetv2", "efficientnet-b0")
SPEED_MODELS = ("vgg16", "resnet18")
RATIOS = (0.4, 0.5)


def zoo_file(name: str, cache: Path) -> Path:
    from sparsecc.zoo import export_onnx

    path = cache / f"{name}.onnx"
    if not path.exists():
        export_onnx(name, path)
    return path


def canonical(path: Path, shapes=None):
    from sparsecc.model import load_model
    from sparsecc.passmanager import PassContext, PassManager, make_pass

    model = load_model(path, shapes=shapes)
    ctx = PassContext(model)
    PassManager([make_pass("constants-to-initializers"), make_pass("fold-batchnorm")], verify=None).run(ctx)
    return ctx.model


def prune(model, ratio: float, scope: str = "per-layer", round_to: int = 8):
    """The masked model and the pruned model, with the remove-filters record (verified exact)."""
    from sparsecc.passmanager import PassContext, PassManager, make_pass
    from sparsecc.verify import VerifyConfig

    ctx = PassContext(model.copy())
    records = PassManager([make_pass("plan-filters", metric="l1", ratio=ratio, scope=scope, round_to=round_to),
                           make_pass("apply-plan"), make_pass("remove-filters")],
                          verify=VerifyConfig(atol=1e-4, rtol=1e-4)).run(ctx)
    return ctx.masked, ctx.model, {r.name: r for r in records}


def macs(model) -> int:
    from sparsecc.layers import find_weight_layers
    from sparsecc.shapes import infer_shapes

    layers, _ = find_weight_layers(model, infer_shapes(model))
    return sum(layer.macs or 0 for layer in layers)


def speed(names, runs: int, cache: Path) -> list[dict]:
    import numpy as np

    from sparsecc.backends.ort import OrtBackend
    from sparsecc.bench import time_interleaved
    from sparsecc.verify import input_specs, random_feeds

    rows = []
    backend = OrtBackend(threads=2)
    for name in names:
        dense = canonical(zoo_file(name, cache))
        dense_macs = macs(dense)
        for ratio in RATIOS:
            _, pruned, records = prune(dense, ratio)
            verification = records["remove-filters"].verification
            feeds = random_feeds(input_specs(dense), seed=0)[0]
            sessions = {"dense": backend.load(dense.to_bytes()), "pruned": backend.load(pruned.to_bytes())}
            timings = time_interleaved(sessions, {"dense": feeds, "pruned": feeds}, warmup=3, runs=runs)
            ideal = dense_macs / macs(pruned)
            speedup = timings["dense"].median_ms / timings["pruned"].median_ms
            row = {"model": name, "filters_removed": ratio, "dense_median_ms": timings["dense"].median_ms,
                   "dense_min_ms": timings["dense"].min_ms, "pruned_median_ms": timings["pruned"].median_ms,
                   "pruned_min_ms": timings["pruned"].min_ms, "speedup": speedup,
                   "speedup_min": timings["dense"].min_ms / timings["pruned"].min_ms, "ideal": ideal,
                   "efficiency": speedup / ideal, "runs": runs,
                   "channels": {k: v for k, v in records["remove-filters"].result.details["groups"].items()},
                   "exact": bool(verification and verification["passed"]),
                   "worst_relative_error": verification and verification["worst_relative_error"]}
            rows.append(row)
            print(f"{name:9s} {int(ratio * 100)}% filters: dense {row['dense_median_ms']:8.2f} ms "
                  f"(min {row['dense_min_ms']:.2f}), pruned {row['pruned_median_ms']:8.2f} ms "
                  f"(min {row['pruned_min_ms']:.2f}); speedup {speedup:.2f}x (min/min {row['speedup_min']:.2f}x), "
                  f"ideal {ideal:.2f}x, efficiency {speedup / ideal:.2f}; removal exact: {row['exact']}",
                  flush=True)
            del sessions
            np.random.default_rng(0)
    return rows


def real_shapes(path: Path) -> dict:
    """Concrete shapes for dynamic inputs: text-line height 48 x 320 for recognisers, else 224 x 224."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    shapes = {}
    initializers = {i.name for i in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in value.type.tensor_type.shape.dim]
        if all(dims):
            continue
        text_line = "rec" in path.name or "cls" in path.name
        defaults = [1, 3, 48, 320] if text_line else [1, 3, 224, 224]
        shapes[value.name] = tuple(d or defaults[i] for i, d in enumerate(dims))
    return shapes


def groups_report(paths: dict[str, tuple[Path, dict]]) -> list[dict]:
    from sparsecc.dependency import build_channel_groups
    from sparsecc.errors import SparseccError

    rows = []
    for label, (path, shapes) in paths.items():
        model = canonical(path, shapes)
        groups = build_channel_groups(model)
        editable = [g for g in groups if g.editable()]
        coupled = [g for g in editable if len(g.weight_nodes()) > 1]
        reasons = Counter(_reason_kind(r) for g in groups for r in g.blockers[:1])
        row = {"model": label, "shapes": {k: list(v) for k, v in shapes.items()}, "groups": len(groups),
               "editable": len(editable), "coupled_editable": len(coupled),
               "largest_coupled": max((len(g.weight_nodes()) for g in editable), default=0),
               "channels": sum(g.size for g in groups), "editable_channels": sum(g.size for g in editable),
               "blocked_by": dict(reasons),
               "example_blockers": _dedupe_examples(groups)}
        try:
            _, pruned, records = prune(model, 0.4, round_to=8)
            record = records["remove-filters"]
            row["removal"] = {"groups_edited": record.result.rewrites if record.result else 0,
                              "exact": bool(record.verification and record.verification["passed"]),
                              "worst_relative_error": record.verification and
                              record.verification["worst_relative_error"],
                              "macs_ratio": macs(model) / max(macs(pruned), 1)}
        except SparseccError as err:
            row["removal"] = {"error": err.format()}
        rows.append(row)
        print(f"{label:40s} groups {row['groups']:4d}, editable {row['editable']:4d} "
              f"(coupled across >1 layer: {row['coupled_editable']}, largest {row['largest_coupled']} layers), "
              f"blocked by {dict(reasons)}; removal of 40%: {row['removal']}", flush=True)
    return rows


def _reason_kind(reason: str) -> str:
    for key in ("graph output", "shared", "grouped convolution", "does not know", "mixes the channel axis",
                "computed at run time", "custom op", "broadcast", "normalises", "reduces", "Concat/Split",
                "cannot be removed", "channel count"):
        if key in reason:
            return key
    return reason[:60]


def _dedupe_examples(groups) -> list[str]:
    seen, examples = set(), []
    for group in groups:
        for reason in group.blockers[:1]:
            kind = _reason_kind(reason)
            if kind not in seen:
                seen.add(kind)
                examples.append(reason)
    return examples


def environment() -> dict:
    import numpy
    import onnxruntime

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": 2, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per variant (default 20)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "sparsecc-bench-filters"),
                        help="where exported zoo models are kept")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-groups", action="store_true")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment()}
    print(json.dumps(report["environment"]))
    if not args.skip_speed:
        report["speed"] = speed(SPEED_MODELS, args.runs, cache)
    if not args.skip_groups:
        models = {name: (zoo_file(name, cache), {}) for name in ZOO_GROUP_MODELS}
        for path in sorted(glob.glob(REAL_ONNX, recursive=True)):
            models[str(Path(path).relative_to("/tmp/realonnx/x"))] = (Path(path), real_shapes(Path(path)))
        report["groups"] = groups_report(models)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
