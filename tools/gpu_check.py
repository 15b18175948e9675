"""One-shot GPU check of sparsecc's TensorRT plugins, for a GPU machine without TensorRT (run by tools/gpu_check.sh).

Four steps, one JSON (``OUT/gpu_check.json``), within ten minutes:

1. environment: the GPU, driver, CUDA, torch, triton, numpy and TensorRT's plugin layer versions;
2. kernels: every plugin kernel variant (GroupwiseConv, DepthwiseSubGemm, GroupwiseLinear; FP16, FP32
   IEEE and FP32 TF32; with and without divisibility hints; odd and model-sized shapes) goes through
   TensorRT's own plugin layer exactly as TensorRT's ONNX parser and builder drive it
   (:mod:`sparsecc.plugins.trt_offline`); the stripped PTX it returns is loaded through the CUDA driver
   (``cuModuleLoadData``, which JIT-compiles it as an engine load does) and launched with exactly the
   launch TensorRT's AOT path makes: that grid, block and dynamic shared memory, and the arguments
   input pointers, int32 extra arguments, output pointer. Each output is compared with the numpy
   reference of the op;
3. bench: ``tools/gpu_bench.py`` (the group-wise kernels against cuBLAS/cuDNN at 75/50/25 % kept on
   VGG-16/ResNet-18 shapes, the depthwise sub-GEMM against cuDNN's depthwise, 2:4 against dense);
4. TensorRT tests: the test suite's TensorRT tests, where the machine has TensorRT.

``--dry-run`` does everything up to the CUDA calls on a CPU: the plugin-layer builds, the launch
arguments, the references, the kernels of the small cases under Triton's interpreter, and the bench's
case list. TensorRT's plugin layer comes from the installed ``tensorrt-cu12-bindings`` or, on a machine
without a package index, from ``.gpu_check/layer`` (``tools/gpu_check.sh --prepare`` puts it there).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tree_imports import ROOT, use_working_tree
SHARED_MEM_DEFAULT_LIMIT = 48 * 1024  # dynamic shared memory a launch gets without an opt-in attribute
TOL = {"fp16": 2e-2, "fp32": 2e-5}


# ------------------------------------------------------------------------------------------------
# Cases: every kernel variant, odd shapes and model-sized ones
# ------------------------------------------------------------------------------------------------

def kernel_cases() -> list[dict]:
    """Plugin cases: op, dtype, TF32, the node's attributes and its input sizes (``small``: cheap to interpret)."""
    conv = [  # (N, C, H, W, Cout, kernel, strides, pads, dilations, kept, small)
        (2, 5, 9, 7, 6, (3, 3), (2, 1), (1, 0, 2, 1), (1, 2), 22, True),
        (3, 8, 5, 5, 70, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 32, True),           # kept % 16 == 0: hinted
        (8, 256, 14, 14, 256, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1152, False),  # ResNet-18 layer3, 50 % kept
        (8, 128, 28, 28, 128, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 275, False),   # VGG-16-like, odd kept
    ]
    depthwise = [  # (N, C, H, W, kernel, strides, pads, dilations, kept per group, small)
        (1, 40, 7, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 100, True),
        (32, 240, 14, 14, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 123, False),       # EfficientNet-B0, DEPrune 84.7 %
    ]
    linear = [((3,), 37, 19, 18, True), ((2, 5), 24, 32, 16, True), ((8,), 4096, 4096, 2048, False)]
    cases = []
    for dtype, tf32 in (("fp16", False), ("fp32", False), ("fp32", True)):
        for n, c, h, w, cout, k, s, p, d, kept, small in conv:
            cases.append({"op": "GroupwiseConv", "dtype": dtype, "tf32": tf32, "x": (n, c, h, w), "cout": cout,
                          "attrs": _conv_attrs(k, s, p, d), "kept": kept, "small": small})
        for n, c, h, w, k, s, p, d, kept, small in depthwise:
            cases.append({"op": "DepthwiseSubGemm", "dtype": dtype, "tf32": tf32, "x": (n, c, h, w), "cout": c,
                          "attrs": _conv_attrs(k, s, p, d), "kept": kept, "small": small})
        for lead, kin, nout, kept, small in linear:
            cases.append({"op": "GroupwiseLinear", "dtype": dtype, "tf32": tf32, "x": (*lead, kin), "cout": nout,
                          "attrs": {}, "kept": kept, "small": small})
    return cases


def _conv_attrs(k, s, p, d) -> dict:
    return {"kernel_shape": list(k), "strides": list(s), "pads": list(p), "dilations": list(d)}


