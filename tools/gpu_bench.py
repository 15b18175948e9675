"""GPU kernel bench: the sparsecc plugin kernels against cuBLAS, cuDNN and cuSPARSELt, layer by layer.

For a machine with an NVIDIA GPU, PyTorch (CUDA) and Triton; TensorRT is not needed. Three studies,
each on the real layer shapes of the zoo models (read from ``sparsecc.zoo.build_model`` by forward
hooks at 224 x 224 on the CPU), FP16, one process, one run:

  groupwise   VGG-16 and ResNet-18 convolutions (and VGG-16's 4096-wide Linear layers): the group-wise
              kernel (implicit GEMM over the kept im2col rows, ``GroupwiseConv`` / ``GroupwiseLinear``)
              at 75 / 50 / 25 % kept vs the dense GEMM in cuBLAS (``torch.matmul`` of the weight and
              the im2col matrix, im2col built beforehand and not timed) and vs cuDNN's convolution.
              ideal = 1 / kept; target: speedup over cuBLAS >= 0.7 x ideal at 50 % kept.
  depthwise   the depthwise layers of MobileNetV2 and EfficientNet-B0 at batch 32 (the DEPrune paper's
              batch): the DW sub-GEMM kernel (``DepthwiseSubGemm``: groups of 32 channels, the same
              K' in every group as after BWT) at the DEPrune ratio vs cuDNN's depthwise convolution
              (``F.conv2d(groups=C)``) of the unpruned layer. Target: faster than cuDNN on
              EfficientNet-B0's layers (the paper: 6.15x over unpruned DW-conv, on an RTX 2080 Ti).
  two_four    2:4 GEMMs of the VGG-16 / ResNet-18 convolutions (weight [Cout, Cin*kh*kw] pruned 2:4
              along the reduction dimension) through ``torch.sparse.to_sparse_semi_structured``
              (cuSPARSELt) vs the dense GEMM. Target: >= 1.3x where Cin >= 256.

Timing: CUDA events around each call on the current stream, after ``--warmup`` calls, median of
``--reps`` calls; each layer's variants are timed back to back (interleaved rounds), so ratios come
from one run. Each kernel's output is checked against the PyTorch result of the masked layer before it
is timed. The whole run is bounded by ``--budget-s`` (default 270 s): cases left when it runs out are
listed as skipped.

Usage: python tools/gpu_bench.py [--studies groupwise depthwise two_four] [--out DIR] [--reps 20]
Writes DIR/gpu_bench.json and DIR/gpu_bench.md. Without a CUDA GPU it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


GROUPWISE_MODELS = ("vgg16", "resnet18")
DEPTHWISE_MODELS = ("mobilenetv2", "efficientnet-b0")
KEPT_FRACTIONS = (0.75, 0.5, 0.25)
# DW pruning ratio per model. EfficientNet-B0: 84.7 % of DW weights pruned (DEPrune-BH, NeurIPS 2024);
# MobileNet-V2's ratio is not in the project's paper summary: 80 % is used and reported as such.
DEPRUNE_DW_RATIO = {"efficientnet-b0": 0.847, "mobilenetv2": 0.80}
DW_GROUP = 32
TARGETS = {"groupwise_efficiency_at_50": 0.7, "depthwise_speedup": 1.0, "two_four_speedup_c256": 1.3}


@dataclass(frozen=True)
class ConvShape:
    """One convolution layer as it runs in a model (input spatial size included)."""

    model: str
    name: str
    cin: int
    cout: int
    kh: int
    kw: int
    stride: int
    pad: int
    groups: int
    h: int
    w: int

    @property
    def oh(self) -> int:
        return (self.h + 2 * self.pad - self.kh) // self.stride + 1

    @property
    def ow(self) -> int:
        return (self.w + 2 * self.pad - self.kw) // self.stride + 1

    @property
    def depthwise(self) -> bool:
        return self.groups == self.cin == self.cout and self.groups > 1

    @property
    def k(self) -> int:
        """Reduction size of the layer's GEMM (per group)."""
        return self.cin // self.groups * self.kh * self.kw

    def key(self) -> tuple:
        return (self.cin, self.cout, self.kh, self.kw, self.stride, self.pad, self.groups, self.h, self.w)


