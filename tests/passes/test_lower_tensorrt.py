"""lower-tensorrt and to-fp16: plugin nodes that match their registered signatures, verified on the CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import init
from onnx import TensorProto, helper

from sparsecc.errors import OptionError, VerificationError
from sparsecc.model import clamp_ir_version, model_from_proto
from sparsecc.passmanager import PassContext, PassManager, make_pass
from sparsecc.plugins.ops import GROUPWISE_CONV, GROUPWISE_LINEAR, NAMESPACE, check_plugin_node, op_attributes
from sparsecc.verify import VerifyConfig, compare_models, input_specs

ALL = {"layers": {"exclude_first_last": False}}


def _cnn(batch: int = 2, fp16: bool = False, depthwise: bool = True):
    """conv3x3 -> relu -> [depthwise] -> conv3x3 stride 2 -> relu -> flatten -> MatMul, written here."""
    rng = np.random.default_rng(0)
    dt = np.float16 if fp16 else np.float32
    t = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    inits = [init("W1", rng.standard_normal((16, 8, 3, 3)).astype(dt)), init("B1", rng.standard_normal(16).astype(dt)),
             init("W2", (0.3 * rng.standard_normal((16, 16, 3, 3))).astype(dt)),
             init("B2", rng.standard_normal(16).astype(dt)),
             init("FC", (0.1 * rng.standard_normal((16 * 4 * 4, 10))).astype(dt))]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"], name="relu1")]
    src = "ar"
    if depthwise:
        inits.append(init("DW", rng.standard_normal((16, 1, 3, 3)).astype(dt)))
        nodes.append(helper.make_node("Conv", ["ar", "DW"], ["d"], name="dw", group=16, pads=[1, 1, 1, 1]))
        src = "d"
    nodes += [helper.make_node("Conv", [src, "W2", "B2"], ["b"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
              helper.make_node("Relu", ["b"], ["br"], name="relu2"),
              helper.make_node("Flatten", ["br"], ["f"], name="flat"),
              helper.make_node("MatMul", ["f", "FC"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", t, [batch, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", t, [batch, 10])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    clamp_ir_version(proto)
    return model_from_proto(proto)


def _lower(model, **options):
    ctx = PassContext(model)
    passes = [make_pass("plan-groupwise", keep=0.5, **ALL), make_pass("apply-plan"),
              make_pass("lower-tensorrt", **options)]
    records = PassManager(passes).run(ctx).records
    return ctx, records[-1]


def _types(model) -> dict[str, int]:
    from sparsecc.passes.to_fp16 import value_types

    return value_types(model.to_onnx())


def test_lowered_nodes_match_the_plugin_signatures_and_verify():
    ctx, record = _lower(_cnn(), force=True)
    assert record.status == "ran" and record.verification["passed"]
    assert record.verification["backend"] != "onnxruntime"  # the plugin nodes ran through their references
    proto = ctx.model.to_onnx()
    plugins = [n for n in proto.graph.node if n.domain == NAMESPACE]
    assert sorted(n.op_type for n in plugins) == [GROUPWISE_CONV, GROUPWISE_CONV, GROUPWISE_LINEAR]
    types = _types(ctx.model)
    for node in plugins:
        assert check_plugin_node(node, types) == []
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert set(attrs) == set(op_attributes(node.op_type)) | {"plugin_namespace", "aot"}
        assert attrs["plugin_namespace"] == b"sparsecc" and attrs["aot"] == 1
    conv2 = next(n for n in plugins if "conv2" in n.name)
    attrs = {a.name: list(helper.get_attribute_value(a)) for a in conv2.attribute if a.name != "plugin_namespace"
             and a.name != "aot"}
    assert attrs == {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [1, 1]}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    kept = inits[conv2.input[2]]
    assert kept.dtype == np.int32 and kept.size == 16 * 9 // 2 and np.all(np.diff(kept) > 0)
    assert inits[conv2.input[1]].shape == (16, kept.size)
    assert any(t == "sparsecc" for t in (o.domain for o in proto.opset_import))
    # the lowered layers' work is still counted (inspect, report MACs)
    from sparsecc.inspection import inspect_model
    from sparsecc.counting import plugin_node_macs

    macs = plugin_node_macs(ctx.model)
    assert macs[conv2.name] == 2 * 16 * 4 * 4 * kept.size
    totals = inspect_model(ctx.model)["totals"]
    assert totals["plugin_nodes"] == 3 and totals["macs"] > totals["plugin_macs"] == sum(macs.values())
    skipped = {s.layer: s.reason for s in record.result.skipped}
    assert "depthwise" in skipped["dw"]


def test_a_wrong_kept_list_fails_verification():
    ctx, _ = _lower(_cnn(depthwise=False), force=True)
    lowered = ctx.model
    masked = PassContext(_cnn(depthwise=False))
    PassManager([make_pass("plan-groupwise", keep=0.5, **ALL), make_pass("apply-plan")]).run(masked)
    good = compare_models(masked.model, lowered, input_specs(lowered), VerifyConfig())
    assert good.passed, good.describe_worst()
    node = next(n for n in lowered.graph.nodes if n.op == GROUPWISE_CONV and "conv2" in n.name)
    kept = node.inputs[2].values
    kept[0] = next(p for p in range(16 * 9) if p not in set(kept.tolist()))  # a pruned row instead of a kept one
    kept.sort()
    bad = compare_models(masked.model, lowered, input_specs(lowered), VerifyConfig())
    assert not bad.passed


def test_layers_left_as_they_were_say_why():
    # the cost model at batch 1 on 8x8 images: every plugin loses to launch and memory time
    model = _cnn(batch=1)
    ctx, record = _lower(model)
    assert record.status in ("ran", "unchanged")
    skipped = {s.layer: s.reason for s in record.result.skipped}
    assert "not faster by the cost model" in skipped["conv2"]
    assert "depthwise" in skipped["dw"]
    assert not any(n.domain == NAMESPACE for n in ctx.model.graph.nodes)


def test_grouped_and_two_four_layers_stay():
    rng = np.random.default_rng(1)
    grouped = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    grouped[:, 1] = 0.0
    two_four = rng.standard_normal((8, 8, 1, 1)).astype(np.float32)
    two_four.reshape(8, 8)[:, [1, 2, 5, 6]] = 0.0  # 2 of every 4 input channels: 2:4 (and group-wise) sparse
    nodes = [helper.make_node("Conv", ["x", "G"], ["a"], name="grouped", group=2, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "T"], ["y"], name="two_four")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 8, 16, 16])],
                              [init("G", grouped), init("T", two_four)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    clamp_ir_version(proto)
    ctx = PassContext(model_from_proto(proto))
    record = PassManager([make_pass("lower-tensorrt", force=True, fold=False)]).run(ctx).records[-1]
    skipped = {s.layer: s.reason for s in record.result.skipped}
    assert "grouped conv (group=2)" in skipped["grouped"]
    assert "2:4" in skipped["two_four"] and "SPARSE_WEIGHTS" in skipped["two_four"]
    assert [n.op for n in ctx.model.graph.nodes] == ["Conv", "Conv"]


def test_the_cost_model_lowers_large_pruned_layers_and_keeps_small_ones():
    """A VGG-sized conv (batch 32, 256 channels, 56x56): compute-bound, the plugin at 50% kept wins."""
    from sparsecc.layers import find_weight_layers
    from sparsecc.lowering import LayerToLower, propose_all
    from sparsecc.lowering.plugins import PLUGIN_EFFICIENCY, GpuAnalyticCost, dense_gpu_candidate
    from sparsecc.passes.lower_tensorrt import _choose

    weight = np.random.default_rng(0).standard_normal((256, 256, 3, 3)).astype(np.float32)
    weight.reshape(256, -1)[:, ::2] = 0.0  # half the im2col rows

    def decide(batch, side, precision="fp16"):
        shape = [batch, 256, side, side]
        graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [init("W", weight)])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model = model_from_proto(proto)
        layer = find_weight_layers(model)[0][0]
        node = model.graph.nodes[0]
        view = LayerToLower(node, layer, weight, None, tuple(shape), tuple(shape))
        candidates = propose_all(view, dense_gpu_candidate(view), "tensorrt").candidates
        GpuAnalyticCost(precision).time(candidates)
        return candidates, _choose(candidates, 0.1, False)[0].name

    candidates, choice = decide(32, 56)
    dense, plugin = candidates
    assert choice == "groupwise-conv-plugin" and plugin.macs * 2 == dense.macs
    # compute-bound: the estimate is the MAC ratio over the plugin's assumed efficiency
    assert dense.seconds / plugin.seconds == pytest.approx(2 * PLUGIN_EFFICIENCY, rel=0.05)
    assert decide(1, 8)[1] == "dense"  # launch- and memory-bound: no gain
    assert decide(32, 56, "fp32")[1] == "groupwise-conv-plugin"


def test_to_fp16_keeps_int32_kept_lists_and_verifies_at_fp16_tolerances():
    ctx, _ = _lower(_cnn(), force=True)
    record = PassManager([make_pass("to-fp16")]).run(ctx).records[-1]
    assert record.status == "ran"
    assert record.result.details["fp16_check"]["passed"]
    proto = ctx.model.to_onnx()
    types = _types(ctx.model)
    plugins = [n for n in proto.graph.node if n.domain == NAMESPACE]
    assert len(plugins) == 3
    for node in plugins:
        assert check_plugin_node(node, types) == []
        assert types[node.input[0 if node.op_type != GROUPWISE_LINEAR else 0]] == TensorProto.FLOAT16
        assert all(types[name] != TensorProto.FLOAT for name in list(node.input) + list(node.output) if name in types)
    # Casts only at the graph's edges (float32 I/O), none around the plugin nodes' index inputs
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2 and {proto.graph.input[0].name, proto.graph.output[0].name} & \
        {name for c in casts for name in list(c.input) + list(c.output)}
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_to_fp16_refuses_what_it_cannot_verify_or_would_break():
    with pytest.raises(OptionError, match="keep_io_types"):
        make_pass("to-fp16", keep_io_types=False)
    with pytest.raises(OptionError, match="plugin ops"):
        make_pass("to-fp16", op_block_list=[GROUPWISE_CONV])


def test_an_fp16_graph_that_disagrees_fails_the_check(monkeypatch):
    from sparsecc.passes import to_fp16

    real = to_fp16.convert_to_fp16

    def broken(proto, *args, **kwargs):
        out = real(proto, *args, **kwargs)
        for tensor in out.graph.initializer:
            if tensor.name == "W1":
                values = onnx.numpy_helper.to_array(tensor) * 1.5
                tensor.CopyFrom(onnx.numpy_helper.from_array(values, "W1"))
        return out

    monkeypatch.setattr(to_fp16, "convert_to_fp16", broken)
    ctx = PassContext(_cnn(depthwise=False))
    with pytest.raises(VerificationError, match="FP16 tolerances"):
        PassManager([make_pass("to-fp16")]).run(ctx)


def test_lowering_an_fp16_graph_emits_fp16_plugins():
    ctx, record = _lower(_cnn(fp16=True, depthwise=False), force=True)
    assert record.verification["passed"] and record.verification["backend"] == "onnx-reference"
    types = _types(ctx.model)
    for node in ctx.model.to_onnx().graph.node:
        if node.domain == NAMESPACE:
            assert check_plugin_node(node, types) == []
            assert types[node.input[1]] in (TensorProto.FLOAT16, TensorProto.INT32)


@pytest.mark.parametrize("name", ["resnet18-digits", "vgg16-digits"])
@pytest.mark.parametrize("force", [False, True])
def test_recipe_compiles_the_zoo_models(tmp_path, name, force):
    from sparsecc.backends.ort import OrtBackend
    from sparsecc.compiler import compile_model
    from sparsecc.errors import UnsupportedModelError
    from sparsecc.zoo import checkpoint_path

    recipe = "tensorrt-groupwise-50"
    if force:  # every pruned layer as a plugin node, to check the lowering on a real network
        path = tmp_path / "forced.yaml"
        path.write_text("name: forced\ndescription: forced plugins\npasses:\n"
                        "  - plan-groupwise: {keep: 0.5, criterion: l1}\n  - apply-plan\n"
                        "  - lower-tensorrt: {force: true}\n  - to-fp16\n")
        recipe = str(path)
    result = compile_model(checkpoint_path(name), recipe, tmp_path / "out", shapes={"input": (2, 1, 32, 32)})
    records = {r.name: r for r in result.records}
    assert records["lower-tensorrt"].verification is None or records["lower-tensorrt"].verification["passed"]
    proto = onnx.load(str(result.model_path))
    plugins = [n for n in proto.graph.node if n.domain == NAMESPACE]
    if force:
        assert len(plugins) >= 10
        types = {t.name: t.data_type for t in proto.graph.initializer}
        assert all(check_plugin_node(n, types) == [] for n in plugins)
        assert all(types[n.input[1]] == TensorProto.FLOAT16 for n in plugins if n.op_type == GROUPWISE_CONV)
        with pytest.raises(UnsupportedModelError, match="plugin node"):  # ONNX Runtime alone cannot run it
            OrtBackend().load(str(result.model_path))
    else:  # batch 2 of 32x32 digits: launches dominate, the cost model keeps every layer dense
        assert plugins == []
        assert any("not faster by the cost model" in s.reason for s in records["lower-tensorrt"].result.skipped)
    assert result.report["verification"]["exact"]["passed"]


class _TorchNet:
    """Two convs and two Linears in PyTorch, written here (not from models/), with pruned groups."""

    @staticmethod
    def export(path, dynamo: bool, half: bool):
        torch = pytest.importorskip("torch")

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = torch.nn.Conv2d(3, 12, 3, padding=1)
                self.conv2 = torch.nn.Conv2d(12, 16, 3, padding=2, dilation=2, stride=2)
                self.fc1 = torch.nn.Linear(16 * 5 * 5, 24)
                self.fc2 = torch.nn.Linear(24, 7)

            def forward(self, x):
                x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
                return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))

        torch.manual_seed(0)
        net = Net().eval()
        with torch.no_grad():  # whole im2col rows / input features pruned, as group-wise pruning leaves them
            net.conv2.weight.view(16, -1)[:, 1::3] = 0.0
            net.fc1.weight[:, 40:200] = 0.0  # (every other feature would be 2:4, which stays a Gemm)
            net.fc2.weight[:, 3:9] = 0.0
        x = torch.randn(2, 3, 10, 10)
        if half:
            net, x = net.half(), x.half()
        torch.onnx.export(net, (x,), str(path), dynamo=dynamo, input_names=["x"], output_names=["y"])
        return path


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("half", [False, True])
def test_torch_exports_are_lowered_and_verified(tmp_path, dynamo, half):
    from sparsecc.compiler import compile_model

    path = _TorchNet.export(tmp_path / "net.onnx", dynamo, half)
    recipe = tmp_path / "plugins.yaml"
    recipe.write_text("name: plugins\ndescription: plugin nodes for the zeros already there\npasses:\n"
                      "  - lower-tensorrt: {force: true, fold: false}\n  - to-fp16\n")
    result = compile_model(path, str(recipe), tmp_path / "out", shapes={"x": (2, 3, 10, 10)})
    records = {r.name: r for r in result.records}
    lower = records["lower-tensorrt"]
    assert lower.status == "ran" and lower.verification["passed"]
    proto = onnx.load(str(result.model_path))
    plugins = sorted(n.op_type for n in proto.graph.node if n.domain == NAMESPACE)
    assert plugins == [GROUPWISE_CONV, GROUPWISE_LINEAR, GROUPWISE_LINEAR], lower.result.skipped
    types = {t.name: t.data_type for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.domain == NAMESPACE:
            assert check_plugin_node(node, types) == []
    skipped = {s.layer: s.reason for s in lower.result.skipped}
    assert any("no all-zero im2col row" in reason for reason in skipped.values())  # conv1 kept everything
    assert result.report["verification"]["exact"]["passed"]
    # what `sparsecc validate ENGINE --against model.onnx` runs the compiled model on, without TensorRT
    from sparsecc.backends.ort import OrtBackend
    from sparsecc.validate import original_session

    session, runtime = original_session(result.model_path)
    assert "numpy references" in runtime
    feed = {"x": np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype(np.float16 if half else np.float32)}
    expected = OrtBackend().load(str(path)).run(feed)["y"].astype(np.float64)
    got = session.run(feed)["y"].astype(np.float64)
    assert np.abs(got - expected).max() <= 1e-2 * np.abs(expected).max() + 1e-3


def _depthwise_model(channels: int = 40, batch: int = 2):
    """A masked depthwise conv (stride 2, pads, a partial last group of 32) between two pointwise convs."""
    rng = np.random.default_rng(3)
    dw = rng.standard_normal((channels, 1, 3, 3)).astype(np.float32)
    dw.reshape(channels, 9)[rng.random((channels, 9)) < 0.7] = 0.0  # unequal kept taps per channel and group
    dw[5] = 0.0  # a channel with no tap left
    nodes = [helper.make_node("Conv", ["x", "P1"], ["a"], name="pw1"),
             helper.make_node("Relu", ["a"], ["ar"], name="relu"),
             helper.make_node("Conv", ["ar", "DW", "DB"], ["d"], name="dw", group=channels, pads=[1, 0, 1, 2],
                              strides=[2, 2]),
             helper.make_node("Conv", ["d", "P2"], ["y"], name="pw2")]
    graph = helper.make_graph(nodes, "dsc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 6, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8, 5, 5])],
                              [init("P1", rng.standard_normal((channels, 6, 1, 1)).astype(np.float32)),
                               init("DW", dw), init("DB", rng.standard_normal(channels).astype(np.float32)),
                               init("P2", rng.standard_normal((8, channels, 1, 1)).astype(np.float32))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    clamp_ir_version(proto)
    return model_from_proto(proto), dw


def test_a_masked_depthwise_conv_becomes_one_depthwise_subgemm_node():
    from sparsecc.lowering.plugins import depthwise_subgemm_layout
    from sparsecc.plugins.ops import DEPTHWISE_SUBGEMM

    model, dw = _depthwise_model()
    ctx = PassContext(model)
    record = PassManager([make_pass("lower-tensorrt", force=True, fold=False)]).run(ctx).records[-1]
    assert record.status == "ran" and record.verification["passed"], record.verification
    proto = ctx.model.to_onnx()
    (node,) = [n for n in proto.graph.node if n.domain == NAMESPACE]
    assert node.op_type == DEPTHWISE_SUBGEMM and check_plugin_node(node, _types(ctx.model)) == []
    attrs = {a.name: list(helper.get_attribute_value(a)) for a in node.attribute if a.type == onnx.AttributeProto.INTS}
    assert attrs == {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 1, 2], "dilations": [1, 1]}
    wg, kept = depthwise_subgemm_layout(dw)
    per_group = [np.count_nonzero(dw[:32]), np.count_nonzero(dw[32:])]
    assert wg.shape == (2, 32, max(per_group)) and kept.shape == (2, max(per_group)) and kept.dtype == np.int32
    assert np.count_nonzero(wg) == np.count_nonzero(dw)  # each kept tap once, on its own channel's row
    skipped = {s.layer: s.reason for s in record.result.skipped}
    assert "no all-zero im2col row" in skipped["pw1"]  # the pointwise convs kept everything


def test_a_wrong_depthwise_layout_fails_verification():
    model, _ = _depthwise_model()
    ctx = PassContext(model)
    PassManager([make_pass("lower-tensorrt", force=True, fold=False)]).run(ctx)
    node = next(n for n in ctx.model.graph.nodes if n.domain == NAMESPACE)
    wg = node.inputs[1].values
    g, r, k = np.argwhere(wg != 0)[0]
    wg[g, (r + 1) % 32, k], wg[g, r, k] = wg[g, r, k], 0.0  # a kept tap on the neighbouring channel's row
    result = compare_models(_depthwise_model()[0], ctx.model, input_specs(ctx.model), VerifyConfig())
    assert not result.passed


def test_tensorrt_deprune_recipe_compiles_mobilenetv2(tmp_path):
    from sparsecc.compiler import compile_model
    from sparsecc.plugins.ops import DEPTHWISE_SUBGEMM
    from sparsecc.zoo import checkpoint_path

    result = compile_model(checkpoint_path("mobilenetv2-digits"), "tensorrt-deprune", tmp_path / "auto",
                           shapes={"input": (2, 1, 32, 32)})
    lower = next(r for r in result.records if r.name == "lower-tensorrt")
    reasons = [s.reason for s in lower.result.skipped]
    assert any("not faster by the cost model" in r for r in reasons)  # memory-bound depthwise on a GPU roofline
    forced = tmp_path / "forced.yaml"
    forced.write_text("name: forced\ndescription: every pruned depthwise layer as a plugin node\npasses:\n"
                      "  - plan-deprune: {method: dcp, dw_ratio: 0.8, pw_ratio: 0.5}\n  - apply-plan\n"
                      "  - remove-filters\n  - deprune-dead-channels\n  - lower-tensorrt: {force: true}\n  - to-fp16\n")
    result = compile_model(checkpoint_path("mobilenetv2-digits"), str(forced), tmp_path / "forced",
                           shapes={"input": (2, 1, 32, 32)})
    proto = onnx.load(str(result.model_path))
    types = {t.name: t.data_type for t in proto.graph.initializer}
    plugins = [n for n in proto.graph.node if n.domain == NAMESPACE]
    assert sum(n.op_type == DEPTHWISE_SUBGEMM for n in plugins) >= 5
    assert all(check_plugin_node(n, types) == [] for n in plugins)
    assert result.report["verification"]["exact"]["passed"]
