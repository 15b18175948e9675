"""The lowering toolkit: an added lowering in one file, costs of any lowering, FP16 constants."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from graphs import init, make_model, randn
from onnx import TensorProto, helper

from sparsecc.lowering import (AnalyticCost, Candidate, Emitter, LayerToLower, Lowering, analytic_seconds,
                               emit_gemm, get_lowering, lowerings, register_lowering, unregister_lowering)
from sparsecc.model import clamp_ir_version, model_from_proto
from sparsecc.passmanager import PassContext, PassManager, make_pass

ALL = {"layers": {"exclude_first_last": False}}


def _slice_features(layer: LayerToLower) -> Candidate | str:
    """A MatMul whose kept input features form one range reads them with a Slice (no Gather)."""
    if layer.node.op != "MatMul":
        return "only MatMul"
    used = np.flatnonzero(np.any(layer.weight != 0, axis=1))
    start, stop = int(used[0]), int(used[-1]) + 1
    if stop - start != used.size:
        return f"kept features are not one range ({used.size} of {start}..{stop})"
    small = layer.weight[start:stop]

    def emit(em: Emitter, x: gs.Tensor, y: gs.Tensor) -> None:
        part = em.var("features")
        em.node("Slice", [x, em.ints("starts", [start]), em.ints("ends", [stop]), em.ints("axes", [-1])], [part],
                "slice")
        emit_gemm(em, part, y, layer.node, small)

    rows = int(np.prod(layer.in_shape[:-1]))
    return Candidate("", emit, rows * small.shape[0] * small.shape[1], rows * small.shape[0], 2)


@pytest.fixture
def slice_lowering():
    lowering = register_lowering(Lowering("test-slice-features", "groupwise", frozenset({"MatMul"}),
                                          _slice_features, 19e-12, "test: Slice of a kept feature range"))
    yield lowering
    unregister_lowering("test-slice-features")
    assert get_lowering("test-slice-features") is None


def _matmul(weight: np.ndarray):
    proto = make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], [("x", [3, weight.shape[0]])],
                       [("y", [3, weight.shape[1]])], [init("W", weight)])
    return model_from_proto(proto)


def test_a_lowering_added_in_one_file_is_used_by_groupwise_rewrite(slice_lowering):
    assert slice_lowering in lowerings("groupwise", "MatMul")
    weight = randn(16, 5)
    weight[:4] = 0.0
    weight[12:] = 0.0  # kept features 4..11: one range
    ctx = PassContext(_matmul(weight))
    passes = [make_pass("plan-from-zeros"), make_pass("apply-plan"),
              make_pass("groupwise-rewrite", lowering="test-slice-features")]
    records = {r.name: r for r in PassManager(passes).run(ctx).records}  # the manager verifies the rewrite
    rewrite = records["groupwise-rewrite"]
    assert rewrite.status == "ran" and rewrite.verification["passed"]
    assert sorted(n.op for n in ctx.model.graph.nodes) == ["MatMul", "Slice"]
    assert next(n for n in ctx.model.graph.nodes if n.op == "MatMul").inputs[1].values.shape == (8, 5)
    info = rewrite.result.details["layers"]["fc"]
    assert info["lowering"] == "test-slice-features" and set(info["macs"]) >= {"dense", "test-slice-features"}


def test_an_added_lowering_that_does_not_apply_says_why(slice_lowering):
    weight = randn(16, 5)
    weight[[1, 7]] = 0.0  # two holes: not one range
    ctx = PassContext(_matmul(weight))
    passes = [make_pass("plan-from-zeros"), make_pass("apply-plan"),
              make_pass("groupwise-rewrite", lowering="test-slice-features")]
    rewrite = PassManager(passes).run(ctx).records[-1]
    info = rewrite.result.details["layers"]["fc"]
    assert info["lowering"] == "dense"
    assert "not one range" in info["reason"] and "not one range" in info["not_applicable"]["test-slice-features"]
    assert [s.layer for s in rewrite.result.skipped] == ["fc"]


def test_analytic_cost_prices_any_lowering():
    unknown = Candidate("never-registered", lambda *a: None, macs=1000, copied=10, nodes=2, s_per_mac=30e-12)
    assert analytic_seconds(unknown) == pytest.approx(1000 * 30e-12 + 10 * 0.8e-9 + 2 * 15e-6)
    AnalyticCost().time([unknown], "Conv", None, None)
    assert unknown.source == "analytic" and unknown.seconds > 0


def test_forcing_an_unregistered_lowering_is_an_option_error():
    from sparsecc.errors import OptionError

    with pytest.raises(OptionError, match="unknown lowering 'test-slice-features'"):
        make_pass("groupwise-rewrite", lowering="test-slice-features")


def test_emitter_constants_take_the_graph_dtype():
    graph = gs.Graph(opset=17)
    em = Emitter(graph, "layer", "test-pass", np.float16)
    assert em.const("w", np.ones((2, 2), np.float32)).values.dtype == np.float16
    assert em.ints("idx", [0, 2]).values.dtype == np.int64
    assert em.var("v").dtype == np.float16
    node = em.node("Relu", [em.var("a")], [em.var("b")], "relu")
    assert node.name == "test-pass/layer/relu"


@pytest.mark.parametrize("lowering", ["tap-gather", "channel-gather"])
def test_fp16_conv_is_lowered_with_fp16_constants(lowering):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 8, 3, 3)).astype(np.float16)
    weight[:, 2:4] = 0  # two whole input channels pruned: channel-gather applies
    weight[:, :, 0, 0] = 0
    bias = rng.standard_normal(8).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[1, 1, 1, 1])], "fp16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 8, 6, 6])], [init("W", weight), init("B", bias)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    clamp_ir_version(proto)
    ctx = PassContext(model_from_proto(proto))
    passes = [make_pass("plan-from-zeros"), make_pass("apply-plan"),
              make_pass("groupwise-rewrite", lowering=lowering, cost_model="analytic")]
    from sparsecc.verify import VerifyConfig

    rewrite = PassManager(passes, verify=VerifyConfig(atol=1e-2, rtol=1e-2)).run(ctx).records[-1]
    assert rewrite.status == "ran" and rewrite.verification["passed"]
    floats = [t for t in ctx.model.graph.tensors().values()
              if isinstance(t, gs.Constant) and np.issubdtype(t.values.dtype, np.floating)]
    assert floats and all(t.values.dtype == np.float16 for t in floats)