@functools.lru_cache(maxsize=None)
def model_layers(model: str, image: int = 224) -> tuple[list[ConvShape], list[tuple[str, int, int]]]:
    """(convolutions, linear layers as (name, in, out)) of a zoo model, read by forward hooks on the CPU."""
    import importlib

    import torch

    from sparsecc.models import ZOO

    entry = ZOO[model]  # built from its PyTorch definition directly: sparsecc.zoo would import onnx
    module, function = entry.builder.split(":")
    net = getattr(importlib.import_module(module), function)(**entry.kwargs).eval()
    convs, linears, hooks = [], [], []
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            def hook(mod, inputs, output, name=name):
                _, _, h, w = inputs[0].shape
                convs.append(ConvShape(model, name, mod.in_channels, mod.out_channels, mod.kernel_size[0],
                                       mod.kernel_size[1], mod.stride[0], mod.padding[0], mod.groups, int(h), int(w)))
            hooks.append(module.register_forward_hook(hook))
        elif isinstance(module, torch.nn.Linear):
            linears.append((name, module.in_features, module.out_features))
    with torch.no_grad():
        net(torch.zeros(1, 3, image, image))
    for h in hooks:
        h.remove()
    return convs, linears


def unique(shapes: list[ConvShape]) -> list[tuple[ConvShape, int]]:
    """Distinct layer shapes, first occurrence, with how many layers share each."""
    seen: dict[tuple, list] = {}
    for s in shapes:
        seen.setdefault(s.key(), [s, 0])[1] += 1
    return [(s, n) for s, n in seen.values()]


def kept_count(k: int, fraction: float) -> int:
    """Kept reduction rows at ``fraction`` kept: at least one, rounded to the nearest integer."""
    return max(1, int(round(k * fraction)))


def dw_kept_per_group(kh: int, kw: int, ratio: float) -> int:
    """K' of every DW sub-GEMM at pruning ratio ``ratio`` (BWT: the same in every group of 32 channels)."""
    return max(1, int(math.ceil((1.0 - ratio) * DW_GROUP * kh * kw)))


def groupwise_cases(models=GROUPWISE_MODELS, fractions=KEPT_FRACTIONS) -> list[dict]:
    cases = []
    for model in models:
        convs, linears = model_layers(model)
        for shape, count in unique([c for c in convs if c.groups == 1 and c.cin > 3]):
            for f in fractions:
                cases.append({"kind": "conv", "shape": shape, "layers": count, "kept_fraction": f,
                              "kept": kept_count(shape.k, f)})
        for name, fin, fout in linears:
            if fin >= 1024:
                for f in fractions:
                    cases.append({"kind": "linear", "model": model, "name": name, "in": fin, "out": fout,
                                  "kept_fraction": f, "kept": kept_count(fin, f)})
    return cases


