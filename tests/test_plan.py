"""The sparsity plan: serialisation, validation, layer selection, detection of existing zeros."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import conv_bn_relu_fc, init, make_model, randn
from onnx import helper

from sparsecc.errors import OptionError, PlanError
from sparsecc.layers import analyse_layers
from sparsecc.model import model_from_proto
from sparsecc.passmanager import PassContext, PassManager, make_pass
from sparsecc.plan import LayerSelector, SparsityPlan, WeightPlan, apply_plan
from sparsecc.sparsity.detect import detect_conv, detect_gemm


def test_plan_round_trip(tmp_path):
    mask = np.random.default_rng(0).random((8, 4, 3, 3)) > 0.5
    plan = SparsityPlan(source="test")
    plan.add(WeightPlan("W", "conv0", "element-wise", mask, criterion="l1", ratio=0.5, details={"a": 1}))
    json_path, npz_path = plan.save(tmp_path / "plan.json")
    assert npz_path.exists()
    loaded = SparsityPlan.load(json_path)
    entry = loaded.entries["W"]
    assert np.array_equal(entry.mask, mask) and entry.ratio == 0.5 and entry.details == {"a": 1}


def test_plan_that_does_not_fit_is_refused():
    model = model_from_proto(conv_bn_relu_fc(batch=1))
    plan = SparsityPlan()
    plan.add(WeightPlan("W", "conv0", "group-wise", np.ones((8, 4, 3, 1), bool)))
    with pytest.raises(PlanError, match=r"shape \[8, 4, 3, 1\] but the weight has shape \[8, 4, 3, 3\]"):
        apply_plan(model, plan)
    plan = SparsityPlan()
    plan.add(WeightPlan("missing", "conv0", "group-wise", np.ones((1,), bool)))
    with pytest.raises(PlanError, match="not a constant"):
        plan.validate(model)


def _three_layers():
    nodes = [helper.make_node("Conv", ["x", "W0"], ["a"], name="first"),
             helper.make_node("Conv", ["a", "W1"], ["b"], name="middle"),
             helper.make_node("Conv", ["b", "W2"], ["y"], name="last")]
    inits = [init(f"W{i}", randn(4, 4, 1, 1)) for i in range(3)]
    return model_from_proto(make_model(nodes, [("x", [1, 4, 2, 2])], [("y", [1, 4, 2, 2])], inits))


def test_selector_defaults_exclude_first_and_last():
    layers, _ = analyse_layers(_three_layers())
    selected, left_out = LayerSelector().select(layers)
    assert [layer.node for layer in selected] == ["middle"]
    assert [name for name, _ in left_out] == ["first", "last"]
    selected, _ = LayerSelector(regex="^(first|last)$", exclude_first_last=False).select(layers)
    assert [layer.node for layer in selected] == ["first", "last"]


def test_selector_errors():
    layers, _ = analyse_layers(_three_layers())
    with pytest.raises(OptionError, match="selects none of the model.s"):
        LayerSelector(kinds=["gemm"]).select(layers)
    with pytest.raises(OptionError, match="not weight layers"):
        LayerSelector(names=["nope"]).select(layers)
    with pytest.raises(OptionError, match="unknown layer selector"):
        LayerSelector.from_options({"layer": "x"})


def test_shared_initializer_is_refused_when_named_and_left_out_otherwise():
    nodes = [helper.make_node("Conv", ["x", "W"], ["a"], name="c1"),
             helper.make_node("Conv", ["a", "W"], ["y"], name="c2")]
    model = model_from_proto(make_model(nodes, [("x", [1, 4, 2, 2])], [("y", [1, 4, 2, 2])],
                                        [init("W", randn(4, 4, 1, 1))]))
    layers, _ = analyse_layers(model)
    with pytest.raises(OptionError, match=r"selects none .*shared with"):  # both left out, with the reason
        LayerSelector(exclude_first_last=False).select(layers)
    with pytest.raises(PlanError, match=r"shared with \['c2'\]"):
        LayerSelector(names=["c1"]).select(layers)


def test_detect_patterns():
    weight = randn(8, 8, 3, 3)
    weight[:, 2, 1, 1] = 0
    assert detect_conv(weight).pattern == "group-wise"
    weight = randn(8, 8, 3, 3)
    weight[3] = 0
    assert detect_conv(weight).pattern == "filter"
    weight = randn(8, 8, 1, 1)
    weight[:, 0::4] = 0
    weight[:, 1::4] = 0
    weight[0, 0::4], weight[0, 1::4] = 1.0, 1.0  # output 0 keeps channels 0,1 of each 4 instead:
    weight[0, 2::4], weight[0, 3::4] = 0.0, 0.0  # still 2:4, but no longer whole zero rows
    found = detect_conv(weight)
    assert found.pattern == "2:4" and found.structures["group-wise"] < 1
    depthwise = randn(8, 1, 3, 3)
    depthwise[:, 0, 0, 0] = 0
    assert detect_conv(depthwise, group=8).pattern == "depthwise-taps"
    assert detect_gemm(randn(16, 4)).pattern == "dense"
    element = randn(16, 4)
    element[3, 1] = 0
    assert detect_gemm(element).pattern == "element-wise"


def test_plan_from_zeros_then_apply_plan_keeps_function():
    proto = conv_bn_relu_fc(batch=1)
    weight = np.frombuffer(proto.graph.initializer[-1].raw_data, np.float32).reshape(288, 10).copy()
    weight[::3] = 0
    proto.graph.initializer[-1].raw_data = weight.tobytes()
    ctx = PassContext(model_from_proto(proto))
    records = PassManager([make_pass("plan-from-zeros"), make_pass("apply-plan")]).run(ctx).records
    assert ctx.plan.entries["Wfc"].pattern == "group-wise"
    # the pruned weights are zero already: apply-plan changes nothing, says so, and costs no verification
    assert records[1].status == "unchanged" and records[1].result.rewrites == 0 and records[1].verification is None


def _entry(name, mask, pattern="filter"):
    from sparsecc.plan import WeightPlan

    return WeightPlan(name, f"layer_{name}", pattern, np.asarray(mask, bool))


@pytest.mark.parametrize("policy, expected", [("intersect", [True, False, False, False]),
                                              ("keep", [True, True, False, False]),
                                              ("replace", [True, False, True, False])])
def test_plan_merge_policies(policy, expected):
    from sparsecc.plan import SparsityPlan

    plan = SparsityPlan({"W": _entry("W", [1, 1, 0, 0], "2:4")})
    other = SparsityPlan({"W": _entry("W", [1, 0, 1, 0]), "V": _entry("V", [0, 1])})
    assert plan.merge(other, policy) == ["W"]
    assert plan.entries["W"].mask.tolist() == expected and "V" in plan.entries
    if policy == "intersect":
        assert plan.entries["W"].pattern == "filter" and plan.entries["W"].details["combined_with"] == "2:4"


def test_plan_merge_refuses_conflicts_and_bad_shapes():
    from sparsecc.plan import SparsityPlan

    plan = SparsityPlan({"W": _entry("W", [1, 1])})
    with pytest.raises(PlanError, match="planned twice: \\['W'\\]"):
        plan.merge(SparsityPlan({"W": _entry("W", [1, 0])}), "refuse")
    with pytest.raises(PlanError, match="shapes"):
        plan.merge(SparsityPlan({"W": _entry("W", [1, 0, 1])}), "intersect")
    assert plan.merge(SparsityPlan({"U": _entry("U", [1])}), "refuse") == [] and "U" in plan.entries
    assert plan.invalidate({"W", "nope"}) == ["W"] and list(plan.entries) == ["U"]
