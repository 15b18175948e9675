"""Group-wise through sparsecc itself: a one-layer ONNX model planned, masked and rewritten, on ONNX Runtime."""

from __future__ import annotations

import numpy as np

from sparsecc.study.config import StudyConfig
from sparsecc.study.shapes import GemmShape
from sparsecc.study.variants import Variant

NODE_NAME = "layer"


def one_layer_model(shape: GemmShape, weight: np.ndarray):
    """A one-node ONNX model of the layer (Conv with batch 1, or MatMul [M, K] x [K, N]) as a sparsecc Model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sparsecc.model import clamp_ir_version, model_from_proto

    if shape.conv is not None:
        geo = shape.conv
        x_shape, y_shape = [1, geo.c_in, geo.size, geo.size], [1, geo.c_out, geo.out_size, geo.out_size]
        node = helper.make_node("Conv", ["x", "w"], ["y"], name=NODE_NAME, kernel_shape=[geo.kernel] * 2,
                                strides=[geo.stride] * 2, pads=[geo.padding] * 4)
    else:
        x_shape, y_shape = [shape.m, shape.k], [shape.m, shape.n]
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name=NODE_NAME)
    graph = helper.make_graph([node], shape.label.replace(" ", "_"),
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(weight, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    clamp_ir_version(proto)
    onnx.checker.check_model(proto)
    return model_from_proto(proto, source=f"characterize: {shape.label}")


def paper_lowering(shape: GemmShape) -> str:
    """The groupwise-rewrite lowering that is the paper's formulation for this layer.

    A MatMul (or 1x1 conv) group is one input feature (channel), so dropping the pruned ones is
    ``channel-gather``; a larger conv needs the im2col rows (``tap-gather``: each kept channel plane
    copied once per kept tap, shifted into place by a one-hot depthwise Conv).
    """
    return "tap-gather" if shape.conv is not None and shape.conv.kernel > 1 else "channel-gather"


def groupwise_rewrite(shape: GemmShape, model, keep: float, criterion: str, lowering: str, threads: int):
    """Plan, mask and rewrite a one-layer model with sparsecc's group-wise passes (verified by the manager).

    Args:
        shape: The layer.
        model: Its one-layer model (see :func:`one_layer_model`).
        keep: Share of the groups kept.
        criterion: Group-wise criterion.
        lowering: "always" (the paper's lowering, see :func:`paper_lowering`) or "auto"
            (sparsecc's cost model picks, and keeps the layer dense where nothing is faster).
        threads: ONNX Runtime threads of the cost model's measurements.

    Returns:
        (rewritten model, K' kept rows, note saying which lowering ran and why, True if it was lowered).
    """
    from sparsecc.passmanager import PassContext, PassManager, make_pass

    ctx = PassContext(model.copy())
    forced = paper_lowering(shape) if lowering == "always" else "auto"
    # Planning and masking change the function on purpose: nothing to verify. The rewrite is exact,
    # and the manager verifies it against the masked model on ONNX Runtime.
    PassManager([make_pass("plan-groupwise", keep=keep, criterion=criterion, layers={"names": [NODE_NAME]}),
                 make_pass("apply-plan")], verify=None).run(ctx)
    records = PassManager([make_pass("groupwise-rewrite", lowering=forced, threads=threads)]).run(ctx).records
    entry = ctx.applied_plans[-1].entries["w"]
    k_kept = int(entry.details["kept_groups"])
    info = records[-1].result.details.get("layers", {}).get(NODE_NAME, {})
    chosen = info.get("lowering", "dense")
    note = f"{chosen}: {info.get('reason', 'no reason given')}"
    return ctx.model, k_kept, note, chosen != "dense"


def ort_variants(shape: GemmShape, weight: np.ndarray, keep: float, config: StudyConfig, dense_bytes: bytes,
                  rng: np.random.Generator) -> list[Variant]:
    from sparsecc.backends.ort import OrtBackend

    model = one_layer_model(shape, weight)
    rewritten, k_kept, note, lowered = groupwise_rewrite(shape, model, keep, config.criterion, config.ort_lowering,
                                                         config.threads)
    backend = OrtBackend(threads=config.threads)
    x_shape = model.static_input_shapes()["x"]
    feeds = {"x": rng.standard_normal(x_shape, dtype=np.float32)}
    dense, pruned = backend.load(dense_bytes), backend.load(rewritten.to_bytes())
    k_run = k_kept if lowered else shape.k  # a layer kept dense still multiplies its zeros
    return [Variant("dense", "ort", lambda: dense.run(feeds), weight.size, shape.macs, note="dense model"),
            Variant("group-wise", "ort", lambda: pruned.run(feeds), k_run * shape.n, shape.m * k_run * shape.n,
                     k_kept, note)]