def depthwise_cases(models=DEPTHWISE_MODELS) -> list[dict]:
    cases = []
    for model in models:
        convs, _ = model_layers(model)
        ratio = DEPRUNE_DW_RATIO[model]
        for shape, count in unique([c for c in convs if c.depthwise]):
            cases.append({"kind": "depthwise", "shape": shape, "layers": count, "ratio": ratio,
                          "kept_per_group": dw_kept_per_group(shape.kh, shape.kw, ratio),
                          "groups": -(-shape.cin // DW_GROUP)})
    return cases


def two_four_cases(models=GROUPWISE_MODELS) -> list[dict]:
    """Dense convolutions whose GEMM cuSPARSELt takes (rows multiple of 32, K multiple of 64)."""
    cases = []
    for model in models:
        convs, _ = model_layers(model)
        for shape, count in unique([c for c in convs if c.groups == 1 and c.cin >= 64]):
            if shape.cout % 32 == 0 and shape.k % 64 == 0:
                cases.append({"kind": "2:4", "shape": shape, "layers": count})
    return cases


# ------------------------------------------------------------------------------------------------
# Timing and the kernels (GPU only)
# ------------------------------------------------------------------------------------------------

def time_interleaved_cuda(fns: dict, warmup: int, reps: int) -> dict[str, float]:
    """Median CUDA-event milliseconds of each callable, timed in interleaved rounds on the current stream."""
    import torch

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {label: [] for label in fns}
    for _ in range(reps):
        for label, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples[label].append(start.elapsed_time(end))
    return {label: statistics.median(v) for label, v in samples.items()}


def _max_rel_error(actual, expected) -> float:
    scale = float(expected.abs().max().clamp_min(1e-6))
    return float((actual.float() - expected.float()).abs().max()) / scale


def run_groupwise(case: dict, batch: int, warmup: int, reps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from sparsecc.plugins.triton_kernels import launch_kept_k_conv, launch_kept_k_linear

    dev, dt = "cuda", torch.float16
    g = torch.Generator(device="cpu").manual_seed(0)
    if case["kind"] == "linear":
        fin, fout, kept_n = case["in"], case["out"], case["kept"]
        x = torch.randn(batch, fin, generator=g).to(dev, dt)
        w = torch.randn(fin, fout, generator=g).to(dev, dt) / math.sqrt(fin)
        b = torch.zeros(fout, device=dev, dtype=dt)
        kept = torch.sort(torch.randperm(fin, generator=g)[:kept_n]).values.to(dev, torch.int32)
        wk = w[kept.long()].contiguous()
        y = torch.empty(batch, fout, device=dev, dtype=dt)
        scalars = {"M": batch, "KIN": fin, "K": kept_n, "NOUT": fout}
        kernel = lambda: launch_kept_k_linear(x, kept, wk, b, y, scalars)  # noqa: E731
        kernel()
        masked = torch.zeros_like(w)
        masked[kept.long()] = wk
        error = _max_rel_error(y, x @ masked)
        times = time_interleaved_cuda({"cublas_dense": lambda: torch.matmul(x, w), "groupwise": kernel}, warmup, reps)
        row = {"model": case["model"], "layer": case["name"], "shape": f"Linear {fin}->{fout}, batch {batch}"}
    else:
        s: ConvShape = case["shape"]
        x = torch.randn(batch, s.cin, s.h, s.w, generator=g).to(dev, dt)
        w = (torch.randn(s.cout, s.cin, s.kh, s.kw, generator=g) / math.sqrt(s.k)).to(dev, dt)
        b = torch.zeros(s.cout, device=dev, dtype=dt)
        kept = torch.sort(torch.randperm(s.k, generator=g)[:case["kept"]]).values.to(dev, torch.int32)
        wk = w.reshape(s.cout, s.k)[:, kept.long()].contiguous()
        y = torch.empty(batch, s.cout, s.oh, s.ow, device=dev, dtype=dt)
        scalars = dict(N=batch, C=s.cin, H=s.h, W=s.w, COUT=s.cout, COUT_G=s.cout, CIN_G=s.cin, OH=s.oh, OW=s.ow,
                       K=case["kept"], KH=s.kh, KW=s.kw, SH=s.stride, SW=s.stride, PH=s.pad, PW=s.pad, DH=1, DW=1)
        kernel = lambda: launch_kept_k_conv(x, wk.reshape(1, s.cout, -1), kept.reshape(1, -1), b, y,  # noqa: E731
                                            scalars, groups=1)
        kernel()
        masked = torch.zeros(s.cout, s.k, device=dev, dtype=dt)
        masked[:, kept.long()] = wk
        error = _max_rel_error(y, F.conv2d(x, masked.reshape(w.shape), b, stride=s.stride, padding=s.pad))
        cols = F.unfold(x, (s.kh, s.kw), padding=s.pad, stride=s.stride)        # [B, K, P], not timed
        w2 = w.reshape(s.cout, s.k)
        times = time_interleaved_cuda({
            "cublas_dense": lambda: torch.matmul(w2, cols),
            "cudnn_dense": lambda: F.conv2d(x, w, b, stride=s.stride, padding=s.pad),
            "groupwise": kernel}, warmup, reps)
        row = {"model": s.model, "layer": s.name, "layers": case["layers"],
               "shape": f"{s.cin}->{s.cout} {s.kh}x{s.kw}/{s.stride} at {s.h}x{s.w}, batch {batch}"}
    speedup = times["cublas_dense"] / times["groupwise"]
    ideal = 1.0 / (case["kept"] / (case["in"] if case["kind"] == "linear" else case["shape"].k))
    row.update({"kind": case["kind"], "kept_fraction": case["kept_fraction"], "kept": case["kept"],
                "times_ms": times, "speedup_vs_cublas": speedup, "ideal": ideal, "efficiency": speedup / ideal,
                "max_rel_error": error})
    return row


def run_depthwise(case: dict, batch: int, warmup: int, reps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from sparsecc.plugins.triton_kernels import launch_kept_k_conv

    s: ConvShape = case["shape"]
    dev, dt = "cuda", torch.float16
    g = torch.Generator(device="cpu").manual_seed(0)
    taps, groups, kpg = s.kh * s.kw, case["groups"], case["kept_per_group"]
    x = torch.randn(batch, s.cin, s.h, s.w, generator=g).to(dev, dt)
    w = torch.randn(s.cin, 1, s.kh, s.kw, generator=g).to(dev, dt)
    b = torch.zeros(s.cin, device=dev, dtype=dt)
    wg = torch.zeros(groups, DW_GROUP, kpg, dtype=dt)
    kept = torch.zeros(groups, kpg, dtype=torch.int32)
    pruned = torch.zeros(s.cin, taps, dtype=dt)
    flat = w.reshape(s.cin, taps).cpu()
    for gi in range(groups):
        channels = min(DW_GROUP, s.cin - DW_GROUP * gi)
        real = min(kpg, channels * taps)
        cols = torch.sort(torch.randperm(channels * taps, generator=g)[:real]).values
        kept[gi, :real] = cols.to(torch.int32)
        for j, col in enumerate(cols.tolist()):
            r, t = divmod(col, taps)
            wg[gi, r, j] = flat[DW_GROUP * gi + r, t]
            pruned[DW_GROUP * gi + r, t] = flat[DW_GROUP * gi + r, t]
    wg, kept, pruned = wg.to(dev), kept.to(dev), pruned.to(dev).reshape(w.shape)
    y = torch.empty(batch, s.cin, s.oh, s.ow, device=dev, dtype=dt)
    scalars = dict(N=batch, C=s.cin, H=s.h, W=s.w, COUT=s.cin, COUT_G=DW_GROUP, CIN_G=DW_GROUP, OH=s.oh, OW=s.ow,
                   K=kpg, KH=s.kh, KW=s.kw, SH=s.stride, SW=s.stride, PH=s.pad, PW=s.pad, DH=1, DW=1)
    kernel = lambda: launch_kept_k_conv(x, wg, kept, b, y, scalars, groups=groups)  # noqa: E731
    kernel()
    error = _max_rel_error(y, F.conv2d(x, pruned, b, stride=s.stride, padding=s.pad, groups=s.cin))
    times = time_interleaved_cuda({
        "cudnn_depthwise_dense": lambda: F.conv2d(x, w, b, stride=s.stride, padding=s.pad, groups=s.cin),
        "dw_subgemm": kernel}, warmup, reps)
    return {"model": s.model, "layer": s.name, "layers": case["layers"], "kind": "depthwise",
            "shape": f"C={s.cin} {s.kh}x{s.kw}/{s.stride} at {s.h}x{s.w}, batch {batch}",
            "ratio": case["ratio"], "kept_per_group": kpg, "groups": groups, "times_ms": times,
            "speedup_vs_cudnn": times["cudnn_depthwise_dense"] / times["dw_subgemm"],
            "ideal": 1.0 / (1.0 - case["ratio"]), "max_rel_error": error}


def run_two_four(case: dict, batch: int, warmup: int, reps: int) -> dict:
    import torch
    from torch.sparse import to_sparse_semi_structured

    s: ConvShape = case["shape"]
    dev, dt = "cuda", torch.float16
    g = torch.Generator(device="cpu").manual_seed(0)
    w = torch.randn(s.cout, s.k, generator=g).to(dev, dt)
    # 2:4 along the reduction dimension: in every 4 consecutive weights keep the 2 largest
    groups4 = w.reshape(s.cout, s.k // 4, 4)
    keep = groups4.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(groups4, dtype=torch.bool).scatter_(-1, keep, True)
    w24 = (groups4 * mask).reshape(s.cout, s.k).contiguous()
    ws = to_sparse_semi_structured(w24)
    n = batch * s.oh * s.ow
    x = torch.randn(s.k, max(64, -(-n // 64) * 64), generator=g).to(dev, dt)
    error = _max_rel_error(torch.mm(ws, x), torch.mm(w24, x))
    times = time_interleaved_cuda({"dense": lambda: torch.mm(w24, x), "sparse_2_4": lambda: torch.mm(ws, x)},
                                  warmup, reps)
    return {"model": s.model, "layer": s.name, "layers": case["layers"], "kind": "2:4",
            "shape": f"GEMM {s.cout}x{s.k} @ {s.k}x{x.shape[1]} (conv {s.cin}->{s.cout} at {s.h}x{s.w})",
            "cin": s.cin, "times_ms": times, "speedup": times["dense"] / times["sparse_2_4"], "ideal": 2.0,
            "max_rel_error": error}


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------

def summarise(results: dict) -> dict:
    """The issue's targets checked against the rows measured."""
    gw50 = [r["efficiency"] for r in results.get("groupwise", []) if r["kept_fraction"] == 0.5]
    dw_eff = [r["speedup_vs_cudnn"] for r in results.get("depthwise", []) if r["model"] == "efficientnet-b0"]
    big24 = [r["speedup"] for r in results.get("two_four", []) if r["cin"] >= 256]

    def stat(values, target):
        if not values:
            return {"measured": 0, "median": None, "min": None, "target": target, "met": None}
        med = statistics.median(values)
        return {"measured": len(values), "median": round(med, 3), "min": round(min(values), 3), "target": target,
                "met": bool(med >= target)}

    return {"groupwise_efficiency_at_50": stat(gw50, TARGETS["groupwise_efficiency_at_50"]),
            "depthwise_speedup_efficientnet_b0": stat(dw_eff, TARGETS["depthwise_speedup"]),
            "two_four_speedup_c256": stat(big24, TARGETS["two_four_speedup_c256"])}


def _fmt(value, digits=3):
    return "-" if value is None else (f"{value:.{digits}g}" if isinstance(value, float) else str(value))


def render_markdown(report: dict) -> str:
    """The Markdown report: environment, target summary, one table per study."""
    env = report.get("environment", {})
    lines = ["# sparsecc GPU kernel bench", "",
             f"GPU: {env.get('gpu', '?')} (sm_{env.get('capability', '?')}); torch {env.get('torch', '?')}, "
             f"triton {env.get('triton', '?')}, CUDA {env.get('cuda', '?')}. FP16; CUDA events, median of "
             f"{report.get('reps', '?')} interleaved calls after {report.get('warmup', '?')} warm-up calls; one run.",
             "", "## Targets", "", "| target | layers | median | min | needed | met |", "|---|---|---|---|---|---|"]
    for name, s in report.get("summary", {}).items():
        met = {True: "yes", False: "no", None: "not measured"}[s["met"]]
        lines.append(f"| {name} | {s['measured']} | {_fmt(s['median'])} | {_fmt(s['min'])} | {s['target']} | {met} |")
    sections = [
        ("groupwise", "Group-wise kernel vs cuBLAS dense GEMM (and cuDNN conv)",
         ["model", "layer", "shape", "kept_fraction", "cublas_dense", "cudnn_dense", "groupwise", "speedup_vs_cublas",
          "ideal", "efficiency", "max_rel_error"]),
        ("depthwise", "DW sub-GEMM (DEPrune) vs cuDNN depthwise, unpruned",
         ["model", "layer", "shape", "ratio", "kept_per_group", "cudnn_depthwise_dense", "dw_subgemm",
          "speedup_vs_cudnn", "ideal", "max_rel_error"]),
        ("two_four", "2:4 GEMM (cuSPARSELt via to_sparse_semi_structured) vs dense",
         ["model", "layer", "shape", "cin", "dense", "sparse_2_4", "speedup", "max_rel_error"]),
    ]
    for key, title, columns in sections:
        rows = report.get("results", {}).get(key)
        if rows is None:
            continue
        lines += ["", f"## {title}", "", "times in ms", "", "| " + " | ".join(columns) + " |",
                  "|" + "---|" * len(columns)]
        for row in rows:
            values = [row.get(c, row.get("times_ms", {}).get(c)) for c in columns]
            lines.append("| " + " | ".join(_fmt(v) for v in values) + " |")
    skipped = report.get("skipped", [])
    if skipped:
        lines += ["", f"Skipped ({len(skipped)}): " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


def gpu_missing_reason() -> str | None:
    """None where the bench can run, else what is missing."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (pip install torch, a CUDA build)"
    if not torch.cuda.is_available():
        return (f"no CUDA GPU is visible to PyTorch {torch.__version__} (torch.cuda.is_available() is False; "
                f"CUDA build: {torch.version.cuda or 'none, a CPU-only build'})")
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton)"
    return None


def environment() -> dict:
    import torch
    import triton

    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "capability": f"{major}{minor}", "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", nargs="+", default=["groupwise", "depthwise", "two_four"],
                        choices=["groupwise", "depthwise", "two_four"])
    parser.add_argument("--out", default="gpu_bench_out", help="folder for gpu_bench.json and gpu_bench.md")
    parser.add_argument("--batch", type=int, default=1, help="batch of the group-wise and 2:4 layers. Default: 1")
    parser.add_argument("--dw-batch", type=int, default=32, help="batch of the depthwise layers. Default: 32")
    parser.add_argument("--reps", type=int, default=20, help="timed calls per variant. Default: 20")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up calls per variant. Default: 5")
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop starting cases after this. Default: 270")
    args = parser.parse_args(argv)
    from tree_imports import use_working_tree

    use_working_tree()
    reason = gpu_missing_reason()
    if reason:
        print(f"gpu_bench: cannot run here: {reason}. Run it on a machine with an NVIDIA GPU, PyTorch with CUDA "
              "and Triton; nothing was measured or written.", file=sys.stderr)
        return 2
    start = time.perf_counter()
    runners = {"groupwise": (groupwise_cases, run_groupwise, args.batch),
               "depthwise": (depthwise_cases, run_depthwise, args.dw_batch),
               "two_four": (two_four_cases, run_two_four, args.batch)}
    results, skipped = {}, []
    for study in args.studies:
        make_cases, run_case, batch = runners[study]
        results[study] = []
        for case in make_cases():
            label = f"{study}: {case.get('shape', case.get('name'))}"
            if time.perf_counter() - start > args.budget_s:
                skipped.append(f"{label} (time budget)")
                continue
            try:
                row = run_case(case, batch, args.warmup, args.reps)
            except Exception as err:  # noqa: BLE001 - one layer's failure is reported, the run goes on
                skipped.append(f"{label} ({type(err).__name__}: {err})")
                continue
            results[study].append(row)
            print(f"{study:9s} {row['model']:16s} {row['shape']:50s} "
                  + " ".join(f"{k}={v:.4f}" for k, v in row["times_ms"].items()), flush=True)
    report = {"environment": environment(), "reps": args.reps, "warmup": args.warmup, "batch": args.batch,
              "dw_batch": args.dw_batch, "deprune_dw_ratio": DEPRUNE_DW_RATIO, "results": results,
              "summary": summarise(results), "skipped": skipped,
              "wall_s": round(time.perf_counter() - start, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(report, indent=2, default=lambda o: asdict(o)))
    (out / "gpu_bench.md").write_text(render_markdown(report))
    print(f"wrote {out / 'gpu_bench.json'} and {out / 'gpu_bench.md'} in {report['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
