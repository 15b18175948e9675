"""plan-24, check-24 and permute-channels-24 on tiny graphs, checked on ONNX Runtime and by Polygraphy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from graphs import init, make_model, randn
from onnx import helper

from sparsecc.backends.ort import OrtBackend
from sparsecc.errors import OptionError
from sparsecc.model import model_from_proto
from sparsecc.passmanager import PassContext, PassManager, make_pass
from sparsecc.sparsity.two_four import check_two_four, kept_magnitude

TOLERANCE = 1e-4  # permuted vs original: max |diff| <= TOLERANCE * max |original|


def small_cnn(trans_b: bool = True):
    """conv0 (C_in 6: ineligible) -> conv1 -> depthwise -> pointwise -> GAP -> Flatten -> Gemm."""
    fc = randn(10, 32) if trans_b else randn(32, 10)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wd"], ["cd"], name="dw", group=16, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["cd"], ["rd"], name="relud"),
        helper.make_node("Conv", ["rd", "wp", "bp"], ["cp"], name="pw"),
        helper.make_node("Relu", ["cp"], ["rp"], name="relup"),
        helper.make_node("GlobalAveragePool", ["rp"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=int(trans_b)),
    ]
    inits = [init("w0", randn(8, 6, 3, 3)), init("b0", randn(8)), init("w1", randn(16, 8, 3, 3)),
             init("b1", randn(16)), init("wd", randn(16, 1, 3, 3)), init("wp", randn(32, 16, 1, 1)),
             init("bp", randn(32)), init("wf", fc), init("bf", randn(10))]
    return make_model(nodes, [("x", [1, 6, 6, 6])], [("y", [1, 10])], inits)


def _run(proto, passes):
    ctx = PassContext(model_from_proto(proto))
    records = {r.name: r for r in PassManager(passes).run(ctx).records}
    return ctx, records


def _weights(model):
    return {name: t.values for name, t in model.graph.tensors().items() if hasattr(t, "values")}


@pytest.mark.parametrize("trans_b", [True, False])
def test_plan_and_apply_make_every_selected_weight_two_four(trans_b):
    ctx, records = _run(small_cnn(trans_b), [make_pass("plan-24"), make_pass("apply-plan")])
    plan = records["plan-24"]
    assert plan.status == "unchanged"
    assert sorted(ctx.plan.entries) == ["w1", "wf", "wp"]
    assert {e.pattern for e in ctx.plan.entries.values()} == {"2:4"}
    skipped = {s.layer: s.reason for s in plan.result.skipped}
    assert "C_in = 6 is not a multiple of 4" in skipped["conv0"]
    assert "depthwise" in skipped["dw"]
    weights = _weights(ctx.model)
    assert check_two_four(weights["w1"], "Conv") and check_two_four(weights["wp"], "Conv")
    assert check_two_four(weights["wf"], "Gemm", trans_b)
    assert not check_two_four(weights["w0"], "Conv")
    assert plan.result.details["small_channel_layers"]  # every layer here is far below 256 channels
    # Polygraphy's own model-level check agrees
    sparse = pytest.importorskip("polygraphy.tools.sparse")
    pruner = sparse.SparsityPruner(ctx.model.to_onnx())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pruner.check()
    assert pruner.sparse_tensors == {"w1", "wp", "wf"}


def test_plan_24_honours_the_selector_and_an_earlier_plan():
    ctx, records = _run(small_cnn(), [make_pass("plan-24", layers={"exclude": ["fc"]})])
    assert "wf" not in ctx.plan.entries
    assert {s.layer: s.reason for s in records["plan-24"].result.skipped}["fc"] == "excluded by the selector"
    # a weight already planned: 2:4 is chosen among the weights the earlier plan keeps
    earlier = ctx.plan.entries["w1"]
    earlier.mask[:, :4] = False
    earlier.pattern = "group-wise"
    ctx2 = PassContext(ctx.model, plan=ctx.plan)
    PassManager([make_pass("plan-24", layers={"names": ["conv1"]})]).run(ctx2)
    entry = ctx2.plan.entries["w1"]
    assert entry.pattern == "2:4" and entry.details["combined_with"] == "group-wise"
    assert not entry.mask[:, :4].any()
    groups = np.moveaxis(entry.mask[:, 4:], 1, -1).reshape(-1, 4)
    assert np.all(groups.sum(axis=1) == 2)


def test_plan_24_kernel_width_layout_is_not_tensorrt_layout():
    ctx, records = _run(small_cnn(), [make_pass("plan-24", layout="kernel-width"), make_pass("apply-plan")])
    skipped = {s.layer: s.reason for s in records["plan-24"].result.skipped}
    assert "C_in*kh*kw = 54" in skipped["conv0"]
    w1 = _weights(ctx.model)["w1"]
    assert np.all(np.count_nonzero(w1.reshape(16, -1, 4), axis=2) == 2)
    assert any("not TensorRT" in note for note in records["plan-24"].result.notes)


def test_plan_24_rejects_unknown_layout():
    with pytest.raises(OptionError, match="layout"):
        make_pass("plan-24", layout="rows")


def test_check_24_reports_per_weight():
    ctx, records = _run(small_cnn(), [make_pass("check-24"), make_pass("plan-24"), make_pass("apply-plan"),
                                      make_pass("check-24")])
    # records keyed by name keep the last check-24
    after = records["check-24"].result
    assert after.details["two_four"] == ["w1", "wf", "wp"]
    assert after.details["weights"]["wd"]["eligible"] is False
    assert "depthwise" in after.details["weights"]["wd"]["reason"]
    assert records["check-24"].status == "unchanged"


def test_check_24_before_pruning_finds_nothing():
    _, records = _run(small_cnn(), [make_pass("check-24")])
    assert records["check-24"].result.details["two_four"] == []


def _max_rel_diff(a_model, b_model, seed=0):
    backend = OrtBackend(threads=1)
    a, b = backend.load(a_model.to_bytes()), backend.load(b_model.to_bytes())
    feeds = {"x": np.random.default_rng(seed).standard_normal((1, 6, 6, 6)).astype(np.float32)}
    ref, out = a.run(feeds)["y"], b.run(feeds)["y"]
    return float(np.abs(ref - out).max() / np.abs(ref).max())


@pytest.mark.parametrize("trans_b", [True, False])
def test_permute_channels_is_exact_and_raises_kept_magnitude(trans_b):
    proto = small_cnn(trans_b)
    original = model_from_proto(proto)
    before = _weights(original)
    ctx, records = _run(proto, [make_pass("permute-channels-24")])  # the PassManager verifies exactness
    record = records["permute-channels-24"]
    assert record.status == "ran" and record.result.rewrites >= 1
    assert record.verification["mode"] == "exact" and record.verification["passed"]
    assert _max_rel_diff(original, ctx.model) <= TOLERANCE
    after = _weights(ctx.model)
    per_layer = record.result.details["per_layer"]
    ops = {"conv1": ("w1", "Conv", False), "pw": ("wp", "Conv", False), "fc": ("wf", "Gemm", trans_b)}
    for node, stats in per_layer.items():
        name, op, tb = ops[node]
        assert kept_magnitude(after[name], op, tb) == pytest.approx(stats["kept_after"], rel=1e-5)
        assert kept_magnitude(before[name], op, tb) == pytest.approx(stats["kept_before"], rel=1e-5)
        assert stats["kept_after"] > stats["kept_before"]
    assert record.result.details["average_gain"] > 0
    # the same weights, reordered: the producer of a permuted group holds the same filters
    assert sorted(np.abs(after["w1"]).sum(axis=(1, 2, 3))) == pytest.approx(
        sorted(np.abs(before["w1"]).sum(axis=(1, 2, 3))))


def test_permute_then_plan_keeps_more_than_plan_alone():
    proto = small_cnn()
    plain, _ = _run(proto, [make_pass("plan-24"), make_pass("apply-plan")])
    permuted, _ = _run(proto, [make_pass("permute-channels-24"), make_pass("plan-24"),
                                     make_pass("apply-plan")])
    kept_plain = sum(np.abs(_weights(plain.model)[w]).sum() for w in ("w1", "wp", "wf"))
    kept_permuted = sum(np.abs(_weights(permuted.model)[w]).sum() for w in ("w1", "wp", "wf"))
    assert kept_permuted > kept_plain


def test_permute_drops_plan_entries_of_reordered_weights():
    ctx, records = _run(small_cnn(), [make_pass("plan-24"), make_pass("permute-channels-24")])
    dropped = records["permute-channels-24"].result.details["plan_entries_dropped"]
    assert set(dropped) <= {"w1", "wp", "wf"} and dropped
    assert not set(dropped) & set(ctx.plan.entries)


def test_permute_lists_groups_it_cannot_edit():
    # conv1's output is also a graph output: its channels (read by pw) must keep their order
    proto = small_cnn()
    proto.graph.output.append(helper.make_tensor_value_info("r1", 1, [1, 16, 6, 6]))
    ctx, records = _run(proto, [make_pass("permute-channels-24")])
    result = records["permute-channels-24"].result
    assert "pw" not in result.details["per_layer"]
    reasons = [s.reason for s in result.skipped]
    assert len(reasons) == 1 and "output" in reasons[0]
    # the depthwise weight belongs to that group only: untouched
    assert np.array_equal(_weights(ctx.model)["wd"], _weights(model_from_proto(proto))["wd"])


def test_permute_targets_follow_the_selector():
    proto = small_cnn()
    ctx, records = _run(proto, [make_pass("permute-channels-24", layers={"names": ["fc"]})])
    assert set(records["permute-channels-24"].result.details["per_layer"]) == {"fc"}
    assert np.array_equal(_weights(ctx.model)["w1"], _weights(model_from_proto(proto))["w1"])


def lookalike_model():
    """A 2-D conv chain plus a 4-D conv and a Gemm with transA=1: look like weight layers, are not."""
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="head"),
        helper.make_node("Conv", ["s", "w4d"], ["y1"], name="conv4d"),
        helper.make_node("Gemm", ["a", "wa"], ["y2"], name="gemm_ta", transA=1),
    ]
    inits = [init("w0", randn(8, 4, 3, 3)), init("b0", randn(8)), init("w1", randn(16, 8, 3, 3)),
             init("b1", randn(16)), init("w2", randn(4, 16, 1, 1)), init("w4d", randn(8, 4, 3, 3, 3, 3)),
             init("wa", randn(8, 4))]
    return make_model(nodes, [("x", [1, 4, 6, 6]), ("s", [1, 4, 4, 4, 4, 4]), ("a", [8, 1])],
                      [("y", [1, 4, 6, 6]), ("y1", [1, 8, 2, 2, 2, 2]), ("y2", [1, 4])], inits)


@pytest.mark.parametrize("name", ["plan-24", "check-24"])
def test_lookalike_layers_are_listed_not_dropped(name):
    ctx, records = _run(lookalike_model(), [make_pass(name)])
    skipped = {s.layer: s.reason for s in records[name].result.skipped}
    assert skipped["conv4d"] == ("Conv not a weight layer: 4-D convolution; 1-D, 2-D and 3-D convolutions are "
                                 "weight layers")
    assert skipped["gemm_ta"] == "Gemm not a weight layer: transA=1 (input transposed) is not handled"
    if name == "plan-24":
        assert sorted(ctx.plan.entries) == ["w0", "w1", "w2"]
