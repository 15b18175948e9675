"""DEPrune on ONNX Runtime CPU: unpruned vs masked vs compiled, interleaved, with the ideal beside.

For each model (the zoo's MobileNetV2, MobileNetV3-Small and EfficientNet-B0, and copies written
here and exported with plain ``torch.onnx.export``) and each batch size:

1. build the PyTorch model, give BatchNorm trained-like statistics (the zoo's fresh BatchNorm
   folds to zero biases and equal channel scales, which no trained network has), export;
2. compile with the recipe (default ``deprune-bh``): the canonical model is the unpruned one,
   ``apply-plan`` leaves the masked one (same shapes, zeros in place), the end is the compiled one;
3. time the three interleaved in one process (ONNX Runtime, fixed threads, median of ``--runs``);
   ``ideal = unpruned MACs / non-zero MACs of the masked model``;
4. per depthwise layer (paper Tables 2-4, Fig. 6): DW ratio, Real DW, imbalance overhead, HSR
   pattern, PW2 ratio, MACs before/after, the lowering chosen and why, and the layer's own
   speedup (the dense layer vs the compiled layer, each as a one-layer model, interleaved).

Usage::

    python tools/bench_deprune.py --models efficientnet-b0 own-efficientnet-b0 --batches 1 8 \
        --json deprune.json --markdown deprune.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.backends.ort import OrtBackend
from sparsecc.bench import time_interleaved
from sparsecc.layers import analyse_layers
from sparsecc.model import Model, load_model
from sparsecc.passes.canonicalize import CANONICAL_PASSES
from sparsecc.passmanager import PassContext, PassManager, make_pass
from sparsecc.recipe import load_recipe

ZOO_MODELS = {"mobilenetv2": "mobilenetv2", "mobilenetv3s": "mobilenetv3s", "efficientnet-b0": "efficientnet-b0"}


# ----------------------------------------------------------------------------------------------
# Model code written here (not the zoo's): one inverted-residual block type, three tables
# ----------------------------------------------------------------------------------------------

# (kernel, hidden, out, se, act, stride); se: squeeze channels (0 = none)
def _effnet_b0_rows():
    rows, cin = [], 32
    for expand, kernel, stride, out, repeats in [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2),
                                                  (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
                                                  (6, 3, 1, 320, 1)]:
        for r in range(repeats):
            rows.append((kernel, cin * expand, out, max(1, cin // 4), "silu", stride if r == 0 else 1))
            cin = out
    return 32, "silu", rows, 1280


def _mobilenetv2_rows():
    rows, cin = [], 32
    for expand, out, repeats, stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                                         (6, 160, 3, 2), (6, 320, 1, 1)]:
        for r in range(repeats):
            rows.append((3, cin * expand, out, 0, "relu6", stride if r == 0 else 1))
            cin = out
    return 32, "relu6", rows, 1280


def _mobilenetv3s_rows():
    table = [(3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1),
             (5, 96, 40, True, "hswish", 2), (5, 240, 40, True, "hswish", 1), (5, 240, 40, True, "hswish", 1),
             (5, 120, 48, True, "hswish", 1), (5, 144, 48, True, "hswish", 1), (5, 288, 96, True, "hswish", 2),
             (5, 576, 96, True, "hswish", 1), (5, 576, 96, True, "hswish", 1)]
    rows = [(k, h, o, (-(-h // 4 // 8) * 8) if se else 0, act, s) for k, h, o, se, act, s in table]
    return 16, "hswish", rows, 576


OWN_MODELS = {"own-efficientnet-b0": _effnet_b0_rows, "own-mobilenetv2": _mobilenetv2_rows,
              "own-mobilenetv3s": _mobilenetv3s_rows}


def build_own(name: str):
    import torch
    from torch import nn

    acts = {"silu": nn.SiLU, "relu6": nn.ReLU6, "relu": nn.ReLU, "hswish": nn.Hardswish}
    stem, stem_act, rows, head = OWN_MODELS[name]()

    def conv(cin, cout, k, s=1, groups=1, act=None):
        layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*(layers + ([acts[act]()] if act else [])))

    class Block(nn.Module):
        def __init__(self, cin, kernel, hidden, out, se, act, stride):
            super().__init__()
            self.expand = conv(cin, hidden, 1, act=act) if hidden != cin else nn.Identity()
            self.dw = conv(hidden, hidden, kernel, stride, groups=hidden, act=act)
            gate = nn.Sigmoid if act == "silu" else nn.Hardsigmoid
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, se, 1),
                                    nn.SiLU() if act == "silu" else nn.ReLU(), nn.Conv2d(se, hidden, 1),
                                    gate()) if se else None
            self.project = conv(hidden, out, 1)
            self.residual = stride == 1 and cin == out

        def forward(self, x):
            h = self.dw(self.expand(x))
            if self.se is not None:
                h = h * self.se(h)
            y = self.project(h)
            return x + y if self.residual else y

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            blocks, cin = [], stem
            for kernel, hidden, out, se, act, stride in rows:
                blocks.append(Block(cin, kernel, hidden, out, se, act, stride))
                cin = out
            self.features = nn.Sequential(conv(3, stem, 3, 2, act=stem_act), *blocks,
                                          conv(cin, head, 1, act=stem_act))
            self.fc = nn.Linear(head, 1000)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    return Net().eval()


def trained_like_batchnorm(net, seed: int = 0) -> None:
    """BatchNorm statistics spread as in trained networks (channel scales vary, biases are not zero)."""
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.from_numpy(rng.lognormal(0.0, 0.5, n).astype(np.float32)))
                m.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.3, n).astype(np.float32)))
                m.running_mean.copy_(torch.from_numpy(rng.normal(0.0, 0.2, n).astype(np.float32)))
                m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, n).astype(np.float32)))


def prune_taps_elsewhere(net, ratio: float) -> None:
    """Zero the smallest ``ratio`` of every depthwise weight in PyTorch (a model pruned elsewhere)."""
    import torch

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
                flat = m.weight.abs().flatten()
                count = int(round(ratio * flat.numel()))
                m.weight.view(-1)[torch.argsort(flat)[:count]] = 0.0


def export(name: str, batch: int, folder: Path, pruned_elsewhere: float = 0.0) -> Path:
    import torch

    path = folder / f"{name}-b{batch}.onnx"
    if name in ZOO_MODELS:
        from sparsecc import zoo

        net = zoo.build_model(ZOO_MODELS[name])
    else:
        net = build_own(name)
    trained_like_batchnorm(net)
    if pruned_elsewhere:
        prune_taps_elsewhere(net, pruned_elsewhere)
    torch.onnx.export(net, (torch.randn(batch, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    return path


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------

def nonzero_macs(model: Model) -> tuple[int, int]:
    """(MACs, MACs of non-zero weights) of the Conv/Gemm/MatMul layers at the model's shapes."""
    layers, _ = analyse_layers(model)
    tensors = model.graph.tensors()
    total = kept = 0
    for layer in layers:
        if layer.macs is None:
            continue
        values = tensors[layer.weight].values
        total += layer.macs
        kept += int(round(layer.macs * np.count_nonzero(values) / values.size))
    return total, kept


