"""Peak memory and time of ``sparsecc compile`` against model size.

Each compile runs as its own process (``sparsecc compile``); its peak RSS comes
from the kernel (``os.wait4``'s ru_maxrss for that child alone), its wall and
CPU time from the same call. The models:

- ``vgg16``: the zoo's VGG-16 (553 MB of weights), exported once with
  ``sparsecc zoo export vgg16`` (needs the torch extra);
- ``mlp-GB``: a synthetic transformer-style MLP stack (per block: MatMul
  d->4d, bias, Relu, MatMul 4d->d, bias, residual Add) with about GB gigabytes
  of float32 weights, built with onnx.helper and written with external data
  (streamed tensor by tensor, so building it needs no more memory than one
  weight).

The report gives, per (model, recipe): weight bytes, peak RSS, the ratio
peak/weights, wall and CPU seconds. Run the models one at a time on a shared
machine; the large ones last. ``--baseline-src DIR`` runs another source tree
of sparsecc (e.g. ``git archive`` of an older commit) the same way, interleaved
with this one, for before/after figures.

Usage::

    python tools/bench_scale.py --models vgg16 --recipes none groupwise-50
    python tools/bench_scale.py --models mlp-2.5 --recipes none --workdir /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build_mlp(path: Path, gigabytes: float, d_model: int = 4096, tokens: int = 16, seed: int = 0) -> int:
    """Write the synthetic MLP stack with external data; returns its weight bytes."""
    import onnx
    from onnx import TensorProto, helper

    hidden = 4 * d_model
    per_block = (2 * d_model * hidden + hidden + d_model) * 4
    blocks = max(1, round(gigabytes * 1e9 / per_block))
    rng = np.random.default_rng(seed)
    data_name = path.name + ".data"
    nodes, initializers = [], []
    offset = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / data_name, "wb") as data:
        def weight(name: str, shape: tuple[int, ...], scale: float) -> str:
            nonlocal offset
            values = (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)
            data.write(values.tobytes())
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(values.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += values.nbytes
            initializers.append(tensor)
            return name

        x = "x"
        for b in range(blocks):
            up = weight(f"block{b}.up.weight", (d_model, hidden), d_model ** -0.5)
            up_bias = weight(f"block{b}.up.bias", (hidden,), 0.01)
            down = weight(f"block{b}.down.weight", (hidden, d_model), hidden ** -0.5)
            down_bias = weight(f"block{b}.down.bias", (d_model,), 0.01)
            names = [f"block{b}/{n}" for n in ("up", "up_add", "act", "down", "down_add", "residual")]
            nodes += [helper.make_node("MatMul", [x, up], [names[0]], name=names[0]),
                      helper.make_node("Add", [names[0], up_bias], [names[1]], name=names[1]),
                      helper.make_node("Relu", [names[1]], [names[2]], name=names[2]),
                      helper.make_node("MatMul", [names[2], down], [names[3]], name=names[3]),
                      helper.make_node("Add", [names[3], down_bias], [names[4]], name=names[4]),
                      helper.make_node("Add", [x, names[4]], [names[5]], name=names[5])]
            x = names[5]
    graph = helper.make_graph(nodes, "mlp_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  [tokens, d_model])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [tokens, d_model])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())
    return offset


def weight_bytes(path: Path) -> int:
    """Bytes of the model's initializers, counted in a child process.

    Not in this process: a child's ``ru_maxrss`` starts from its parent's peak (Linux carries the
    high-water mark of the memory a child is forked with across ``exec``), so parsing a large model
    here would raise the peak every compile reports.
    """
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_scale; " \
           f"print(bench_scale._weight_bytes({str(path)!r}))"
    return int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


def _weight_bytes(path: str) -> int:
    """Bytes of the model's initializers (external data counted by its declared length)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    proto = onnx.load(path, load_external_data=False)
    total = 0
    for tensor in proto.graph.initializer:
        if uses_external_data(tensor):
            total += int({e.key: e.value for e in tensor.external_data}["length"])
        else:
            total += tensor.ByteSize()
    return total


