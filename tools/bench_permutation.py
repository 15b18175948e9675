"""How much magnitude 2:4 keeps per layer, without and with channel permutation, on a trained model.

Usage:
    python tools/bench_permutation.py [--zoo resnet18-digits] [--onnx MODEL.onnx --shape x:1x3x32x32]
                                      [--json OUT.json]

The model is a trained zoo checkpoint (``sparsecc.zoo.checkpoint_path``; trained on
scikit-learn's digits) or any ONNX model. The graph is
canonicalised (BatchNorm folded, as every recipe does), then
``permute-channels-24`` runs through the PassManager, which checks on ONNX
Runtime that the permuted model computes the same outputs. For every 2:4
eligible layer the tool prints the share of |w| that 2:4 keeps before and
after, and the relative gain; the mean over layers and the total over the
model close the table. No timing is involved beyond the search's own seconds
(host wall-clock, one process).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from sparsecc.errors import SparseccError
from sparsecc.layers import find_weight_layers
from sparsecc.model import Model, load_model, parse_shape_overrides
from sparsecc.passmanager import PassContext, PassManager, make_pass
from sparsecc.sparsity.two_four import eligibility, kept_magnitude


def eligible_kept(model: Model) -> dict[str, dict[str, float]]:
    """Per 2:4-eligible layer: total |w| and the |w| 2:4 keeps (TensorRT layout)."""
    tensors = model.graph.tensors()
    layers, _ = find_weight_layers(model)
    result = {}
    for layer in layers:
        values = tensors[layer.weight].values
        if eligibility(layer, values.dtype).eligible:
            result[layer.node] = {"total": float(np.abs(values).sum()),
                                  "kept": kept_magnitude(values, layer.op, layer.trans_b),
                                  "shape": list(values.shape)}
    return result


def bench(model: Model, seed: int = 0) -> dict:
    ctx = PassContext(model)
    PassManager([make_pass("constants-to-initializers"), make_pass("fold-batchnorm")]).run(ctx)
    before = eligible_kept(ctx.model)
    start = time.perf_counter()
    records = PassManager([make_pass("permute-channels-24", seed=seed)]).run(ctx).records
    seconds = time.perf_counter() - start
    after = eligible_kept(ctx.model)
    rows = []
    for node, b in before.items():
        a = after[node]
        rows.append({"layer": node, "shape": b["shape"], "kept_share_plain": b["kept"] / b["total"],
                     "kept_share_permuted": a["kept"] / a["total"], "gain": (a["kept"] - b["kept"]) / b["kept"]})
    record = records[0]
    return {"layers": rows,
            "mean_gain": float(np.mean([r["gain"] for r in rows])) if rows else 0.0,
            "total_gain": (sum(a["kept"] for a in after.values()) / sum(b["kept"] for b in before.values()) - 1)
            if rows else 0.0,
            "groups_permuted": record.result.details.get("groups_permuted", 0) if record.result else 0,
            "skipped_groups": [vars(s) for s in record.result.skipped] if record.result else [],
            "verification": record.verification, "search_and_verify_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="resnet18-digits", help="trained zoo model (default: resnet18-digits)")
    parser.add_argument("--onnx", type=Path, help="an ONNX model instead of the zoo checkpoint")
    parser.add_argument("--shape", action="append", metavar="NAME:DIMS", help="shape of a dynamic input of --onnx")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    try:
        if args.onnx:
            path, source, shapes = args.onnx, str(args.onnx), parse_shape_overrides(args.shape)
        else:
            from sparsecc.zoo import checkpoint_path, get_entry

            path, source = checkpoint_path(args.zoo), f"zoo checkpoint {args.zoo}"
            shapes = {spec.name: tuple(spec.shape) for spec in get_entry(args.zoo).inputs}
        result = bench(load_model(path, shapes), seed=args.seed)
    except SparseccError as err:
        print(err.format(), file=sys.stderr)
        return 2
    result["model"] = source
    print(f"model: {source}")
    print(f"{'layer':40s} {'weight shape':>18s} {'2:4 keeps':>10s} {'permuted':>10s} {'gain':>8s}")
    for row in result["layers"]:
        print(f"{row['layer'][:40]:40s} {str(row['shape']):>18s} {row['kept_share_plain']:10.2%} "
              f"{row['kept_share_permuted']:10.2%} {row['gain']:8.2%}")
    verification = result["verification"] or {}
    print(f"mean gain over {len(result['layers'])} eligible layers: {result['mean_gain']:.2%}; "
          f"total kept magnitude: {result['total_gain']:+.2%}; groups permuted: {result['groups_permuted']}; "
          f"exact on ONNX Runtime: {verification.get('passed')} (worst relative error "
          f"{verification.get('worst_relative_error', 0.0):.1e}); search + verification: "
          f"{result['search_and_verify_seconds']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
