"""plan-groupwise and groupwise-rewrite: every lowering checked on ONNX Runtime against the masked model."""

from __future__ import annotations

import numpy as np
import pytest
from evidence import FASTER, SLOWER, STRADDLES, evidence
from graphs import init, make_model, randn
from onnx import helper

from sparsecc.backends.ort import OrtBackend
from sparsecc.errors import OptionError, PlanError, UnsupportedModelError
from sparsecc.model import model_from_proto
from sparsecc.lowering.gather import tap_rows
from sparsecc.passmanager import PassContext, PassManager, make_pass
from sparsecc.recipe import load_recipe, parse_recipe

TOLERANCE = 1e-4  # max |rewritten - masked| <= TOLERANCE * max |masked|


def _compile(proto, plan_options, rewrite_options):
    """Run plan-groupwise, apply-plan and groupwise-rewrite through the PassManager (which verifies)."""
    model = model_from_proto(proto)
    ctx = PassContext(model)
    passes = [make_pass("plan-groupwise", **plan_options), make_pass("apply-plan"),
              make_pass("groupwise-rewrite", **rewrite_options)]
    records = {r.name: r for r in PassManager(passes).run(ctx).records}
    return ctx, records


def _assert_same(ctx, seed=3):
    masked, rewritten = ctx.masked, ctx.model
    backend = OrtBackend(threads=1)
    a, b = backend.load(masked.to_bytes()), backend.load(rewritten.to_bytes())
    rng = np.random.default_rng(seed)
    for _ in range(2):
        feeds = {s.name: rng.standard_normal(masked.input_shapes[s.name]).astype(np.float32) for s in a.inputs}
        ref, out = a.run(feeds), b.run(feeds)
        for name in ref:
            scale = float(np.abs(ref[name]).max())
            assert scale > 0
            assert float(np.abs(ref[name] - out[name]).max()) <= TOLERANCE * scale


def _ops(model):
    return sorted(n.op for n in model.graph.nodes)


