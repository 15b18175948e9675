"""Layer recognition and classification, and MAC counts."""

from __future__ import annotations

import numpy as np
from graphs import init, make_model, randn
from onnx import helper

from sparsecc.layers import analyse_layers
from sparsecc.model import model_from_proto


def _conv(name, x, w, out, **attrs):
    return helper.make_node("Conv", [x, w], [out], name=name, **attrs)


def test_conv_kinds_and_macs():
    nodes = [_conv("std", "x", "W0", "a", pads=[1, 1, 1, 1]),
             _conv("dw", "a", "W1", "b", group=8, pads=[1, 1, 1, 1]),
             _conv("pw", "b", "W2", "c"),
             _conv("grp", "c", "W3", "d", group=2, pads=[1, 1, 1, 1], strides=[2, 2])]
    inits = [init("W0", randn(8, 4, 3, 3)), init("W1", randn(8, 1, 3, 3)), init("W2", randn(16, 8, 1, 1)),
             init("W3", randn(8, 8, 3, 3))]
    model = model_from_proto(make_model(nodes, [("x", [1, 4, 10, 10])], [("d", [1, 8, 5, 5])], inits))
    layers, unsupported = analyse_layers(model)
    assert [(layer.node, layer.kind) for layer in layers] == [
        ("std", "conv"), ("dw", "depthwise"), ("pw", "pointwise"), ("grp", "grouped")]
    assert unsupported == []
    macs = [layer.macs for layer in layers]
    assert macs == [8 * 100 * 4 * 9, 8 * 100 * 9, 16 * 100 * 8, 8 * 25 * 8 * 9]
    assert [(layer.k, layer.n) for layer in layers] == [(36, 8), (9, 1), (8, 16), (72, 4)]


def test_gemm_matmul_and_non_weights():
    nodes = [helper.make_node("Gemm", ["x", "Wg", "bg"], ["g"], transB=1, name="gemm_t"),
             helper.make_node("MatMul", ["g", "Wm"], ["m"], name="mm"),
             helper.make_node("Transpose", ["m"], ["m_t"], name="tr"),
             helper.make_node("MatMul", ["m", "m_t"], ["s"], name="attn"),  # two activations
             helper.make_node("MatMul", ["Wl", "s"], ["y"], name="left")]
    inits = [init("Wg", randn(6, 4)), init("bg", randn(6)), init("Wm", randn(6, 5)), init("Wl", randn(3, 2))]
    model = model_from_proto(make_model(nodes, [("x", [2, 4])], [("y", [3, 2])], inits))
    layers, unsupported = analyse_layers(model)
    assert [(layer.node, layer.kind, layer.k, layer.n, layer.macs) for layer in layers] == [
        ("gemm_t", "gemm", 4, 6, 2 * 4 * 6), ("mm", "matmul", 6, 5, 2 * 6 * 5)]
    assert [(u.node, "left operand" in u.reason) for u in unsupported] == [("left", True)]


def test_non_constant_weight_and_shared_weight_are_reported():
    nodes = [_conv("dyn", "x", "w_in", "a"), _conv("c1", "a", "W", "b"), _conv("c2", "b", "W", "y")]
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", 1, [1, 2, 4, 4]),
                     helper.make_tensor_value_info("w_in", 1, [2, 2, 1, 1])],
        [helper.make_tensor_value_info("y", 1, [1, 2, 4, 4])], [init("W", randn(2, 2, 1, 1))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    layers, unsupported = analyse_layers(model_from_proto(proto))
    assert [(u.node, "graph input 'w_in'" in u.reason) for u in unsupported] == [("dyn", True)]
    assert {layer.node: layer.shared_with for layer in layers} == {"c1": ["c2"], "c2": ["c1"]}
    assert np.prod(layers[0].weight_shape) == 4
