"""A graph holding a sparsecc plugin node is verified on the CPU through the plugin's numpy reference.

This joins the two halves: the plugins register their references (sparsecc.plugins), and the
verification backends run sparsecc-domain nodes through whatever is registered (sparsecc.verify).
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import sparsecc.plugins  # noqa: F401  (registers the references)
from sparsecc.model import model_from_proto
from sparsecc.plugins.ops import GROUPWISE_CONV, NAMESPACE, check_plugin_node, plugin_node_attributes
from sparsecc.verify import VerifyConfig, compare_models, input_specs, verification_backend

C_IN, C_OUT, K = 6, 5, 3
CONV_ATTRS = dict(kernel_shape=[K, K], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1])


def _pruned_weight(seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((C_OUT, C_IN, K, K)).astype(np.float32)
    rows = weight.reshape(C_OUT, -1)
    pruned = rng.choice(rows.shape[1], size=rows.shape[1] // 2, replace=False)
    rows[:, pruned] = 0.0  # whole im2col rows: the group-wise pattern
    return rows.reshape(weight.shape), np.sort(np.setdiff1d(np.arange(rows.shape[1]), pruned))


def _conv_model(weight, bias):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C_IN, 7, 9])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C_OUT, 7, 9])
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **CONV_ATTRS)
    graph = helper.make_graph([node], "dense", [x], [y],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _plugin_model(weight, kept, bias):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C_IN, 7, 9])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C_OUT, 7, 9])
    wk = weight.reshape(C_OUT, -1)[:, kept]
    node = helper.make_node(GROUPWISE_CONV, ["x", "wk", "kept", "b"], ["y"], name="gw", domain=NAMESPACE,
                            **plugin_node_attributes(GROUPWISE_CONV, **CONV_ATTRS))
    inits = [numpy_helper.from_array(np.ascontiguousarray(wk), "wk"),
             numpy_helper.from_array(kept.astype(np.int32), "kept"), numpy_helper.from_array(bias, "b")]
    graph = helper.make_graph([node], "plugin", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(NAMESPACE, 1)])


def test_plugin_node_is_verified_against_the_dense_conv_through_its_reference():
    weight, kept = _pruned_weight()
    bias = np.linspace(-1, 1, C_OUT).astype(np.float32)
    dense = model_from_proto(_conv_model(weight, bias))
    plugin_proto = _plugin_model(weight, kept, bias)
    assert check_plugin_node(plugin_proto.graph.node[0]) == []
    lowered = model_from_proto(plugin_proto)
    assert verification_backend(dense, lowered) != "onnxruntime"
    result = compare_models(dense, lowered, input_specs(dense), VerifyConfig(atol=1e-5, rtol=1e-4))
    assert result.passed, result.describe_worst()
    assert result.worst.max_abs_reference > 0.1  # the outputs are not trivially zero


def test_a_wrong_plugin_weight_fails_verification():
    weight, kept = _pruned_weight()
    bias = np.zeros(C_OUT, np.float32)
    dense = model_from_proto(_conv_model(weight, bias))
    wrong = weight.copy()
    wrong.reshape(C_OUT, -1)[0, kept[0]] += 1.0
    lowered = model_from_proto(_plugin_model(wrong, kept, bias))
    result = compare_models(dense, lowered, input_specs(dense), VerifyConfig(atol=1e-5, rtol=1e-4))
    assert not result.passed
    assert result.worst.name == "y"
