"""Bad and hostile inputs, built in code: models ONNX Runtime refuses, lying external data, plugin nodes
that do not fit their op, malformed recipes, plans and timing caches (for the safety probe)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from graphs import conv_bn_relu_fc, init, randn
from onnx import TensorProto, helper, numpy_helper

from sparsecc.plugins.ops import GROUPWISE_CONV, GROUPWISE_LINEAR, NAMESPACE, plugin_node_attributes


def conv_model(extra_nodes=(), extra_inputs=(), extra_outputs=(), extra_inits=(), weight=None, opsets=(),
               x_shape=(1, 4, 6, 6)) -> onnx.ModelProto:
    """x -> Conv(8, 3x3, pad 1) -> y, plus whatever a case adds beside it."""
    weight = randn(8, x_shape[1], 3, 3) if weight is None else weight
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1], name="conv0"), *extra_nodes]
    graph = helper.make_graph(
        nodes, "hostile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape)), *extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x_shape[0], 8, *x_shape[2:]]), *extra_outputs],
        [numpy_helper.from_array(np.asarray(weight), "W"), *extra_inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *opsets])
    model.ir_version = 8
    return model


def _value(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def duplicate_node_names() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["y"], ["r1"], name="twin"),
             helper.make_node("Relu", ["r1"], ["r2"], name="twin")]
    return conv_model(nodes, extra_outputs=[_value("r2", [1, 8, 6, 6])])


def custom_domain_op() -> onnx.ModelProto:
    nodes = [helper.make_node("Mystery", ["y"], ["z"], name="mystery0", domain="com.example")]
    return conv_model(nodes, extra_outputs=[_value("z", [1, 8, 6, 6])], opsets=[helper.make_opsetid("com.example", 1)])


def string_input() -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", ["s"], ["s2"], name="text0")]
    return conv_model(nodes, [_value("s", [1, 2], TensorProto.STRING)], [_value("s2", [1, 2], TensorProto.STRING)])


def kernel_larger_than_input() -> onnx.ModelProto:
    model = conv_model(weight=randn(8, 4, 5, 5), x_shape=(1, 4, 3, 3))
    model.graph.node[0].ClearField("attribute")  # no padding: a 5x5 kernel on a 3x3 image
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 1
    model.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 1
    return model


def fp16_weights_fp32_input() -> onnx.ModelProto:
    return conv_model(weight=randn(8, 4, 3, 3).astype(np.float16))


def non_finite_weights(value: float) -> onnx.ModelProto:
    weight = randn(8, 4, 3, 3)
    weight[2, 1, 0, 0] = value
    return conv_model(weight=weight)


def _external_tensor(folder: Path, name: str, location: str, dims: list[int],
                     values: np.ndarray | None = None) -> onnx.TensorProto:
    """A float tensor whose data lies in ``folder / location`` (``values``, or 1 KiB of zeros that no
    shape fits)."""
    data = values.tobytes() if values is not None else b"\0" * 1024
    (folder / location).write_bytes(data)
    tensor = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    tensor.data_location = TensorProto.EXTERNAL
    entries = [("location", location), ("offset", "0")] + ([("length", str(len(data)))] if values is not None else [])
    for key, value in entries:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def constant_with_external_data(folder: Path) -> Path:
    """A Constant node whose tensor lies in a file beside the model."""
    tensor = _external_tensor(folder, "c", "const.bin", [1, 8, 1, 1], randn(8))
    nodes = [helper.make_node("Constant", [], ["c"], name="const0", value=tensor),
             helper.make_node("Add", ["y", "c"], ["z"], name="add0")]
    return _save(conv_model(nodes, extra_outputs=[_value("z", [1, 8, 6, 6])]), folder / "constant-external.onnx")


def subgraph_with_external_data(folder: Path) -> Path:
    """An If node whose branch holds an initializer that lies in a file beside the model."""
    tensor = _external_tensor(folder, "bias", "branch.bin", [1, 8, 1, 1], randn(1, 8, 1, 1))
    then_branch = helper.make_graph([helper.make_node("Add", ["y", "bias"], ["t"], name="then_add")], "then", [],
                                    [_value("t", [1, 8, 6, 6])], [tensor])
    else_branch = helper.make_graph([helper.make_node("Identity", ["y"], ["e"], name="else_id")], "else", [],
                                    [_value("e", [1, 8, 6, 6])])
    nodes = [helper.make_node("If", ["flag"], ["z"], name="if0", then_branch=then_branch, else_branch=else_branch)]
    inits = [numpy_helper.from_array(np.array(True), "flag")]
    return _save(conv_model(nodes, extra_outputs=[_value("z", [1, 8, 6, 6])], extra_inits=inits),
                 folder / "subgraph-external.onnx")


def external_weights(folder: Path, name: str = "model.onnx", data: str = "weights.bin") -> Path:
    """The tiny conv/BN/FC model with every weight in one external file."""
    path = folder / name
    onnx.save(conv_bn_relu_fc(batch=1), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=data, size_threshold=0)
    return path


def truncated_external_data(folder: Path) -> Path:
    path = external_weights(folder, "truncated.onnx", "truncated.bin")
    data = folder / "truncated.bin"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    return path


def huge_declared_external_tensor(folder: Path) -> Path:
    """A weight declaring 1024 x 1024 x 1024 x 900 float32 (3.5 TiB) in a 1 KiB file."""
    tensor = _external_tensor(folder, "W", "tiny.bin", [1024, 1024, 1024, 900])
    model = conv_model()
    del model.graph.initializer[:]
    model.graph.initializer.append(tensor)
    return _save(model, folder / "huge.onnx")


def dynamic_image_model() -> onnx.ModelProto:
    """x[N, 4, H, W] -> Conv -> y: every size but the channels is given with --shape."""
    return conv_model(x_shape=("N", 4, "H", "W"))


def plugin_model(attributes_extra: dict | None = None, kept=None) -> onnx.ModelProto:
    """x[1, 8] -> MatMul -> GroupwiseLinear (a sparsecc plugin node) -> y."""
    attributes = plugin_node_attributes(GROUPWISE_LINEAR)
    attributes.update(attributes_extra or {})
    kept = np.arange(0, 8, 2, dtype=np.int32) if kept is None else np.asarray(kept, np.int32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc0"),
             helper.make_node(GROUPWISE_LINEAR, ["h", "kept", "wk", "b"], ["y"], name="gw_linear", domain=NAMESPACE,
                              **attributes)]
    inits = [init("W", randn(8, 8)), init("kept", kept), init("wk", randn(kept.size, 3)), init("b", randn(3))]
    return _plugin_graph(nodes, [_value("x", [1, 8])], [_value("y", [1, 3])], inits)


def plugin_conv_model(**conv_attrs) -> onnx.ModelProto:
    """x[1, 4, 6, 6] -> Conv -> GroupwiseConv (a sparsecc plugin node) with the given attributes -> z."""
    attributes = plugin_node_attributes(GROUPWISE_CONV, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                                        dilations=[1, 1])
    attributes.update(conv_attrs)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node(GROUPWISE_CONV, ["y", "wk", "kept", "b"], ["z"], name="gw_conv", domain=NAMESPACE,
                              **attributes)]
    inits = [init("W", randn(4, 4, 3, 3)), init("wk", randn(4, 36)), init("kept", np.arange(36, dtype=np.int32)),
             init("b", randn(4))]
    return _plugin_graph(nodes, [_value("x", [1, 4, 6, 6])], [_value("z", [1, 4, 6, 6])], inits)


def _plugin_graph(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "plugin", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(NAMESPACE, 1)])
    model.ir_version = 8
    return model


def alias_bomb_recipe(levels: int = 9) -> str:
    """A recipe of a few hundred bytes whose description expands to 10^levels strings."""
    parts = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    parts += [f"&a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]" for level in range(1, levels)]
    return "name: bomb\npasses: []\ndescription: [" + ", ".join(parts) + "]\n"


def plan_files(folder: Path, data) -> Path:
    """plan.json holding ``data`` (any JSON), with a valid empty mask file beside it."""
    path = folder / "plan.json"
    path.write_text(json.dumps(data))
    np.savez_compressed(folder / "plan.npz")
    return path


def zip_bomb_plan(folder: Path) -> Path:
    """A plan whose mask for a [4] weight is an .npz member that expands to 200 MB."""
    np.savez_compressed(folder / "bomb.npz", mask0=np.zeros(200_000_000, np.uint8))
    path = folder / "plan.json"
    path.write_text(json.dumps({"format": 1, "masks": "bomb.npz", "weights": [
        {"weight": "W", "layer": "conv0", "pattern": "group-wise", "shape": [4], "mask_key": "mask0"}]}))
    return path


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