def _one_layer(node: gs.Node, in_shape, out_shape) -> bytes:
    graph = gs.Graph(opset=17)
    x = gs.Variable("x", dtype=np.float32, shape=list(in_shape))
    y = gs.Variable("y", dtype=np.float32, shape=list(out_shape))
    inputs = [x] + [gs.Constant(f"c{i}", t.values) for i, t in enumerate(node.inputs[1:]) if not t.is_empty()]
    graph.nodes = [gs.Node(node.op, attrs=dict(node.attrs), inputs=inputs, outputs=[y])]
    graph.inputs, graph.outputs = [x], [y]
    return Model(graph, "layer").to_bytes()


def dw_layer_speedups(dense: Model, compiled: Model, rewrite: dict, runs: int, threads: int) -> dict[str, dict]:
    """Each depthwise layer alone: the unpruned layer vs the compiled one (after dead-channel removal)."""
    backend = OrtBackend(threads=threads, allow_spinning=False)
    d_layers = {l.node: l for l in analyse_layers(dense)[0] if l.kind == "depthwise"}
    c_layers = {l.node: l for l in analyse_layers(compiled)[0] if l.kind == "depthwise"}
    d_nodes = {n.name: n for n in dense.graph.nodes}
    c_nodes = {n.name: n for n in compiled.graph.nodes}
    result = {}
    for name, layer in d_layers.items():
        entry: dict = {}
        sessions = {"dense": backend.load(_one_layer(d_nodes[name], layer.input_shape, layer.output_shape))}
        feeds = {"dense": {"x": np.random.default_rng(0).standard_normal(layer.input_shape).astype(np.float32)}}
        if name in c_layers:  # still a plain depthwise Conv (possibly with fewer channels)
            c = c_layers[name]
            sessions["compiled"] = backend.load(_one_layer(c_nodes[name], c.input_shape, c.output_shape))
            feeds["compiled"] = {"x": np.random.default_rng(0).standard_normal(c.input_shape).astype(np.float32)}
            entry["channels"] = [layer.weight_shape[0], c.weight_shape[0]]
        timings = time_interleaved(sessions, feeds, warmup=2, runs=runs)
        entry["dense_ms"] = round(timings["dense"].median_ms, 4)
        if "compiled" in timings:
            entry["compiled_ms"] = round(timings["compiled"].median_ms, 4)
            entry["speedup"] = round(timings["dense"].median_ms / timings["compiled"].median_ms, 3)
        elif isinstance(rewrite.get(name), dict) and "candidates_ms" in rewrite[name]:
            chosen = rewrite[name]["lowering"]
            ms = rewrite[name]["candidates_ms"]
            entry["speedup_of_lowering"] = round(ms["depthwise"] / ms[chosen], 3)
        result[name] = entry
    return result