def _conv_model(c_in=8, c_out=6, size=9, kernel=3, bias=True, group=1, **attrs):
    """x -> conv (the layer under test) -> y, one Conv only."""
    inputs = ["x", "W"] + (["B"] if bias else [])
    inits = [init("W", randn(c_out, c_in // group, kernel, kernel))] + ([init("B", randn(c_out))] if bias else [])
    node = helper.make_node("Conv", inputs, ["y"], name="conv", group=group, **attrs)
    return make_model([node], [("x", [2, c_in, size, size])], [("y", [2, c_out, None, None])], inits)


ONE = {"layers": {"names": ["conv"], "exclude_first_last": False}}

CONV_CASES = {
    "stride2-pad1": dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    "asym-pads": dict(pads=[0, 2, 1, 0]),
    "same-upper-s2": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "same-lower": dict(auto_pad="SAME_LOWER"),
    "valid": dict(auto_pad="VALID"),
    "dilation2": dict(dilations=[2, 2], pads=[2, 2, 2, 2]),
    "no-bias": dict(bias=False, pads=[1, 1, 1, 1]),
    "groups2": dict(group=2, pads=[1, 1, 1, 1]),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_tap_gather_conv_variants(case):
    attrs = dict(CONV_CASES[case])
    proto = _conv_model(bias=attrs.pop("bias", True), group=attrs.pop("group", 1), **attrs)
    ctx, records = _compile(proto, {"keep": 0.5, **ONE}, {"lowering": "tap-gather"})
    record = records["groupwise-rewrite"]
    assert record.result.rewrites == 1 and record.verification["passed"]
    assert record.result.details["layers"]["conv"]["lowering"] == "tap-gather"
    _assert_same(ctx)
    assert _ops(ctx.model) == ["Conv", "Conv", "Gather"]
    taps, gemm = _tap_gather_convs(ctx.model)
    group = CONV_CASES[case].get("group", 1)
    # 8/g channels x 9 taps per conv group, half kept -> 36 kept rows in all, K' padded to a multiple of 8
    k = taps.inputs[1].values.shape[0]
    assert k % 8 == 0 and k >= 36 and taps.attrs["group"] == k and taps.inputs[1].values.sum() == 36
    assert gemm.inputs[1].values.shape == (6, k // group, 1, 1) and gemm.attrs.get("group", 1) == group
    for attr in ("strides", "dilations"):
        assert list(taps.attrs[attr]) == list(CONV_CASES[case].get(attr, [1, 1]))
    assert all(n.name.startswith("groupwise-rewrite/") for n in ctx.model.graph.nodes)
    assert "conv" not in {e.layer for e in ctx.plan.entries.values()}  # entry of the replaced weight dropped
    assert ctx.applied_plans[0].entries["W"].pattern == "group-wise"


def _tap_gather_convs(model):
    """The one-hot depthwise Conv and the 1x1 Conv of a tap-gather lowering."""
    convs = {n.name.split("/")[-1]: n for n in model.graph.nodes if n.op == "Conv"}
    assert all(n.name.startswith("groupwise-rewrite/") for n in convs.values())
    return convs["taps"], convs["gemm_1x1"]


def test_tap_rows_are_channel_major_and_padded():
    rows = np.zeros((2, 3, 3, 3), bool)
    rows[0, 2, 0, 1] = rows[0, 0, 2, 2] = rows[0, 0, 1, 0] = True  # group 0 keeps 3 rows
    rows[1, 1, 1, 1] = True  # group 1 keeps 1 row
    table = tap_rows(rows)
    assert table.shape == (2, 4, 3)  # 3 rows per group, padded to 4 so that K' = 8
    assert table[0].tolist() == [[0, 1, 0], [0, 2, 2], [2, 0, 1], [-1, -1, -1]]
    assert table[1].tolist() == [[1, 1, 1]] + [[-1, -1, -1]] * 3
    assert tap_rows(rows[:1], block=16).shape == (1, 16, 3)


def test_tap_gather_with_unequal_groups_and_unaligned_count():
    weight = randn(6, 5, 3, 3)
    weight[:3, :, 0] = 0.0  # group 0 (output channels 0-2): kernel row 0 pruned -> 30 rows kept
    weight[3:, :4] = 0.0  # group 1: only its channel 4 (input channel 9) left -> 9 rows kept
    proto = make_model([helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", group=2, strides=[2, 1],
                                         pads=[1, 0, 2, 1])],
                       [("x", [2, 10, 9, 8])], [("y", [2, 6, None, None])], [init("W", weight), init("B", randn(6))])
    ctx, records = _compile(proto, {"criterion": "zeros", **ONE}, {"lowering": "tap-gather"})
    assert records["groupwise-rewrite"].result.rewrites == 1
    taps, gemm = _tap_gather_convs(ctx.model)
    assert taps.attrs["group"] == 64 and taps.inputs[1].values.sum() == 39  # 2 groups x 32 rows
    assert gemm.inputs[1].values.shape == (6, 32, 1, 1) and gemm.attrs["group"] == 2
    _assert_same(ctx)


def test_pointwise_conv_drops_channels_with_strides():
    proto = _conv_model(kernel=1, strides=[2, 2])
    ctx, records = _compile(proto, {"keep": 0.25, **ONE}, {"cost_model": "analytic", "min_gain": -1.0})
    assert records["groupwise-rewrite"].result.details["layers"]["conv"]["lowering"] == "channel-gather"
    assert _ops(ctx.model) == ["Conv", "Gather"]
    conv = next(n for n in ctx.model.graph.nodes if n.op == "Conv")
    assert conv.inputs[1].values.shape == (6, 2, 1, 1)
    _assert_same(ctx)


def test_whole_channel_drop_in_3x3_conv():
    weight = randn(6, 8, 3, 3)
    weight[:, [1, 4, 5]] = 0.0  # three input channels with every tap pruned
    proto = make_model([helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])],
                       [("x", [1, 8, 7, 7])], [("y", [1, 6, 7, 7])], [init("W", weight)])
    ctx, records = _compile(proto, {"criterion": "zeros", **ONE}, {"lowering": "channel-gather"})
    assert records["groupwise-rewrite"].result.rewrites == 1
    assert _ops(ctx.model) == ["Conv", "Gather"]
    gather = next(n for n in ctx.model.graph.nodes if n.op == "Gather")
    assert gather.inputs[1].values.tolist() == [0, 2, 3, 6, 7]
    assert next(n for n in ctx.model.graph.nodes if n.op == "Conv").inputs[1].values.shape == (6, 5, 3, 3)
    _assert_same(ctx)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_feature_gather(trans_b):
    weight = randn(10, 16) if trans_b else randn(16, 10)
    node = helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="fc", transB=trans_b, alpha=0.7, beta=1.3)
    proto = make_model([node], [("x", [4, 16])], [("y", [4, 10])], [init("W", weight), init("C", randn(10))])
    ctx, records = _compile(proto, {"keep": 0.5, "layers": {"names": ["fc"], "exclude_first_last": False}},
                            {"lowering": "channel-gather"})
    assert records["groupwise-rewrite"].verification["passed"]
    gemm = next(n for n in ctx.model.graph.nodes if n.op == "Gemm")
    assert gemm.attrs["alpha"] == pytest.approx(0.7) and gemm.attrs["beta"] == pytest.approx(1.3)
    assert gemm.inputs[1].values.shape == ((10, 8) if trans_b else (8, 10))
    assert _ops(ctx.model) == ["Gather", "Gemm", "Transpose", "Transpose"]
    _assert_same(ctx)


def test_matmul_3d_input():
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")
    proto = make_model([node], [("x", [2, 5, 12])], [("y", [2, 5, 7])], [init("W", randn(12, 7))])
    ctx, _ = _compile(proto, {"ratios": {"proj": 0.25}}, {"lowering": "channel-gather"})
    matmul = next(n for n in ctx.model.graph.nodes if n.op == "MatMul")
    assert matmul.inputs[1].values.shape == (3, 7)
    gather = next(n for n in ctx.model.graph.nodes if n.op == "Gather")
    assert gather.attrs["axis"] == 0  # on the features, moved first by a Transpose and back after
    perms = [list(n.attrs["perm"]) for n in ctx.model.graph.nodes if n.op == "Transpose"]
    assert perms == [[2, 0, 1], [1, 2, 0]]
    _assert_same(ctx)


def test_gather_folds_into_producer_through_per_channel_ops():
    w2 = randn(5, 8, 1, 1)
    w2[:, [0, 3, 6]] = 0.0
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c1", "scale"], ["m"], name="scale"),
             helper.make_node("Add", ["m", "shift"], ["a"], name="shift"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W2"], ["y"], name="conv2")]
    inits = [init("W1", randn(8, 3, 3, 3)), init("B1", randn(8)), init("scale", randn(1, 8, 1, 1)),
             init("shift", randn(8, 1, 1)), init("W2", w2)]
    proto = make_model(nodes, [("x", [1, 3, 6, 6])], [("y", [1, 5, 6, 6])], inits)
    ctx, records = _compile(proto, {"criterion": "zeros", "layers": {"names": ["conv2"]}}, {"cost_model": "analytic"})
    result = records["groupwise-rewrite"].result
    assert "folded into producer 'conv1'" in result.details["layers"]["conv2"]["fold"]
    assert "Gather" not in _ops(ctx.model)
    convs = {n.name: n for n in ctx.model.graph.nodes if n.op == "Conv"}
    assert convs["conv1"].inputs[1].values.shape == (5, 3, 3, 3) and convs["conv1"].inputs[2].values.shape == (5,)
    assert convs["conv2"].inputs[1].values.shape == (5, 5, 1, 1)
    _assert_same(ctx)


def test_gemm_gather_folds_into_previous_gemm():
    w2 = randn(12, 4)
    w2[[1, 2, 7, 9, 10]] = 0.0
    nodes = [helper.make_node("Gemm", ["x", "W1", "C1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2")]
    proto = make_model(nodes, [("x", [3, 6])], [("y", [3, 4])],
                       [init("W1", randn(12, 6)), init("C1", randn(12)), init("W2", w2)])
    ctx, _ = _compile(proto, {"criterion": "zeros", "layers": {"names": ["fc2"]}}, {"cost_model": "analytic"})
    assert "Gather" not in _ops(ctx.model)
    gemm = next(n for n in ctx.model.graph.nodes if n.op == "Gemm")
    assert gemm.inputs[1].values.shape == (7, 6) and gemm.inputs[2].values.shape == (7,)
    _assert_same(ctx)


def test_producer_with_two_consumers_is_not_folded():
    w2 = randn(5, 8, 1, 1)
    w2[:, [0, 3]] = 0.0
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W2"], ["y"], name="conv2"),
             helper.make_node("Identity", ["c1"], ["z"], name="side")]
    proto = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 5, 4, 4]), ("z", [1, 8, 4, 4])],
                       [init("W1", randn(8, 3, 1, 1)), init("W2", w2)])
    ctx, records = _compile(proto, {"criterion": "zeros", "layers": {"names": ["conv2"]}},
                            {"lowering": "channel-gather"})
    info = records["groupwise-rewrite"].result.details["layers"]["conv2"]
    # the channel analysis says why: the other reader is a graph output
    assert info["fold"].startswith("not folded:") and "'z' is a graph output" in info["fold"]
    assert "Gather" in _ops(ctx.model)
    _assert_same(ctx)