def run_compile(model: Path, recipe: str, out: Path, source: str | None, threads_env: dict) -> dict:
    """One ``sparsecc compile`` in its own process: peak RSS, wall and CPU seconds, exit status."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, **threads_env)
    if source:
        env["PYTHONPATH"] = source + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "sparsecc.cli", "compile", str(model), "--recipe", recipe, "-o", str(out),
               "--json"]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        # run from the work folder: python -m puts the current folder first on sys.path
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err, cwd=out.parent)
        stdout = process.stdout.read()  # read while it runs (a full pipe would block it)
        _, status, usage = os.wait4(process.pid, 0)  # reaped with its own resource usage
        err.seek(0)
        stderr = err.read()
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    result = {"exit": process.returncode, "wall_s": round(wall, 2),
              "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    if process.returncode == 0:
        report = json.loads(stdout.decode())
        result["compile_seconds"] = report["summary"]["compile_seconds"]
        result["outputs"] = sorted(report["outputs"])
    else:
        result["error"] = stderr.decode().strip().splitlines()[-3:]
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vgg16"],
                        help="vgg16, mlp-GB (e.g. mlp-0.5, mlp-2.5), or paths of .onnx files. Default: vgg16")
    parser.add_argument("--recipes", nargs="+", default=["none"], help="recipes to compile with. Default: none")
    parser.add_argument("--workdir", default="bench-scale", help="models and outputs go here. Default: bench-scale")
    parser.add_argument("--baseline-src", help="also run this sparsecc source tree (PYTHONPATH), interleaved")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration. Default: 1")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    threads_env = {"OMP_NUM_THREADS": "2"}
    rows = []
    for name in args.models:
        model = _model(name, workdir)
        size = weight_bytes(model)
        for recipe in args.recipes:
            for repeat in range(args.repeats):
                for label, source in [("current", None)] + ([("baseline", args.baseline_src)]
                                                             if args.baseline_src else []):
                    result = run_compile(model, recipe, workdir / f"out-{label}", source, threads_env)
                    row = {"model": name, "recipe": recipe, "tree": label, "weight_mb": round(size / 2**20, 1),
                           "load": os.getloadavg()[0], **result}
                    row["rss_per_weight"] = round(result["peak_rss_mb"] / (size / 2**20), 2) if size else None
                    row["parent_peak_mb"] = _own_peak_mb()  # a child's figure cannot be below this (see weight_bytes)
                    rows.append(row)
                    print(json.dumps(row) if args.json else _line(row), flush=True)
    return 0 if all(r["exit"] == 0 for r in rows) else 1


def _own_peak_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _model(name: str, workdir: Path) -> Path:
    if name == "vgg16":
        path = workdir / "vgg16.onnx"
        if not path.exists():
            subprocess.run([sys.executable, "-m", "sparsecc.cli", "zoo", "export", "vgg16", "-o", str(path)],
                           check=True)
        return path
    if name.startswith("mlp-"):
        gigabytes = float(name[4:])
        path = workdir / f"mlp-{gigabytes:g}" / "model.onnx"
        if not path.exists():
            written = build_mlp(path, gigabytes)
            print(f"built {path}: {written / 1e9:.2f} GB of weights (external data)", flush=True)
        return path
    return Path(name)


def _line(row: dict) -> str:
    status = "ok" if row["exit"] == 0 else f"exit {row['exit']}: {' '.join(row.get('error', []))[:200]}"
    return (f"{row['model']:>10} {row['recipe']:>14} {row['tree']:>8}: weights {row['weight_mb']:8.1f} MB, "
            f"peak RSS {row['peak_rss_mb']:8.1f} MB ({row['rss_per_weight']}x), wall {row['wall_s']:6.1f} s, "
            f"cpu {row['cpu_s']:6.1f} s, load {row['load']:.1f} (this process's peak {row['parent_peak_mb']:.0f} MB); "
            f"{status}")


if __name__ == "__main__":
    sys.exit(main())