def bench_one(name: str, batch: int, recipe: str, runs: int, threads: int, folder: Path, layers: bool,
              pruned_elsewhere: float = 0.0) -> dict:
    path = export(name, batch, folder, pruned_elsewhere)
    model = load_model(path)
    ctx = PassContext(model)
    PassManager([make_pass(n) for n in CANONICAL_PASSES]).run(ctx)
    dense = ctx.model.copy()
    start = time.perf_counter()
    records = PassManager([make_pass(n, **o) for n, o in load_recipe(recipe).passes]).run(ctx).records
    compile_s = time.perf_counter() - start
    masked, compiled = ctx.masked, ctx.model
    backend = OrtBackend(threads=threads, allow_spinning=False)
    sessions = {k: backend.load(m.to_bytes()) for k, m in
                (("unpruned", dense), ("masked", masked), ("compiled", compiled))}
    feed = {"input": np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)}
    outs = {k: s.run(feed) for k, s in sessions.items()}
    ref, got = outs["masked"]["logits"], outs["compiled"]["logits"]
    rel = float(np.abs(ref - got).max() / np.abs(ref).max())
    timings = time_interleaved(sessions, dict.fromkeys(sessions, feed), warmup=3, runs=runs)
    med = {k: t.median_ms for k, t in timings.items()}
    macs_dense, _ = nonzero_macs(dense)
    _, macs_kept = nonzero_macs(masked)
    macs_compiled, _ = nonzero_macs(compiled)
    rewrite_state = ctx.details_of("deprune-rewrite")
    rewrite = rewrite_state.get("layers", {})  # per depthwise layer: lowering, reason, candidates' times
    result = {
        "model": name, "batch": batch, "recipe": recipe, "compile_s": round(compile_s, 1),
        "ms": {k: round(v, 3) for k, v in med.items()},
        "min_ms": {k: round(t.min_ms, 3) for k, t in timings.items()},
        "speedup_vs_unpruned": round(med["unpruned"] / med["compiled"], 3),
        "speedup_vs_masked": round(med["masked"] / med["compiled"], 3),
        "speedup_vs_unpruned_min": round(timings["unpruned"].min_ms / timings["compiled"].min_ms, 3),
        "ideal": round(macs_dense / macs_kept, 3),
        "ideal_shapes": round(macs_dense / macs_compiled, 3),
        "macs": {"unpruned": macs_dense, "kept": macs_kept, "compiled_graph": macs_compiled},
        "max_rel_diff_vs_masked": rel,
        "passes": {r.name: r.to_dict().get("notes") for r in records},
        "whole_model_check": rewrite_state.get("model_check"),
    }
    plan = ctx.details_of("plan-deprune").get("dw", {})
    dead = ctx.details_of("deprune-dead-channels")
    pw = next((r.to_dict()["details"].get("pw", {}) for r in records if r.name == "plan-deprune"), {})
    per_layer = {}
    for dw_name, facts in plan.items():
        pw2 = facts.get("pw2")
        pw_group = next((g for label, g in pw.items() if pw2 and pw2 in label.split(" + ")), None)
        per_layer[dw_name] = {
            "dw_ratio": facts["dw_ratio"], "real_dw": facts["real_dw"], "imbalance": facts["imbalance"],
            "hsr": facts["hsr"], "dead": dead.get(dw_name, {}).get("dead", 0),
            "dead_removed": dead.get(dw_name, {}).get("removed", 0),
            "dead_reason": dead.get(dw_name, {}).get("reason"),
            "pw2_ratio": round(1 - pw_group["after"] / pw_group["before"], 3) if pw_group else 0.0,
            "lowering": (rewrite.get(dw_name) or {}).get("lowering", "depthwise"),
            "lowering_reason": (rewrite.get(dw_name) or {}).get("reason"),
            "candidates_ms": (rewrite.get(dw_name) or {}).get("candidates_ms"),
        }
    if layers:
        for dw_name, speed in dw_layer_speedups(dense, compiled, rewrite, max(10, runs // 2), threads).items():
            per_layer.setdefault(dw_name, {}).update(speed)
    result["layers"] = per_layer
    return result


def markdown(results: list[dict], env: dict) -> str:
    lines = [f"Environment: {env}", "", "| model | batch | unpruned ms | masked ms | compiled ms | vs unpruned "
             "(median) | (min) | vs masked | ideal (non-zero MACs) | ideal (shapes) | max rel diff | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['batch']} | {r['ms']['unpruned']} | {r['ms']['masked']} | "
                     f"{r['ms']['compiled']} | {r['speedup_vs_unpruned']}x | {r['speedup_vs_unpruned_min']}x | "
                     f"{r['speedup_vs_masked']}x | {r['ideal']}x | {r['ideal_shapes']}x | "
                     f"{r['max_rel_diff_vs_masked']:.1e} | {r.get('load', 0):.1f} |")
    for r in results:
        if not any("dense_ms" in v for v in r["layers"].values()):
            continue
        lines += ["", f"### {r['model']} batch {r['batch']}: per depthwise layer", "",
                  "| layer | DW ratio | Real DW | imbalance | HSR | dead (removed) | PW2 ratio | channels | "
                  "lowering | DW speedup |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, v in r["layers"].items():
            short = name.replace("/Conv", "").replace("/features", "")[-28:]
            speed = v.get("speedup", v.get("speedup_of_lowering", ""))
            lines.append(f"| {short} | {v.get('dw_ratio')} | {v.get('real_dw')} | {v.get('imbalance')} | "
                         f"{v.get('hsr')} | {v.get('dead')} ({v.get('dead_removed')}) | {v.get('pw2_ratio')} | "
                         f"{'->'.join(map(str, v.get('channels', [])))} | {v.get('lowering')} | {speed}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(ZOO_MODELS) + list(OWN_MODELS),
                        choices=list(ZOO_MODELS) + list(OWN_MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--recipe", default="deprune-bh")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer depthwise timings")
    parser.add_argument("--pruned-elsewhere", type=float, default=0.0,
                        help="zero this share of every depthwise weight in PyTorch before export (use with "
                             "--recipe deprune-zeros: detect mode)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    import onnxruntime

    env = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
           "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
           "load_at_start": os.getloadavg()[0], "timing": f"host wall-clock per run, median of {args.runs} "
                                                          "interleaved runs after 3 warm-up runs"}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for batch in args.batches:
                result = bench_one(name, batch, args.recipe, args.runs, args.threads, Path(tmp),
                                   layers=not args.no_layers, pruned_elsewhere=args.pruned_elsewhere)
                result["load"] = os.getloadavg()[0]
                results.append(result)
                print(f"{name} b{batch}: unpruned {result['ms']['unpruned']} ms, masked {result['ms']['masked']} ms, "
                      f"compiled {result['ms']['compiled']} ms -> {result['speedup_vs_unpruned']}x vs unpruned, "
                      f"{result['speedup_vs_masked']}x vs masked, ideal {result['ideal']}x "
                      f"(load {result['load']:.1f})", flush=True)
    env["load_at_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": results}, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(results, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