def case_data(case: dict, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """(inputs in the plugin's order, numpy reference output) of one case."""
    from sparsecc.plugins import get_reference

    rng = np.random.default_rng(seed)
    dt = np.float16 if case["dtype"] == "fp16" else np.float32
    x = rng.standard_normal(case["x"]).astype(dt)
    op, kept_n = case["op"], case["kept"]
    if op == "GroupwiseLinear":
        kin = case["x"][-1]
        kept = np.sort(rng.choice(kin, kept_n, replace=False)).astype(np.int32)
        inputs = [x, kept, (rng.standard_normal((kept_n, case["cout"])) / np.sqrt(kept_n)).astype(dt),
                  rng.standard_normal(case["cout"]).astype(dt)]
    elif op == "GroupwiseConv":
        taps = case["attrs"]["kernel_shape"][0] * case["attrs"]["kernel_shape"][1]
        kept = np.sort(rng.choice(case["x"][1] * taps, kept_n, replace=False)).astype(np.int32)
        inputs = [x, (rng.standard_normal((case["cout"], kept_n)) / np.sqrt(kept_n)).astype(dt), kept,
                  rng.standard_normal(case["cout"]).astype(dt)]
    else:
        taps = case["attrs"]["kernel_shape"][0] * case["attrs"]["kernel_shape"][1]
        groups = -(-case["x"][1] // 32)
        kept = np.stack([np.sort(rng.choice(32 * taps, kept_n, replace=False)) for _ in range(groups)])
        weight = np.zeros((groups, 32, kept_n), dt)
        for g in range(groups):
            weight[g, kept[g] // taps, np.arange(kept_n)] = rng.standard_normal(kept_n)
        inputs = [x, weight, kept.astype(np.int32), rng.standard_normal(case["x"][1]).astype(dt)]
    (reference,) = get_reference(op)(*inputs, **case["attrs"])
    return inputs, reference


def aot_launch(offline, case: dict, arch: int):
    """The launch TensorRT's AOT path makes for a case: parser, builder, launch parameters at its batch."""
    from sparsecc.plugins.trt_offline import build_plugin, create_plugin, plugin_node

    offline.qdp.register_plugins(arch=arch, tf32=case["tf32"])
    trt = offline.trt
    plugin, request, _, _ = create_plugin(offline, plugin_node(case["op"], **case["attrs"]))
    dt = trt.float16 if case["dtype"] == "fp16" else trt.float32
    inputs, reference = case_data(case)
    types = [trt.int32 if a.dtype == np.int32 else dt for a in inputs]
    shapes = [("N", *inputs[0].shape[1:])] + [a.shape for a in inputs[1:]]  # a dynamic batch, as exported
    batch = inputs[0].shape[0]
    build = build_plugin(offline, plugin, types, shapes, {"N": (1, batch, max(batch, 64))})
    return request, build.launch({"N": batch}), inputs, reference


def compare(actual: np.ndarray, reference: np.ndarray, case: dict) -> dict:
    from sparsecc.validate import ENGINE_TOLERANCES

    scale = max(1.0, float(np.abs(reference.astype(np.float64)).max()))
    error = float(np.abs(actual.astype(np.float64) - reference.astype(np.float64)).max())
    if case["tf32"]:
        atol, rtol = ENGINE_TOLERANCES["tf32"]
        allowed = atol + rtol * scale
    else:
        allowed = TOL[case["dtype"]] * scale
    return {"max_abs_error": error, "max_abs_reference": scale, "allowed": allowed, "passed": bool(error <= allowed)}


# ------------------------------------------------------------------------------------------------
# The CUDA driver
# ------------------------------------------------------------------------------------------------

class CudaDriver:
    """The few CUDA driver calls an AOT plugin launch needs, through ctypes (libcuda.so.1)."""

    def __init__(self):
        import torch

        torch.cuda.init()  # makes the primary context current: the one torch's tensors live in
        self.lib = ctypes.CDLL("libcuda.so.1")

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorString(status, ctypes.byref(text))
            raise RuntimeError(f"{what} failed: CUDA error {status} ({(text.value or b'?').decode()})")

    def launch(self, launch, args: list, stream: int = 0) -> None:
        """Load the PTX, look up its entry and launch it with ``args`` (ctypes values) as TensorRT would."""
        module, function = ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self.lib.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(launch.ptx.encode())),
                    "cuModuleLoadData")
        try:
            self._check(self.lib.cuModuleGetFunction(ctypes.byref(function), module,
                                                     ctypes.c_char_p(launch.kernel_name.encode())),
                        f"cuModuleGetFunction({launch.kernel_name})")
            params = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args])
            self._check(self.lib.cuLaunchKernel(function, *[ctypes.c_uint(v) for v in launch.grid + launch.block],
                                                ctypes.c_uint(launch.shared_mem), ctypes.c_void_p(stream), params,
                                                None), "cuLaunchKernel")
            self._check(self.lib.cuCtxSynchronize(), "cuCtxSynchronize")
        finally:
            self.lib.cuModuleUnload(module)


