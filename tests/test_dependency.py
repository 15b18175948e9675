"""Channel groups found on small graphs built in code, and the physical edit that removes channels."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsecc.dependency import (build_channel_groups, consumer_weights, producer_weights, reindex_channels,
                                 reindex_groups)
from sparsecc.errors import PlanError
from sparsecc.model import model_from_proto
from sparsecc.verify import VerifyConfig, compare_models, input_specs

# Removing channels whose consumer weights are zero changes only the summation order.
TOLERANCE = VerifyConfig(atol=1e-5, rtol=1e-5)
RNG = np.random.default_rng(0)


class Builder:
    """A tiny ONNX graph under construction."""

    def __init__(self, shape=(1, 3, 6, 6)):
        self.nodes, self.inits, self.shape = [], [], shape

    def const(self, name, values):
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def conv(self, name, x, c_in, c_out, k=1, group=1, bias=True):
        w = self.const(f"{name}.w", RNG.standard_normal((c_out, c_in // group, k, k)).astype(np.float32))
        inputs = [x, w] + ([self.const(f"{name}.b", RNG.standard_normal(c_out).astype(np.float32))] if bias else [])
        self.nodes.append(helper.make_node("Conv", inputs, [name], name=name, group=group,
                                           pads=[k // 2] * 4))
        return name

    def op(self, op, inputs, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def model(self, outputs):
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.shape)],
                                  [helper.make_empty_tensor_value_info(o) for o in outputs],
                                  self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        # give the outputs their inferred types (the checker wants typed outputs)
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
        for output in proto.graph.output:
            output.CopyFrom(inferred[output.name])
        return model_from_proto(proto)


def by_producer(groups, node):
    return next(g for g in groups if node in g.weight_nodes())


def mask_and_remove(model, removals):
    """The masked model (removed channels' consumer weights zeroed) and the model with them removed.

    ``removals`` maps a producer node to the channels to remove from its group.
    """
    masked = model.copy()
    groups = build_channel_groups(masked)
    tensors = masked.graph.tensors()
    edits = []
    for node, channels in removals.items():
        group = by_producer(groups, node)
        for use in group.consumers:
            values = np.moveaxis(tensors[use.tensor].values, use.axis, 0).copy()
            for c in channels:
                if use.start <= c < use.start + use.covered(group.size):
                    first = use.offset + (c - use.start) * use.stride
                    values[first:first + use.stride] = 0
            tensors[use.tensor].values = np.ascontiguousarray(np.moveaxis(values, 0, use.axis))
        edits.append((group.id, np.setdiff1d(np.arange(group.size), channels)))
    pruned = masked.copy()
    fresh = {g.id: g for g in build_channel_groups(pruned)}
    reindex_groups(pruned, [(fresh[gid], kept) for gid, kept in edits])
    return masked, pruned


def assert_same(masked, pruned):
    result = compare_models(masked, pruned, input_specs(masked), TOLERANCE)
    assert result.passed, result.describe_worst()


def residual_model():
    b = Builder()
    stem = b.conv("stem", "x", 3, 8, k=3)
    a = b.conv("a", b.op("Relu", [stem], "r0"), 8, 8, k=3)
    s = b.op("Add", [stem, a], "add")
    head = b.conv("head", b.op("Relu", [s], "r1"), 8, 4)
    return b.model([head])


def test_residual_add_couples_two_convs():
    model = residual_model()
    groups = build_channel_groups(model)
    group = by_producer(groups, "stem")
    assert group.weight_nodes() == ["stem", "a"] and group.size == 8 and group.editable()
    assert sorted(u.node for u in group.consumers) == ["a", "head"]
    assert {(u.tensor, u.axis, u.kind) for u in group.producers} >= {("stem.w", 0, "weight"), ("a.b", 0, "param")}
    # the head's output is the graph output: blocked with the reason
    head = by_producer(groups, "head")
    assert not head.editable() and "graph output" in head.blockers[0]
    masked, pruned = mask_and_remove(model, {"stem": [1, 4, 6]})
    shapes = {n.name: n.inputs[1].values.shape for n in pruned.graph.nodes if n.op == "Conv"}
    assert shapes == {"stem": (5, 3, 3, 3), "a": (5, 5, 3, 3), "head": (4, 5, 1, 1)}
    assert_same(masked, pruned)


def test_reindex_permutation_keeps_function():
    model = residual_model()
    group = by_producer(build_channel_groups(model), "stem")
    before = model.copy()
    reindex_channels(model, group, np.array([7, 0, 6, 1, 5, 2, 4, 3]))
    assert not np.array_equal(model.graph.tensors()["stem.w"].values, before.graph.tensors()["stem.w"].values)
    assert_same(before, model)


def test_concat_offsets():
    b = Builder()
    a = b.conv("a", "x", 3, 4)
    c = b.conv("c", "x", 3, 6)
    cat = b.op("Concat", [a, c], "cat", axis=1)
    head = b.conv("head", cat, 10, 2)
    model = b.model([head])
    groups = build_channel_groups(model)
    (use_a,), (use_c,) = by_producer(groups, "a").consumers, by_producer(groups, "c").consumers
    assert (use_a.node, use_a.axis, use_a.offset) == ("head", 1, 0)
    assert (use_c.node, use_c.axis, use_c.offset) == ("head", 1, 4)
    masked, pruned = mask_and_remove(model, {"a": [0, 3], "c": [2]})
    assert pruned.graph.tensors()["head.w"].values.shape == (2, 7, 1, 1)
    assert_same(masked, pruned)


def test_split_pieces_and_sizes_updated():
    b = Builder()
    a = b.conv("a", "x", 3, 8)
    b.nodes.append(helper.make_node("Split", [a, b.const("sizes", np.array([3, 5], np.int64))], ["s0", "s1"],
                                    name="split", axis=1))
    p = b.conv("p", "s0", 3, 4)
    q = b.conv("q", "s1", 5, 4)
    model = b.model([b.op("Add", [p, q], "sum")])
    group = by_producer(build_channel_groups(model), "a")
    assert group.editable()
    consumers = {u.node: (u.start, u.count) for u in group.consumers}
    assert consumers == {"p": (0, 3), "q": (3, 5)}
    assert [u.axis for u in group.producers if u.kind == "count"] == [0, 1]
    masked, pruned = mask_and_remove(model, {"a": [1, 5, 6]})
    split = next(n for n in pruned.graph.nodes if n.op == "Split")
    assert split.inputs[1].values.tolist() == [2, 3]
    assert_same(masked, pruned)


def inverted_residual_se_model():
    b = Builder()
    stem = b.conv("stem", "x", 3, 8, k=3)
    pw1 = b.op("Relu", [b.conv("pw1", stem, 8, 16)], "r1")
    dw = b.op("Relu", [b.conv("dw", pw1, 16, 16, k=3, group=16)], "r2")
    # squeeze-excitation on the depthwise output
    squeeze = b.op("GlobalAveragePool", [dw], "gap")
    fc1 = b.op("Relu", [b.conv("se1", squeeze, 16, 4)], "r3")
    gate = b.op("Sigmoid", [b.conv("se2", fc1, 4, 16)], "sig")
    scaled = b.op("Mul", [dw, gate], "scale")
    pw2 = b.conv("pw2", scaled, 16, 8)
    out = b.op("Add", [stem, pw2], "res")
    head = b.conv("head", b.op("Relu", [out], "r4"), 8, 4)
    return b.model([head])


def test_depthwise_chain_and_squeeze_excitation():
    model = inverted_residual_se_model()
    groups = build_channel_groups(model)
    expand = by_producer(groups, "pw1")
    # the depthwise conv and the SE's last conv index the same 16 channels
    assert expand.weight_nodes() == ["pw1", "dw", "se2"] and expand.size == 16 and expand.editable()
    assert sorted(u.node for u in expand.consumers) == ["pw2", "se1"]
    assert ("dw", "group", "attr") in {(u.node, u.tensor, u.kind) for u in expand.producers}
    assert by_producer(groups, "stem").weight_nodes() == ["stem", "pw2"]
    masked, pruned = mask_and_remove(model, {"pw1": [0, 3, 9, 10, 15], "stem": [2]})
    dw = next(n for n in pruned.graph.nodes if n.name == "dw")
    assert dw.attrs["group"] == 11 and dw.inputs[1].values.shape == (11, 1, 3, 3)
    assert_same(masked, pruned)


def flatten_gemm_model(reshape_to=None):
    b = Builder(shape=(1, 3, 3, 3))
    a = b.op("Relu", [b.conv("a", "x", 3, 4, k=3)], "r")
    if reshape_to is None:
        flat = b.op("Flatten", [a], "flat", axis=1)
    else:
        flat = b.op("Reshape", [a, b.const("shape", np.array(reshape_to, np.int64))], "flat")
    if len(reshape_to or [1, 36]) != 2:
        return b.model([flat])
    w = b.const("fc.w", RNG.standard_normal((5, 36)).astype(np.float32))
    b.nodes.append(helper.make_node("Gemm", [flat, w, b.const("fc.b", np.zeros(5, np.float32))], ["y"],
                                    name="fc", transB=1))
    return b.model(["y"])


@pytest.mark.parametrize("reshape_to", [None, [1, 36], [1, -1]])
def test_flatten_into_gemm_maps_channel_to_block(reshape_to):
    model = flatten_gemm_model(reshape_to)
    group = by_producer(build_channel_groups(model), "a")
    (use,) = group.consumers
    assert (use.node, use.axis, use.stride) == ("fc", 1, 9) and group.editable()
    (weights,) = consumer_weights(model, group)
    assert weights.shape == (5, 4, 9)
    assert np.array_equal(weights[:, 2], model.graph.tensors()["fc.w"].values[:, 18:27])
    assert producer_weights(model, group)[0].shape == (4, 3, 3, 3)
    masked, pruned = mask_and_remove(model, {"a": [1]})
    assert pruned.graph.tensors()["fc.w"].values.shape == (5, 27)
    if reshape_to == [1, 36]:
        reshape = next(n for n in pruned.graph.nodes if n.op == "Reshape")
        assert reshape.inputs[1].values.tolist() == [1, 27]
    assert_same(masked, pruned)


def test_reshape_mixing_channels_blocks():
    model = flatten_gemm_model([1, 2, 2, 9])
    group = by_producer(build_channel_groups(model), "a")
    assert not group.editable()
    assert any("mixes the channel axis" in reason for reason in group.blockers)


def test_shared_weight_blocks():
    b = Builder()
    w = b.const("shared.w", RNG.standard_normal((4, 3, 1, 1)).astype(np.float32))
    b.nodes += [helper.make_node("Conv", ["x", w], ["c1"], name="c1"),
                helper.make_node("Conv", ["x", w], ["c2"], name="c2")]
    b.conv("head", b.op("Add", ["c1", "c2"], "add"), 4, 2)
    model = b.model(["head"])
    group = next(g for g in build_channel_groups(model) if g.id == "c1")
    assert not group.editable() and group.weight_nodes() == []
    assert any("shared by nodes ['c1', 'c2']" in reason for reason in group.blockers)
    with pytest.raises(PlanError, match="cannot be edited"):
        reindex_channels(model, group, np.arange(2))


def test_unknown_op_blocks_with_reason():
    b = Builder()
    a = b.conv("a", "x", 3, 4)
    b.nodes.append(helper.make_node("LRN", [a], ["lrn"], name="lrn", size=3))
    b.conv("head", "lrn", 4, 2)
    group = by_producer(build_channel_groups(b.model(["head"])), "a")
    assert group.blockers == ["LRN 'lrn' reads these channels and sparsecc does not know how it uses them"]


def test_bad_indices_rejected():
    model = residual_model()
    group = by_producer(build_channel_groups(model), "stem")
    for indices in ([], [0, 0, 1], [8]):
        with pytest.raises(PlanError, match="distinct"):
            reindex_channels(model, group, np.array(indices, dtype=np.int64))


def test_channel_use_positions():
    from sparsecc.dependency import ChannelUse

    # a Gemm after Flatten reading channels 2.. of a 6-channel group, 3 features each, from element 4
    use = ChannelUse("fc", "fc.w", axis=0, offset=4, stride=3, start=2, count=3)
    np.testing.assert_array_equal(use.positions(6, np.array([0, 4, 2, 5])), [10, 11, 12, 4, 5, 6])
    assert use.positions(6, np.array([0, 1, 5])).size == 0  # none of them is covered
    whole = ChannelUse("conv", "conv.w", axis=1)
    np.testing.assert_array_equal(whole.positions(4, np.array([3, 0, 2, 1])), [3, 0, 2, 1])  # order kept


def test_op_table_is_one_registry_the_analysis_and_folding_share():
    from graphs import init, make_model, randn
    from onnx import helper

    from sparsecc.dependency import OP_RULES, register_op_rule
    from sparsecc.model import model_from_proto

    nodes = [helper.make_node("Conv", ["x", "W0"], ["a"], name="c0"),
             helper.make_node("Shrink", ["a"], ["s"], name="shrink"),
             helper.make_node("Conv", ["s", "W1"], ["y"], name="c1")]
    proto = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 5, 4, 4])],
                       [init("W0", randn(8, 3, 1, 1)), init("W1", randn(5, 8, 1, 1))])
    group = next(g for g in build_channel_groups(model_from_proto(proto)) if "c0" in g.weight_nodes())
    assert not group.editable() and "does not know how it uses them" in group.blockers[0]
    with pytest.raises(ValueError, match="unknown rule"):
        register_op_rule("Shrink", "magic")
    register_op_rule("Shrink", "unary")
    try:
        group = next(g for g in build_channel_groups(model_from_proto(proto)) if "c0" in g.weight_nodes())
        assert group.editable() and group.size == 8
    finally:
        del OP_RULES["Shrink"]
    assert OP_RULES["Relu"] == "unary" and OP_RULES["Gather"] == "gather"


def test_gather_on_the_channel_axis_keeps_channels_coupled_and_is_edited_with_them():
    """A group-wise rewrite leaves Gathers of kept channels: later filter pruning must see through them."""
    b = Builder((1, 3, 5, 5))
    a = b.op("Relu", [b.conv("a", "x", 3, 8)], "a_relu")
    picked = b.op("Gather", [a, b.const("idx", np.array([6, 0, 2, 3, 7], np.int64))], "picked", axis=1)
    y = b.conv("b", picked, 5, 4)
    z = b.conv("c", a, 8, 4)
    model = b.model([y, z])
    group = by_producer(build_channel_groups(model), "a")
    assert group.editable() and group.size == 8
    assert {u.kind for u in group.producers if u.node == "picked"} == {"index", "index-value"}
    masked, pruned = mask_and_remove(model, {"a": [0, 4]})
    assert compare_models(masked, pruned, input_specs(masked), TOLERANCE).passed
    tensors = pruned.graph.tensors()
    assert tensors["idx"].values.tolist() == [4, 1, 2, 5]  # 6, 2, 3, 7 renumbered after removing 0 and 4
    assert tensors["b.w"].values.shape == (4, 4, 1, 1) and tensors["c.w"].values.shape == (4, 6, 1, 1)


def test_gather_with_repeated_or_computed_indices_blocks():
    b = Builder((1, 3, 5, 5))
    a = b.conv("a", "x", 3, 4)
    picked = b.op("Gather", [a, b.const("idx", np.array([1, 1, 2], np.int64))], "picked", axis=1)
    model = b.model([b.conv("b", picked, 3, 2)])
    group = by_producer(build_channel_groups(model), "a")
    assert not group.editable() and "repeated" in group.blockers[0]


def test_filter_pruning_sees_through_a_group_wise_channel_gather():
    from sparsecc.passmanager import PassContext, PassManager, make_pass

    b = Builder((1, 3, 5, 5))
    a = b.op("Relu", [b.conv("a", "x", 3, 8)], "a_relu")
    model = b.model([b.conv("c", b.conv("mid", a, 8, 8, k=3), 8, 4)])
    tensors = model.graph.tensors()
    tensors["mid.w"].values[:, [1, 5]] = 0.0  # two input channels of 'mid' unused: channel-gather
    ctx = PassContext(model)
    PassManager([make_pass("plan-from-zeros"), make_pass("apply-plan"),
                 make_pass("groupwise-rewrite", lowering="channel-gather", fold=False)]).run(ctx)
    assert "Gather" in [n.op for n in ctx.model.graph.nodes]
    group = by_producer(build_channel_groups(ctx.model), "a")
    assert group.editable(), group.blockers


def test_zero_channels_padded_onto_a_group_keep_the_function(tmp_path):
    from graphs import init, make_model, randn

    from sparsecc.backends.ort import OrtBackend
    from sparsecc.dependency.padding import pad_groups, padded_size, why_not_paddable

    nodes = [helper.make_node("Conv", ["x", "W0", "B0"], ["a"], name="c0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W1"], ["y"], name="c1")]
    inits = [init("W0", randn(14, 4, 3, 3)), init("B0", randn(14)), init("W1", randn(8, 14, 1, 1))]
    model = model_from_proto(make_model(nodes, [("x", [1, 4, 6, 6])], [("y", [1, 8, 6, 6])], inits))
    before = model.copy()
    group = next(g for g in build_channel_groups(model) if g.size == 14)
    assert why_not_paddable(group) is None and padded_size(14, 8) == 16 and padded_size(14, 8, 15) == 15
    pad_groups(model, [(group, 16)])
    tensors = model.graph.tensors()
    assert tensors["W0"].values.shape == (16, 4, 3, 3) and tensors["W1"].values.shape == (8, 16, 1, 1)
    assert not tensors["W0"].values[14:].any() and not tensors["B0"].values[14:].any()
    backend = OrtBackend(threads=1)
    feed = {"x": np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)}
    reference = backend.load(before.to_bytes()).run(feed)["y"]  # the same up to the summation order
    np.testing.assert_allclose(backend.load(model.to_bytes()).run(feed)["y"], reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="fewer channels"):
        pad_groups(model, [(next(g for g in build_channel_groups(model) if g.size == 16), 8)])
