"""Tiny ONNX graphs built in code, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsecc.model import clamp_ir_version

RNG = np.random.default_rng(1234)


def init(name: str, values: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values), name)


def randn(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 13) -> onnx.ModelProto:
    """inputs/outputs: (name, shape) pairs, float32; shapes may hold strings for dynamic dims."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    clamp_ir_version(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def conv_bn_relu_fc(batch="N", bias: bool = False, opset: int = 13) -> onnx.ModelProto:
    """x[N,4,6,6] -> Conv(8, 3x3, pad 1) -> BN -> Relu -> Flatten -> MatMul(288x10) -> y."""
    conv_inputs = ["x", "W"] + (["B"] if bias else [])
    inits = [init("W", randn(8, 4, 3, 3)), init("gamma", RNG.random(8).astype(np.float32) + 0.5),
             init("beta", randn(8)), init("mean", randn(8)), init("var", RNG.random(8).astype(np.float32) + 0.5),
             init("Wfc", randn(288, 10, scale=0.1))]
    if bias:
        inits.append(init("B", randn(8)))
    nodes = [helper.make_node("Conv", conv_inputs, ["c"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], name="bn0"),
             helper.make_node("Relu", ["bn"], ["r"], name="relu0"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten0"),
             helper.make_node("MatMul", ["f", "Wfc"], ["y"], name="fc")]
    return make_model(nodes, [("x", [batch, 4, 6, 6])], [("y", [batch, 10])], inits, opset)