def launch_arguments(launch, pointers: list[int]) -> list:
    """TensorRT's AOT argument list: the input pointers, the int32 extra arguments, the output pointer."""
    *inputs, output = pointers
    return ([ctypes.c_uint64(p) for p in inputs] + [ctypes.c_int32(v) for v in launch.scalars]
            + [ctypes.c_uint64(output)])


def run_on_gpu(driver: CudaDriver, launch, inputs: list[np.ndarray]) -> np.ndarray:
    import torch

    tensors = [torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in inputs]
    out = torch.empty(launch.output_shapes[0], dtype=tensors[0].dtype, device="cuda")
    driver.launch(launch, launch_arguments(launch, [t.data_ptr() for t in tensors] + [out.data_ptr()]))
    return out.cpu().numpy()


# ------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------

def check_kernels(arch: int, dry_run: bool) -> list[dict]:
    """Step 2: one row per case; on a GPU the PTX runs through the driver, in a dry run the small cases interpret."""
    from sparsecc.plugins.ptx import entry_parameters
    from sparsecc.plugins.trt_offline import offline_tensorrt, run_interpreted

    driver = None if dry_run else CudaDriver()
    rows = []
    with offline_tensorrt() as offline:
        for case in kernel_cases():
            label = f"{case['op']} {case['dtype']}{' tf32' if case['tf32'] else ''} x={case['x']} kept={case['kept']}"
            row = {"case": label, "op": case["op"], "dtype": case["dtype"], "tf32": case["tf32"]}
            try:
                request, launch, inputs, reference = aot_launch(offline, case, arch)
                name, params = entry_parameters(launch.ptx)
                row.update({"request": request, "kernel": launch.kernel_name, "grid": launch.grid,
                            "block": launch.block, "shared_mem": launch.shared_mem, "scalars": launch.scalars,
                            "ptx_parameters": len(params), "arguments": len(inputs) + len(launch.scalars) + 1})
                assert name == launch.kernel_name and row["ptx_parameters"] == row["arguments"], row
                assert launch.shared_mem <= SHARED_MEM_DEFAULT_LIMIT, "needs the dynamic shared memory opt-in"
                if dry_run:
                    if case["small"]:
                        out = run_interpreted(launch, _flat(case, inputs), inputs[0].dtype.type)
                        row.update({"ran": "triton interpreter", **compare(out.reshape(reference.shape), reference,
                                                                          case)})
                    else:
                        row.update({"ran": "not run (dry run, too large for the interpreter)", "passed": None})
                else:
                    out = run_on_gpu(driver, launch, _flat(case, inputs))
                    row.update({"ran": "cuda driver", **compare(out.reshape(reference.shape), reference, case)})
            except Exception as err:  # noqa: BLE001 - one case's failure is a row, the check goes on
                row.update({"passed": False, "error": f"{type(err).__name__}: {err}"})
            rows.append(row)
            print(f"  {'ok  ' if row.get('passed') else ('-   ' if row.get('passed') is None else 'FAIL')} {label}: "
                  f"{row.get('kernel', '')} {row.get('ran', row.get('error', ''))}", flush=True)
    return rows