def test_channels_no_consumer_reads_fold_even_with_two_consumers():
    """Both readers of conv1 ignore channels 0 and 3: they go from conv1 and from both readers."""
    w2, w3 = randn(5, 8, 1, 1), randn(4, 8, 3, 3)
    w2[:, [0, 3]] = 0.0
    w3[:, [0, 3]] = 0.0
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W2"], ["y"], name="conv2"),
             helper.make_node("Conv", ["r", "W3"], ["z"], name="conv3", pads=[1, 1, 1, 1])]
    proto = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 5, 4, 4]), ("z", [1, 4, 4, 4])],
                       [init("W1", randn(8, 3, 1, 1)), init("B1", randn(8)), init("W2", w2), init("W3", w3)])
    ctx, records = _compile(proto, {"criterion": "zeros", "layers": {"names": ["conv2", "conv3"]}},
                            {"cost_model": "analytic"})
    layers = records["groupwise-rewrite"].result.details["layers"]
    assert "2 unused input channel(s) folded into producer 'conv1' (8 -> 6)" == layers["conv2"]["fold"] == \
        layers["conv3"]["fold"]
    assert "Gather" not in _ops(ctx.model)
    shapes = {n.name: n.inputs[1].values.shape for n in ctx.model.graph.nodes if n.op == "Conv"}
    assert shapes == {"conv1": (6, 3, 1, 1), "conv2": (5, 6, 1, 1), "conv3": (4, 6, 3, 3)}
    _assert_same(ctx)


