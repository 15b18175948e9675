"""Verification of graphs holding sparsecc-domain nodes: run through their numpy references."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from graphs import init, make_model, randn
from onnx import helper

from sparsecc.errors import UnsupportedModelError, VerificationError
from sparsecc.model import model_from_proto
from sparsecc.passmanager import Pass, PassContext, PassManager, PassResult
from sparsecc.plugins.ops import PluginAttributeError
from sparsecc.plugins.references import DOMAIN, OpSignature, register_reference, unregister_reference
from sparsecc.verify import VerifyConfig, compare_models, input_specs, verification_backend

OP = "TestScaledRelu"


class LowerReluToPlugin(Pass):
    """A stand-in for lower-tensorrt: every Relu becomes a sparsecc-domain plugin node (exact)."""

    name = "test-lower-relu"
    exact = True

    def __init__(self, op: str = OP):
        self.op = op

    def run(self, ctx: PassContext) -> PassResult:
        count = 0
        for node in ctx.model.graph.nodes:
            if node.op == "Relu":
                node.op, node.domain = self.op, DOMAIN
                node.attrs = {"scale": 1.0, "mode": "relu"}
                count += 1
        return PassResult(count > 0, count)


@pytest.fixture
def reference():
    calls = []

    def scaled_relu(x, scale, mode):
        assert mode == "relu"  # string attributes arrive as str
        calls.append(x.shape)
        return (np.maximum(x, 0) * scale).astype(x.dtype)

    register_reference(OP, OpSignature(("x",), ("y",), {"scale": float, "mode": str}))(scaled_relu)
    yield calls
    unregister_reference(OP)


def _model():
    nodes = [helper.make_node("Conv", ["x", "W"], ["a"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "M"], ["y"], name="mm")]
    return model_from_proto(make_model(nodes, [("x", [1, 2, 4, 4])], [("y", [1, 3, 4, 5])],
                                       [init("W", randn(3, 2, 3, 3)), init("M", randn(4, 5))]))


def test_pass_manager_verifies_a_graph_with_a_plugin_node(reference):
    ctx = PassContext(_model())
    record = PassManager([LowerReluToPlugin()]).run(ctx).records[0]
    assert record.status == "ran" and record.verification["passed"]
    assert record.verification["backend"] in ("ort-references", "onnx-reference")
    assert reference, "the numpy reference was not called"
    assert [n.domain for n in ctx.model.graph.nodes if n.op == OP] == [DOMAIN]


def test_both_reference_backends_agree_with_the_plain_graph(reference):
    plain = _model()
    lowered = plain.copy()
    LowerReluToPlugin().run(PassContext(lowered))
    assert verification_backend(plain) == "onnxruntime" and verification_backend(plain, lowered) != "onnxruntime"
    for backend in ("ort-references", "onnx-reference"):
        result = compare_models(plain, lowered, input_specs(plain), VerifyConfig(iterations=2), backend)
        assert result.passed and result.backend == backend and result.worst.relative_error < 1e-6


def test_a_wrong_plugin_lowering_fails_verification(reference):
    signature = OpSignature(("x",), ("y",), {"scale": float, "mode": str})
    register_reference("TestWrongRelu", signature)(lambda x, **_: np.abs(x))
    try:
        with pytest.raises(VerificationError, match="claims to be exact"):
            PassManager([LowerReluToPlugin("TestWrongRelu")]).run(PassContext(_model()))
    finally:
        unregister_reference("TestWrongRelu")


def test_a_node_that_does_not_fit_its_ops_signature_never_reaches_the_reference():
    calls = []
    register_reference("TestNoAttributes", OpSignature(("x",), ("y",)))(lambda x: calls.append(x) or x)
    try:
        with pytest.raises(PluginAttributeError, match="node 'relu'.*unexpected attribute 'scale'"):
            PassManager([LowerReluToPlugin("TestNoAttributes")]).run(PassContext(_model()))
    finally:
        unregister_reference("TestNoAttributes")
    assert calls == []


def test_a_plugin_node_without_reference_is_a_clear_error():
    with pytest.raises(UnsupportedModelError, match="no registered numpy reference"):
        PassManager([LowerReluToPlugin("TestNoReference")]).run(PassContext(_model()))
