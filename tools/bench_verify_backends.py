"""Which backend should verify graphs that hold sparsecc-domain nodes? Measured here.

For each model, every Relu is replaced by a ``sparsecc::BenchRelu`` node whose numpy reference is
``np.maximum(x, 0)`` (a stand-in for a plugin node), and the graph is verified the way the pass
manager does it: build a session, run it on seeded random inputs. Timed: host wall-clock of
load + one run (what verification pays), median of ``--runs``, for

- ``ort-references``: ONNX Runtime CPU + onnxruntime-extensions Python custom ops,
- ``onnx-reference``: onnx.reference.ReferenceEvaluator with the reference as a custom op,
- ``ort (plain graph)``: the original graph on ONNX Runtime, the cost without custom nodes.

Outputs of both custom-op backends are checked against the plain graph on ONNX Runtime.

    python tools/bench_verify_backends.py [--runs 3] [--threads 2] [MODEL.onnx ...]

Without models it uses the zoo's trained checkpoints (1x1x32x32) and ResNet-18 at 1x3x224x224.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx

from sparsecc.backends.ort import OrtBackend
from sparsecc.backends.reference_ops import OnnxReferenceBackend, OrtReferencesBackend
from sparsecc.plugins.references import DOMAIN, OpSignature, register_reference, unregister_reference


def with_custom_relus(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    count = 0
    for node in model.graph.node:
        if node.op_type == "Relu":
            node.op_type, node.domain = "BenchRelu", DOMAIN
            count += 1
    model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    return model, count


def load_models(paths: list[str]) -> list[tuple[str, onnx.ModelProto]]:
    if paths:
        return [(p, onnx.load(p)) for p in paths]
    from sparsecc import zoo

    import sparsecc.models as models_pkg
    from pathlib import Path

    folder = Path(models_pkg.__file__).parent / "checkpoints"
    found = [(p.stem, onnx.load(str(p))) for p in sorted(folder.glob("*.onnx"))]
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            zoo.export_onnx("resnet18", f"{tmp}/r18.onnx")
            found.append(("resnet18 1x3x224x224", onnx.load(f"{tmp}/r18.onnx")))
    except Exception as exc:  # the torch extra is optional
        print(f"(resnet18 left out: {exc})")
    return found


def time_backend(backend, data: bytes, feed: dict, runs: int) -> tuple[float, dict]:
    times, outputs = [], None
    for _ in range(runs):
        start = time.perf_counter()
        outputs = backend.load(data).run(feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    register_reference("BenchRelu", OpSignature(("x",), ("y",)))(lambda x: np.maximum(x, 0).astype(x.dtype))
    try:
        print(f"{'model':28} {'relus':>5} {'ort plain ms':>13} {'ort-references ms':>18} {'onnx-reference ms':>18} "
              f"{'max diff (ort-ref, onnx-ref)':>30}")
        for name, proto in load_models(args.models):
            custom, count = with_custom_relus(proto)
            shape = [d.dim_value or 1 for d in proto.graph.input[0].type.tensor_type.shape.dim]
            feed = {proto.graph.input[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
            plain_ms, plain = time_backend(OrtBackend(threads=args.threads), proto.SerializeToString(), feed, args.runs)
            data = custom.SerializeToString()
            ort_ms, ort_out = time_backend(OrtReferencesBackend(threads=args.threads), data, feed, args.runs)
            ref_ms, ref_out = time_backend(OnnxReferenceBackend(), data, feed, args.runs)
            diffs = [max(float(np.abs(out[k] - plain[k]).max()) for k in plain) for out in (ort_out, ref_out)]
            print(f"{name:28} {count:>5} {plain_ms:>13.1f} {ort_ms:>18.1f} {ref_ms:>18.1f} "
                  f"{diffs[0]:>14.2g} {diffs[1]:>14.2g}")
    finally:
        unregister_reference("BenchRelu")


if __name__ == "__main__":
    main()