def test_layer_that_cannot_be_rewritten_stays_dense_and_is_listed():
    # a depthwise conv is not group-wise; a dense conv has nothing to remove
    nodes = [helper.make_node("Conv", ["x", "Wd"], ["d"], name="dw", group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["d", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    proto = make_model(nodes, [("x", [1, 4, 5, 5])], [("y", [1, 6, 5, 5])],
                       [init("Wd", randn(4, 1, 3, 3)), init("W", randn(6, 4, 3, 3))])
    model = model_from_proto(proto)
    ctx = PassContext(model)
    records = {r.name: r for r in PassManager([make_pass("groupwise-rewrite", cost_model="analytic")]).run(ctx).records}
    result = records["groupwise-rewrite"].result
    assert records["groupwise-rewrite"].status == "unchanged" and result.rewrites == 0
    reasons = {s.layer: s.reason for s in result.skipped}
    assert "depthwise" in reasons["dw"] and "no all-zero group" in reasons["conv"]
    assert _ops(model) == ["Conv", "Conv"]


def test_cost_model_keeps_layer_dense_when_no_lowering_is_faster():
    proto = _conv_model(pads=[1, 1, 1, 1])
    # keep 0.9 of the groups: every lowering moves data for little saved work
    ctx, records = _compile(proto, {"keep": 0.9, **ONE}, {"cost_model": "analytic"})
    info = records["groupwise-rewrite"].result.details["layers"]["conv"]
    assert info["lowering"] == "dense" and info["reason"].startswith("dense kept: tap-gather: the analytic model")
    assert info["decided_by"] == "analytic model" and "needs 1.1x" in info["reason"]
    assert set(info["candidates_ms"]) == {"dense", "tap-gather"}
    assert [s.layer for s in records["groupwise-rewrite"].result.skipped] == ["conv"]
    assert _ops(ctx.model) == ["Conv"]


def test_measured_cost_model_records_times():
    proto = _conv_model(c_in=16, c_out=16, size=12, pads=[1, 1, 1, 1])
    ctx, records = _compile(proto, {"keep": 0.25, **ONE}, {"runs": 2})
    info = records["groupwise-rewrite"].result.details["layers"]["conv"]
    assert {"dense", "tap-gather"} <= set(info["candidates_ms"]) and all(v > 0 for v in info["candidates_ms"].values())
    assert info["timing"] == "measured" and "tap-gather" in info["speedup_vs_dense"]
    assert "CPU time" in info["reason"] or "timing inconclusive" in info["reason"]  # the evidence, either way
    _assert_same(ctx)


def test_rewrite_refuses_unapplied_plan():
    model = model_from_proto(_conv_model(pads=[1, 1, 1, 1]))
    ctx = PassContext(model)
    with pytest.raises(PlanError, match="apply-plan"):
        PassManager([make_pass("plan-groupwise", keep=0.5, **ONE), make_pass("groupwise-rewrite")]).run(ctx)


def test_plan_records_entries_and_skips_depthwise_and_edges():
    nodes = [helper.make_node("Conv", ["x", "W0"], ["a"], name="first", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "Wd"], ["b"], name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "W1"], ["c"], name="mid", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c", "W2"], ["y"], name="last")]
    inits = [init("W0", randn(8, 3, 3, 3)), init("Wd", randn(8, 1, 3, 3)), init("W1", randn(8, 8, 3, 3)),
             init("W2", randn(4, 8, 1, 1))]
    model = model_from_proto(make_model(nodes, [("x", [1, 3, 5, 5])], [("y", [1, 4, 5, 5])], inits))
    ctx = PassContext(model)
    record = PassManager([make_pass("plan-groupwise", keep=0.25, alignment=4)]).run(ctx).records[0]
    assert record.status == "unchanged"
    assert list(ctx.plan.entries) == ["W1"]
    entry = ctx.plan.entries["W1"]
    assert entry.pattern == "group-wise" and entry.details["kept_groups"] == 20  # 72 * 0.25 = 18 -> 20 (align 4)
    reasons = {s.layer: s.reason for s in record.result.skipped}
    assert "depthwise" in reasons["dw"] and "first or last" in reasons["first"] and "first or last" in reasons["last"]


def test_global_threshold_plan():
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("MatMul", ["h", "W2"], ["y"], name="fc2")]
    w1 = randn(8, 8)
    w2 = randn(8, 8, scale=10.0)  # large rows: a global threshold prunes fc1 more
    model = model_from_proto(make_model(nodes, [("x", [2, 8])], [("y", [2, 8])], [init("W1", w1), init("W2", w2)]))
    ctx = PassContext(model)
    PassManager([make_pass("plan-groupwise", keep=0.5, threshold="global",
                           layers={"exclude_first_last": False})]).run(ctx)
    kept = {e.layer: e.details["kept_groups"] for e in ctx.plan.entries.values()}
    assert kept["fc1"] < kept["fc2"] and kept["fc1"] >= 1


def test_selector_matching_nothing_and_bad_options():
    model = model_from_proto(_conv_model())
    with pytest.raises(OptionError, match="selects none of the model.s"):
        make_pass("plan-groupwise", keep=0.5, layers={"regex": "^nothing$"}).run(PassContext(model))
    with pytest.raises(OptionError, match="strictly between 0 and 1"):
        make_pass("plan-groupwise", keep=1.5)
    with pytest.raises(OptionError, match="strictly between 0 and 1"):
        make_pass("plan-groupwise", ratios={"conv": 0.0})
    with pytest.raises(OptionError, match="not selected weight layers"):
        make_pass("plan-groupwise", keep=0.5, ratios={"nope": 0.5}, layers={"exclude_first_last": False}).run(
            PassContext(model))
    with pytest.raises(OptionError, match="unknown lowering"):
        make_pass("groupwise-rewrite", lowering="magic")


def test_selecting_a_conv_with_computed_weight_is_a_clear_error():
    nodes = [helper.make_node("Identity", ["W"], ["Wc"], name="weight_copy"),
             helper.make_node("Conv", ["x", "Wc"], ["y"], name="dyn")]
    model = model_from_proto(make_model(nodes, [("x", [1, 2, 4, 4])], [("y", [1, 3, 2, 2])], [init("W", randn(3, 2, 3, 3))]))
    with pytest.raises(UnsupportedModelError, match="'dyn'.*not constant"):
        make_pass("plan-groupwise", keep=0.5, layers={"names": ["dyn"]}).run(PassContext(model))


def test_builtin_recipes_and_ratio_recipe():
    for keep in (75, 50, 25):
        recipe = load_recipe(f"groupwise-{keep}")
        assert [n for n, _ in recipe.passes] == ["plan-groupwise", "apply-plan", "groupwise-rewrite"]
        assert recipe.passes[0][1] == {"keep": keep / 100, "criterion": "l1"}
    text = """
name: my-ratios
passes:
  - plan-groupwise:
      ratios: {conv: 0.25}
  - apply-plan
  - groupwise-rewrite: {lowering: tap-gather}
"""
    recipe = parse_recipe(text, "my-ratios.yaml")
    ctx = PassContext(model_from_proto(_conv_model(pads=[1, 1, 1, 1])))
    PassManager(recipe.build_passes()).run(ctx)
    assert ctx.applied_plans[0].entries["W"].details["kept_groups"] == 18
    assert any(n.name.startswith("groupwise-rewrite/") for n in ctx.model.graph.nodes)
    _assert_same(ctx)


def test_unnamed_layer_is_rewritten():
    weight = randn(12, 7)
    weight[[0, 5, 6, 11]] = 0.0
    proto = make_model([helper.make_node("MatMul", ["x", "W"], ["y"])], [("x", [3, 12])], [("y", [3, 7])],
                       [init("W", weight)])
    ctx, records = _compile(proto, {"criterion": "zeros", "layers": {"exclude_first_last": False}},
                            {"lowering": "channel-gather"})
    assert records["groupwise-rewrite"].result.details["layers"]["<MatMul -> y>"]["lowering"] == "channel-gather"
    assert next(n for n in ctx.model.graph.nodes if n.op == "MatMul").inputs[1].values.shape == (8, 7)
    _assert_same(ctx)


@pytest.mark.parametrize("whole_model, kept", [(FASTER, True), (SLOWER, False), (STRADDLES, False)])
def test_whole_model_check_keeps_or_undoes_the_lowerings(monkeypatch, whole_model, kept):
    """A conclusive whole-model timing keeps or undoes the lowerings; an inconclusive one defers to the
    analytic model (on this 12x12 layer it prices the three nodes of tap-gather above the one dense Conv)."""
    import sparsecc.lowering.model_check as model_check
    from sparsecc.lowering import AnalyticCost, MeasuredCost
    from sparsecc.measure.cached import Sourced

    def tap_gather_wins(self, candidates, *args, **kwargs):  # per layer, the rewrite is conclusively faster
        for candidate in candidates[1:]:
            candidate.evidence = evidence(FASTER, candidate=candidate.name)

    monkeypatch.setattr(MeasuredCost, "time", tap_gather_wins)
    monkeypatch.setattr(MeasuredCost, "fallback", lambda self: AnalyticCost())  # no calibration is measured
    monkeypatch.setattr(model_check, "model_evidence",
                        lambda *args, **kwargs: Sourced(evidence(whole_model), "measured", "test"))
    ctx, records = _compile(_conv_model(c_in=16, c_out=16, size=12, pads=[1, 1, 1, 1]), {"keep": 0.25, **ONE}, {})
    result = records["groupwise-rewrite"].result
    assert result.details["layers"]["conv"]["lowering"] != "dense"  # the cost model chose a rewrite
    check = result.details["model_check"]
    assert check["kept"] is kept and check["fallback"] is (whole_model == STRADDLES)
    if whole_model == STRADDLES:
        assert "timing inconclusive" in check["reason"] and "analytic model decides" in check["reason"]
    if kept:
        assert result.rewrites == 1 and "Gather" in _ops(ctx.model)
    else:
        assert result.rewrites == 0 and not result.modified and "Gather" not in _ops(ctx.model)
        assert [s.layer for s in result.skipped if "lowerings are undone" in s.reason] == ["(whole model)"]
    _assert_same(ctx)


def test_an_undo_of_the_lowerings_keeps_the_channels_folded_before_them(monkeypatch):
    """The whole-model step times against the model after folding, and an undo puts back only the lowerings."""
    import sparsecc.lowering.model_check as model_check
    from sparsecc.lowering import AnalyticCost, MeasuredCost
    from sparsecc.measure.cached import Sourced

    w2 = randn(6, 8, 3, 3)
    w2[:, [0, 3, 6]] = 0.0  # channels no one reads: folded into conv1
    w2[:, 1, 0, :] = 0.0  # and a few taps: what tap-gather lowers
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    inits = [init("W1", randn(8, 3, 3, 3)), init("B1", randn(8)), init("W2", w2)]
    proto = make_model(nodes, [("x", [1, 3, 10, 10])], [("y", [1, 6, 10, 10])], inits)
    timed_against = []

    def slower(before, after, *args, **kwargs):
        timed_against.append({n.name: n.inputs[1].values.shape for n in before.graph.nodes if n.op == "Conv"})
        return Sourced(evidence(SLOWER), "measured", "test")

    def lowering_wins(self, candidates, *args, **kwargs):
        for candidate in candidates[1:]:
            candidate.evidence = evidence(FASTER, candidate=candidate.name)

    monkeypatch.setattr(MeasuredCost, "time", lowering_wins)
    monkeypatch.setattr(MeasuredCost, "fallback", lambda self: AnalyticCost())
    monkeypatch.setattr(model_check, "model_evidence", slower)
    ctx, records = _compile(proto, {"criterion": "zeros", "layers": {"names": ["conv2"]}}, {})
    result = records["groupwise-rewrite"].result
    assert timed_against == [{"conv1": (5, 3, 3, 3), "conv2": (6, 5, 3, 3)}]  # the folded model is the baseline
    assert result.details["layers"]["conv2"]["lowering"] == "tap-gather"  # chosen, then undone with the model check
    assert not result.details["model_check"]["kept"] and result.rewrites == 1  # the fold stays
    convs = {n.name: n.inputs[1].values.shape for n in ctx.model.graph.nodes if n.op == "Conv"}
    assert convs == {"conv1": (5, 3, 3, 3), "conv2": (6, 5, 3, 3)} and "Gather" not in _ops(ctx.model)
    _assert_same(ctx)
