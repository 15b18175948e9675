"""plan-filters / remove-filters: plans over coupled groups, exact removal, refusals."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsecc.errors import OptionError
from sparsecc.passmanager import PassContext, PassManager, make_pass
from sparsecc.verify import VerifyConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
_spec = importlib.util.spec_from_file_location("dependency_graphs", Path(__file__).resolve().parents[1] /
                                               "test_dependency.py")
graphs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(graphs)

# remove-filters is exact: only the summation order of the smaller convs differs
EXACT = VerifyConfig(atol=1e-5, rtol=1e-5)
ALL_LAYERS = {"exclude_first_last": False}


def run(model, passes):
    ctx = PassContext(model)
    records = PassManager(passes, verify=EXACT).run(ctx).records
    return ctx, {r.name: r for r in records}


def test_plan_masks_producers_and_consumers():
    model = graphs.inverted_residual_se_model()
    ctx, records = run(model, [make_pass("plan-filters", ratio=0.5, scope="per-layer", round_to=1,
                                         layers=ALL_LAYERS)])
    assert records["plan-filters"].status == "unchanged"
    entries = ctx.plan.entries
    assert {e.pattern for e in entries.values()} == {"filter"}
    # expand group (16 channels): pw1, dw and se2 filters masked, pw2 and se1 input channels masked
    removed_pw1 = np.flatnonzero(~entries["pw1.w"].mask.reshape(16, -1).any(axis=1))
    assert len(removed_pw1) == 8
    assert np.array_equal(np.flatnonzero(~entries["dw.w"].mask.reshape(16, -1).any(axis=1)), removed_pw1)
    assert np.array_equal(np.flatnonzero(~entries["pw2.w"].mask.any(axis=(0, 2, 3))), removed_pw1)
    assert np.array_equal(np.flatnonzero(~entries["se1.w"].mask.any(axis=(0, 2, 3))), removed_pw1)
    skipped = {s.layer: s.reason for s in records["plan-filters"].result.skipped}
    assert "graph output" in skipped["head"]


@pytest.mark.parametrize("metric,scope", [("l1", "global"), ("l2", "per-layer"), ("hybrid2", "per-layer"),
                                          ("output-l1", "per-layer")])
def test_remove_filters_is_exact_and_consumes_plan(metric, scope):
    model = graphs.inverted_residual_se_model()
    ctx, records = run(model, [make_pass("plan-filters", metric=metric, ratio=0.4, scope=scope, round_to=2,
                                         layers=ALL_LAYERS),
                               make_pass("apply-plan"), make_pass("remove-filters")])
    record = records["remove-filters"]
    assert record.status == "ran" and record.verification["passed"] and record.verification["mode"] == "exact"
    groups = record.result.details["groups"]
    assert all(g["after"] < g["before"] and g["after"] % 2 == 0 for g in groups.values())
    assert len(ctx.plan) == 0 and record.result.details["dropped_plan_entries"]
    assert ctx.applied_plans[0].entries  # the applied plan survives for the report
    kept = {n.name: n.inputs[1].values.shape for n in ctx.model.graph.nodes if n.op == "Conv"}
    assert kept["dw"][0] == next(n for n in ctx.model.graph.nodes if n.name == "dw").attrs["group"]
    assert kept["pw1"][0] == kept["dw"][0] == kept["se2"][0] == kept["pw2"][1] == kept["se1"][1]


def test_flatten_gemm_removal_updates_reshape():
    model = graphs.flatten_gemm_model([1, 36])
    ctx, records = run(model, [make_pass("plan-filters", ratio=0.5, scope="per-layer", round_to=1,
                                         layers=ALL_LAYERS),
                               make_pass("apply-plan"), make_pass("remove-filters")])
    assert records["remove-filters"].verification["passed"]
    assert ctx.model.graph.tensors()["fc.w"].values.shape == (5, 18)
    reshape = next(n for n in ctx.model.graph.nodes if n.op == "Reshape")
    assert reshape.inputs[1].values.tolist() == [1, 18]


def test_ratio_removing_every_filter_is_refused_naming_the_layer():
    model = graphs.residual_model()
    with pytest.raises(OptionError, match=r"all 8 filters of layer 'stem \+ a'"):
        run(model, [make_pass("plan-filters", ratio=0.95, scope="per-layer", round_to=1, layers=ALL_LAYERS)])


def test_bad_options_rejected():
    for options in ({"ratio": 0.0}, {"ratio": 1.0}, {"metric": "entropy"}, {"scope": "local"},
                    {"round_to": 0}, {"layout": "rows"}, {"k": 2}):
        with pytest.raises(OptionError):
            make_pass("plan-filters", **options)


def test_remove_filters_without_filter_plan_is_unchanged():
    model = graphs.residual_model()
    from sparsecc.plan import SparsityPlan

    ctx = PassContext(model, plan=SparsityPlan())
    result = make_pass("remove-filters").run(ctx)
    assert not result.modified and result.rewrites == 0


def test_selector_leaves_groups_out_with_reason():
    model = graphs.residual_model()
    ctx, records = run(model, [make_pass("plan-filters", ratio=0.5, scope="per-layer", round_to=1,
                                         layers={"names": ["a"], "exclude_first_last": False})])
    skipped = {s.layer: s.reason for s in records["plan-filters"].result.skipped}
    assert "stem: not named by the selector" in skipped["stem + a"]
    assert ctx.plan is None or len(ctx.plan) == 0


def _torch_export(module, shape, tmp_path):
    torch = pytest.importorskip("torch")
    from sparsecc.model import load_model

    path = tmp_path / "m.onnx"
    module.eval()
    torch.onnx.export(module, torch.randn(*shape), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    return load_model(path)


def _canonical_then(model, passes):
    return run(model, [make_pass("constants-to-initializers"), make_pass("fold-batchnorm")] + passes)


def test_torch_residual_cnn(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(x + self.body(x))

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), Block(16), Block(16),
                        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
    model = _torch_export(net, (1, 3, 8, 8), tmp_path)
    ctx, records = _canonical_then(model, [make_pass("plan-filters", ratio=0.5, round_to=4, layers=ALL_LAYERS),
                                           make_pass("apply-plan"), make_pass("remove-filters")])
    assert records["remove-filters"].verification["passed"]
    assert records["remove-filters"].result.rewrites >= 3  # residual group, two inner convs, the 32-channel conv
    gemm = next(n for n in ctx.model.graph.nodes if n.op == "Gemm")
    assert gemm.inputs[1].values.shape[1] < 32 * 16


def test_torch_inverted_residual_se(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class InvertedResidualSE(nn.Module):
        def __init__(self, c, e):
            super().__init__()
            self.expand = nn.Sequential(nn.Conv2d(c, e, 1), nn.BatchNorm2d(e), nn.Hardswish())
            self.dw = nn.Sequential(nn.Conv2d(e, e, 3, padding=1, groups=e), nn.BatchNorm2d(e), nn.SiLU())
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(e, 8, 1), nn.ReLU(), nn.Conv2d(8, e, 1),
                                    nn.Sigmoid())
            self.project = nn.Sequential(nn.Conv2d(e, c, 1), nn.BatchNorm2d(c))

        def forward(self, x):
            h = self.dw(self.expand(x))
            return x + self.project(h * self.se(h))

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6(), InvertedResidualSE(16, 48),
                        InvertedResidualSE(16, 48), nn.Conv2d(16, 24, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(24, 5))
    model = _torch_export(net, (1, 3, 8, 8), tmp_path)
    ctx, records = _canonical_then(model, [make_pass("plan-filters", metric="l2", ratio=0.4, round_to=8,
                                                     layers=ALL_LAYERS),
                                           make_pass("apply-plan"), make_pass("remove-filters")])
    assert records["remove-filters"].verification["passed"]
    groups = records["remove-filters"].result.details["groups"]
    assert any(g["before"] == 48 and g["after"] < 48 for g in groups.values())
    depthwise = [n for n in ctx.model.graph.nodes if n.op == "Conv" and n.attrs.get("group", 1) > 1]
    assert all(n.attrs["group"] == n.inputs[1].values.shape[0] < 48 for n in depthwise)


def test_lookalike_layers_are_listed_not_dropped():
    from onnx import helper

    from graphs import init, make_model, randn
    from sparsecc.model import model_from_proto

    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["y"], name="head"),
             helper.make_node("Conv", ["s", "w4d"], ["y1"], name="conv4d"),
             helper.make_node("Gemm", ["a", "wa"], ["y2"], name="gemm_ta", transA=1)]
    inits = [init("w0", randn(8, 4, 3, 3)), init("w1", randn(4, 8, 1, 1)), init("w4d", randn(8, 4, 3, 3, 3, 3)),
             init("wa", randn(8, 4))]
    model = model_from_proto(make_model(nodes, [("x", [1, 4, 6, 6]), ("s", [1, 4, 4, 4, 4, 4]), ("a", [8, 1])],
                                        [("y", [1, 4, 6, 6]), ("y1", [1, 8, 2, 2, 2, 2]), ("y2", [1, 4])], inits))
    ctx, records = run(model, [make_pass("plan-filters", ratio=0.5, round_to=1, layers=ALL_LAYERS)])
    skipped = [(s.layer, s.reason) for s in records["plan-filters"].result.skipped]
    assert ("conv4d", "Conv not a weight layer: 4-D convolution; 1-D, 2-D and 3-D convolutions are weight "
                      "layers") in skipped
    assert ("gemm_ta", "Gemm not a weight layer: transA=1 (input transposed) is not handled") in skipped
    assert len(np.flatnonzero(~ctx.plan.entries["w0"].mask.reshape(8, -1).any(axis=1))) == 4


@pytest.mark.parametrize("metric", ["dominant-ratio", "preservation", "l1", "hybrid2"])
def test_dead_filter_is_planned_for_removal(metric):
    # before the fix, dominant-ratio scored the dead channel +inf and mean normalisation made it NaN
    model = graphs.residual_model()
    tensors = model.graph.tensors()
    for name in ("stem.w", "a.w"):  # stem and a are coupled by the residual Add: channel 3 is dead
        values = tensors[name].values.copy()
        values[3] = 0.0
        tensors[name].values = values
    ctx, _ = run(model, [make_pass("plan-filters", metric=metric, ratio=0.25, round_to=1, layers=ALL_LAYERS)])
    removed = np.flatnonzero(~ctx.plan.entries["stem.w"].mask.reshape(8, -1).any(axis=1))
    assert len(removed) == 2 and 3 in removed


def test_two_four_metrics_use_plan_24_eligibility():
    from sparsecc.dependency import build_channel_groups, producer_weights
    from sparsecc.layers import find_weight_layers
    from sparsecc.passes.filter_prune import two_four_prunable

    model = graphs.inverted_residual_se_model()
    layers = {layer.weight: layer for layer in find_weight_layers(model)[0]}
    groups = build_channel_groups(model)
    expand = graphs.by_producer(groups, "pw1")
    nodes = [u.node for u in expand.producers if u.kind == "weight"]
    flags = dict(zip(nodes, two_four_prunable(model, expand, layers, "input-channel")))
    assert flags == {"pw1": True, "dw": False, "se2": True}  # depthwise: never sparse in TensorRT
    assert len(flags) == len(producer_weights(model, expand))
    residual = graphs.by_producer(groups, "stem")
    flags = dict(zip([u.node for u in residual.producers if u.kind == "weight"],
                     two_four_prunable(model, residual, layers, "input-channel")))
    assert flags == {"stem": False, "pw2": True}  # stem reads C_in = 3