def _flat(case: dict, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The plugin sees X [..., KIN] as [M, KIN] (same memory)."""
    if case["op"] != "GroupwiseLinear":
        return inputs
    return [inputs[0].reshape(-1, inputs[0].shape[-1]), *inputs[1:]]


def run_bench(out: Path, budget_s: float, dry_run: bool) -> dict:
    """Step 3: tools/gpu_bench.py in its own process (its own time budget), or its case list in a dry run."""
    if dry_run:
        sys.path.insert(0, str(ROOT / "tools"))
        import gpu_bench

        cases = {"groupwise": len(gpu_bench.groupwise_cases()), "depthwise": len(gpu_bench.depthwise_cases()),
                 "two_four": len(gpu_bench.two_four_cases())}
        return {"ran": False, "cases": cases, "budget_s": budget_s}
    command = [sys.executable, str(ROOT / "tools" / "gpu_bench.py"), "--out", str(out / "bench"),
               "--budget-s", str(budget_s)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=budget_s + 120, cwd=ROOT)
    result = {"ran": True, "returncode": done.returncode, "output_tail": (done.stdout + done.stderr)[-4000:]}
    report = out / "bench" / "gpu_bench.json"
    if report.is_file():
        result["report"] = json.loads(report.read_text())
    return result


def run_tensorrt_tests(out: Path, dry_run: bool, timeout_s: float = 150) -> dict:
    """Step 4: the TensorRT tests, where TensorRT imports."""
    probe = subprocess.run([sys.executable, "-c", "import tensorrt; print(tensorrt.__version__)"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        return {"ran": False, "reason": "TensorRT is not installed here: " + (probe.stderr.strip().splitlines() or
                                                                            ["import tensorrt failed"])[-1]}
    if dry_run:
        return {"ran": False, "reason": f"dry run (TensorRT {probe.stdout.strip()} is installed)"}
    code = ("import sys; sys.path.insert(0, 'tools'); from tree_imports import use_working_tree; use_working_tree(); "
            "import pytest; sys.exit(pytest.main(['-q', '-m', 'tensorrt or gpu', 'tests/backends/test_tensorrt.py', "
            "'tests/test_build_validate.py']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    return {"ran": True, "tensorrt": probe.stdout.strip(), "returncode": done.returncode,
            "output_tail": (done.stdout + done.stderr)[-4000:]}


def environment(dry_run: bool) -> dict:
    from sparsecc.plugins.trt_offline import _bindings_version, plugin_layer_dir

    env = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine()}
    layer = plugin_layer_dir()
    env["tensorrt_plugin_layer"] = f"{layer} ({_bindings_version(layer)})" if layer else None
    for module in ("torch", "triton"):
        try:
            env[module] = __import__(module).__version__
        except ImportError:
            env[module] = None
    if not dry_run:
        import torch

        major, minor = torch.cuda.get_device_capability()
        env.update({"gpu": torch.cuda.get_device_name(), "capability": f"{major}{minor}", "cuda": torch.version.cuda})
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    return env


def gpu_missing_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return f"no CUDA GPU is visible to PyTorch {torch.__version__}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.json. Default: gpu_check_out")
    parser.add_argument("--dry-run", action="store_true", help="everything up to the CUDA calls (runs on a CPU)")
    parser.add_argument("--bench-budget-s", type=float, default=240.0, help="gpu_bench.py's time budget. Default: 240")
    parser.add_argument("--skip-bench", action="store_true", help="leave out step 3")
    args = parser.parse_args(argv)
    use_working_tree()
    from sparsecc.plugins.trt_offline import plugin_layer_missing_reason

    reason = None if args.dry_run else gpu_missing_reason()
    if reason:
        print(f"gpu_check: cannot run here: {reason}; `tools/gpu_check.sh --dry-run` checks everything up to the "
              "CUDA calls on a CPU. Nothing was measured or written.", file=sys.stderr)
        return 2
    layer_reason = plugin_layer_missing_reason()
    if layer_reason:
        print(f"gpu_check: {layer_reason}; or run tools/gpu_check.sh --prepare where a package index is reachable",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"dry_run": args.dry_run, "environment": environment(args.dry_run)}
    print("[1/4] environment\n" + json.dumps(report["environment"], indent=1), flush=True)
    arch = 90 if args.dry_run else int(report["environment"]["capability"])  # a dry run compiles for sm_90
    report["arch"] = arch
    print(f"[2/4] plugin kernels through TensorRT's plugin layer ({'dry run' if args.dry_run else 'CUDA driver'})")
    report["kernels"] = check_kernels(arch, args.dry_run)
    print("[3/4] gpu_bench.py" + (" (skipped)" if args.skip_bench else ""), flush=True)
    report["bench"] = {"ran": False, "reason": "--skip-bench"} if args.skip_bench else \
        run_bench(out, args.bench_budget_s, args.dry_run)
    print("[4/4] TensorRT tests", flush=True)
    report["tensorrt_tests"] = run_tensorrt_tests(out, args.dry_run)
    failed = [r["case"] for r in report["kernels"] if r.get("passed") is False]
    report.update({"failed": failed, "wall_s": round(time.perf_counter() - start, 1)})
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out / 'gpu_check.json'} in {report['wall_s']} s; kernel cases failed: {len(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
