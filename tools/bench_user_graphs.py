"""Graphs users bring: model x exporter x dtype x recipe -> compiled / exact / MACs ratio / speedup.

The models are written here, independently of the zoo (``models/``): a ResNet-18 and a VGG-16
(torchvision's layouts, random weights, fresh BatchNorms, so every folded bias is zero and the
TorchScript exporter de-duplicates them behind Identity nodes, as in the issue's reports). Each
is exported the ordinary ways: ``torch.onnx.export(..., opset_version=17, dynamo=False)`` and
``dynamo=True`` (opset 18+, weights in an external ``.data`` file); FP16 versions come from
onnxconverter-common's ``convert_float_to_float16``. Each cell compiles with
:func:`sparsecc.compile_model` (every exact pass verified on ONNX Runtime, then the whole model
against the masked original at the model's dtype tolerances) and times the input and the compiled
model with :func:`sparsecc.bench.bench_models`: ONNX Runtime CPU sessions with ``--threads``
intra-op threads, interleaved A B A B in one process after warm-up, host wall-clock, medians.
``detect`` runs on a model "pruned elsewhere": the input with ``filter-l2``'s plan applied.

Usage: python tools/bench_user_graphs.py [--models resnet18 vgg16] [--runs 20] [--threads 2]
       [--size 224] [--cells resnet18:torchscript:fp32:filter-l2 ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import onnx

RECIPES = ("filter-l2", "hybrid-24", "groupwise-50", "detect")
DEFAULT_CELLS = [
    *(f"resnet18:{e}:{d}:{r}" for e in ("torchscript", "dynamo") for d in ("fp32", "fp16")
      for r in ("filter-l2", "hybrid-24")),
    "resnet18:torchscript:fp32:groupwise-50", "resnet18:torchscript:fp32:detect",
    "vgg16:torchscript:fp32:groupwise-50", "vgg16:torchscript:fp32:filter-l2",
]


def build(name: str):
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.down = None
            if stride != 1 or c_in != c_out:
                self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    if name == "resnet18":
        layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        c = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [Basic(c, width, stride), Basic(width, width, 1)]
            c = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    elif name == "vgg16":
        layers, c = [], 3
        for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
                c = item
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    else:
        raise SystemExit(f"unknown model {name}")
    torch.manual_seed(0)
    return nn.Sequential(*layers).eval()


def export(name: str, exporter: str, dtype: str, size: int, cache: Path) -> Path:
    import torch

    fp32 = cache / f"{name}-{exporter}.onnx"
    if not fp32.exists():
        example = (torch.randn(1, 3, size, size),)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                torch.onnx.export(build(name), example, str(fp32), dynamo=True, external_data=True,
                                  input_names=["x"], output_names=["y"], verbose=False)
            else:
                torch.onnx.export(build(name), example, str(fp32), dynamo=False, opset_version=17,
                                  input_names=["x"], output_names=["y"])
    if dtype == "fp32":
        return fp32
    fp16 = cache / f"{name}-{exporter}-fp16.onnx"
    if not fp16.exists():
        from onnxconverter_common import float16

        onnx.save(float16.convert_float_to_float16(onnx.load(str(fp32))), str(fp16))
    return fp16


def pruned_elsewhere(path: Path, cache: Path) -> Path:
    """The input with filter-l2's plan applied (zeroed filters and consumer channels): a model
    pruned and fine-tuned elsewhere, as detect mode receives it."""
    from sparsecc.compiler import compile_model
    from sparsecc.model import load_model
    from sparsecc.passes.canonicalize import canonicalize
    from sparsecc.plan import SparsityPlan, apply_plan

    target = cache / f"{path.stem}-pruned-elsewhere.onnx"
    if not target.exists():
        out = compile_model(path, "filter-l2", cache / f"{path.stem}-plan").out_dir
        model = load_model(path)
        canonicalize(model)
        apply_plan(model, SparsityPlan.load(out / "plan.json"))
        model.save(target)
    return target


def run_cell(cell: str, size: int, runs: int, threads: int, cache: Path) -> dict:
    from sparsecc.bench import bench_models
    from sparsecc.compiler import compile_model
    from sparsecc.errors import SparseccError

    name, exporter, dtype, recipe = cell.split(":")
    row = {"model": name, "exporter": exporter, "dtype": dtype, "recipe": recipe}
    source = export(name, exporter, dtype, size, cache)
    if recipe == "detect":
        source = pruned_elsewhere(source, cache)
    started = time.perf_counter()
    try:
        result = compile_model(source, recipe, cache / f"out-{cell.replace(':', '-')}")
    except SparseccError as err:
        return {**row, "compiled": False, "error": f"{type(err).__name__}: {err.what}"}
    except Exception as err:  # an internal error is a finding of this matrix, not a reason to stop it
        return {**row, "compiled": False, "error": f"internal {type(err).__name__}: {err}",
                "traceback": traceback.format_exc(limit=3)}
    report = result.report
    summary, verification = report["summary"], report["verification"]
    row.update(compiled=True, compile_s=round(time.perf_counter() - started, 1),
               exact=verification["exact"]["passed"], dtype_tolerances=[verification["atol"], verification["rtol"]],
               worst_relative_error=verification["exact"]["worst_relative_error"],
               macs_ratio=summary["ideal_speedup"], skipped=len(report["skipped"]))
    timing = bench_models([source, result.model_path], threads=threads, runs=runs)
    row.update(speedup=timing["speedup"], efficiency=timing["efficiency"],
               dense_ms=timing["models"]["baseline"]["median_ms"],
               compiled_ms=timing["models"]["candidate"]["median_ms"])
    return row


def markdown(rows: list[dict], threads: int, runs: int, load: str) -> str:
    lines = [f"ONNX Runtime CPU, {threads} intra-op threads, {runs} interleaved runs (medians); load: {load}", "",
             "| model | exporter | dtype | recipe | compiled | exact | MACs ratio | speedup | dense ms | compiled ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["compiled"]:
            lines.append(f"| {r['model']} | {r['exporter']} | {r['dtype']} | {r['recipe']} | no: {r['error']} "
                         "| | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['exporter']} | {r['dtype']} | {r['recipe']} | yes | "
                     f"{'yes' if r['exact'] else 'NO'} ({r['worst_relative_error']:.2g}) | {r['macs_ratio']:.2f}x | "
                     f"{r['speedup']:.2f}x | {r['dense_ms']:.1f} | {r['compiled_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", nargs="*", default=DEFAULT_CELLS, help="model:exporter:dtype:recipe")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "sparsecc-user-graphs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for cell in args.cells:
        print(f"[{time.strftime('%H:%M:%S')}] {cell}", flush=True)
        rows.append(run_cell(cell, args.size, args.runs, args.threads, args.cache))
        print("   ", {k: v for k, v in rows[-1].items() if k != "traceback"}, flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows, args.threads, args.runs, " ".join(f"{x:.2f}" for x in os.getloadavg())))


if __name__ == "__main__":
    main()
