"""``to-fp16``: cast the graph to FP16 for a strongly typed TensorRT 11 engine (verified at FP16 tolerances).

TensorRT 11 networks are strongly typed: the ONNX graph's types are the engine's types (no
precision flags), so an FP16 engine needs an FP16 graph. The cast is done by
**onnxconverter-common's** ``float16.convert_float_to_float16``, chosen over ModelOpt's AutoCast:
it is already a dependency (the verification backends use onnxruntime-extensions from the same
family), small, pure ONNX (no GPU, no calibration data), and it casts every float initializer and
value type without running the model, which is what a graph of convolutions and GEMMs needs;
AutoCast's strength, keeping numerically sensitive nodes in FP32 from reference runs on
calibration data, would pull in ModelOpt and its CUDA-oriented dependencies for no node this
compiler emits. Nodes that must stay FP32 are named with ``op_block_list`` / ``node_block_list``.

sparsecc plugin nodes: their float inputs (weights, bias) and outputs become FP16 like any other
node's, and their int32 kept lists are left as they are (the converter casts float tensors only);
the pass checks every plugin node afterwards with ``check_plugin_node`` (FP16 data, int32 indices,
one float type per node) and refuses a graph that breaks it. A plugin op in ``op_block_list``
would get Casts around it and run in FP32, which TensorRT's plugin supports too; it is refused
here unless asked for, since the engine is meant to be FP16.

Options::

    - to-fp16                                    # graph inputs/outputs stay FP32, Casts at the edges
    - to-fp16: {op_block_list: [Softmax], node_block_list: [head/conv]}

``keep_io_types: false`` (FP16 graph inputs and outputs) is available from the Python API
(:func:`convert_to_fp16`); in a compile it is refused, because every compile is verified against
the original model on the same inputs, which an FP16 input cannot be fed to.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

import sparsecc.plugins  # noqa: F401  (plugin references: the check runs sparsecc-domain nodes through them)
from sparsecc.errors import OptionError, UnsupportedModelError, VerificationError
from sparsecc.model import Model
from sparsecc.passmanager import Pass, PassContext, PassResult, Role, register_pass
from sparsecc.plugins.ops import NAMESPACE, PLUGIN_OPS, check_plugin_node
from sparsecc.verify import VerifyConfig, compare_models, input_specs, verification_backend

NAME = "to-fp16"


def value_types(proto: onnx.ModelProto) -> dict[str, int]:
    """ONNX elem type of every typed tensor of the main graph (initializers, inputs, outputs, value_info)."""
    graph = proto.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def plugin_problems(proto: onnx.ModelProto) -> list[str]:
    """Every sparsecc plugin node's mismatch with its registered signature, with value types."""
    types = value_types(proto)
    return [f"{node.name}: {problem}" for node in proto.graph.node if node.domain == NAMESPACE
            for problem in check_plugin_node(node, types)]


def convert_to_fp16(proto: onnx.ModelProto, keep_io_types: bool = True, op_block_list: list[str] | None = None,
                    node_block_list: list[str] | None = None) -> onnx.ModelProto:
    """The model with its float32 tensors cast to float16 (onnxconverter-common), plugin nodes checked.

    Args:
        proto: The model (not modified).
        keep_io_types: Keep float32 graph inputs and outputs (Casts at the edges). Defaults to True.
        op_block_list: Op types kept in float32 (Casts around them). Defaults to none: TensorRT runs
            every op sparsecc emits in FP16 (the converter's own default list is for ONNX Runtime).
        node_block_list: Node names kept in float32. Defaults to none.

    Raises:
        UnsupportedModelError: A plugin node does not match its signature after the cast.
    """
    try:
        from onnxconverter_common import float16
    except ImportError:
        from sparsecc.errors import BackendUnavailableError, install_hint

        raise BackendUnavailableError("the FP16 cast for TensorRT needs onnxconverter-common, which is not installed",
                                      fix=install_hint("tensorrt", "onnxconverter-common")) from None

    converted = float16.convert_float_to_float16(
        proto, keep_io_types=keep_io_types, op_block_list=list(op_block_list or []),
        node_block_list=list(node_block_list or []), disable_shape_infer=False)
    # ONNX shape inference stops at each custom node: type its outputs, infer on, until nothing changes
    for _ in range(1 + sum(1 for node in converted.graph.node if node.domain == NAMESPACE)):
        if not _type_plugin_outputs(converted):
            break
        converted = onnx.shape_inference.infer_shapes(converted, strict_mode=False)
    problems = plugin_problems(converted)
    if problems:
        raise UnsupportedModelError("after the FP16 cast, plugin nodes do not match their signatures: "
                                    + "; ".join(problems), where="to-fp16",
                                    fix="leave sparsecc plugin ops out of op_block_list / node_block_list")
    return converted


def _type_plugin_outputs(proto: onnx.ModelProto) -> bool:
    """Give plugin outputs the type of their weight (ONNX shape inference does not know the custom ops).

    The converter retypes only value_info it has; an untyped plugin output is then typed here, so
    the model says what TensorRT's parser will see. Returns whether any output was typed.
    """
    typed = False
    types = value_types(proto)
    known = {info.name for info in list(proto.graph.value_info) + list(proto.graph.output)}
    for node in proto.graph.node:
        if node.domain != NAMESPACE or node.op_type not in PLUGIN_OPS:
            continue
        weight = node.input[2] if node.op_type == "GroupwiseLinear" else node.input[1]
        for output in node.output:
            if output not in known and weight in types:
                proto.graph.value_info.append(onnx.helper.make_tensor_value_info(output, types[weight], None))
                typed = True
    return typed


@register_pass
class ToFp16(Pass):
    """Cast float32 tensors to float16 with onnxconverter-common (not exact: checked at FP16 tolerances).

    Args:
        keep_io_types: Keep float32 graph inputs/outputs. Defaults to True (False is refused in a
            compile: see the module docstring).
        op_block_list: Op types kept in float32. Defaults to none.
        node_block_list: Node names kept in float32. Defaults to none.
        allow_fp32_plugins: Allow plugin ops or nodes in the block lists. Defaults to False.
    """

    name = NAME
    role = Role.LOWER
    exact = False
    description = "Cast the graph to FP16 (onnxconverter-common) for strongly typed TensorRT; plugin nodes checked"

    def __init__(self, keep_io_types: bool = True, op_block_list: list[str] | None = None,
                 node_block_list: list[str] | None = None, allow_fp32_plugins: bool = False):
        if not keep_io_types:
            raise OptionError("to-fp16: keep_io_types: false is not available in a compile: the compiled model is "
                              "verified against the original on the same float32 inputs",
                              fix="keep float32 I/O (TensorRT casts at the edges), or call "
                                  "sparsecc.passes.to_fp16.convert_to_fp16(proto, keep_io_types=False) yourself")
        blocked = sorted(set(op_block_list or []) & set(PLUGIN_OPS))
        if blocked and not allow_fp32_plugins:
            raise OptionError(f"to-fp16: op_block_list names plugin ops {blocked}; they would run in FP32",
                              fix="drop them, or set allow_fp32_plugins: true")
        self.keep_io_types = True
        self.op_block_list = list(op_block_list or [])
        self.node_block_list = list(node_block_list or [])
        self.allow_fp32_plugins = bool(allow_fp32_plugins)

    def run(self, ctx: PassContext) -> PassResult:
        model = ctx.model
        floats = [t for t in model.graph.tensors().values()
                  if isinstance(t, gs.Constant) and t.values.dtype == np.float32]
        if not floats:
            return PassResult(False, notes=["no float32 constant: nothing to cast"])
        before = model.copy()
        converted = convert_to_fp16(model.to_onnx(), self.keep_io_types, self.op_block_list, self.node_block_list)
        model.graph = gs.import_onnx(converted)
        check = self._check(before, model)
        casts = sum(1 for n in model.graph.nodes if n.op == "Cast")
        notes = [f"{len(floats)} float32 constant(s) cast to float16 by onnxconverter-common; {casts} Cast node(s); "
                 f"graph inputs/outputs kept float32",
                 f"checked at FP16 tolerances: worst {check.describe_worst()}"]
        details: dict[str, Any] = {"converter": "onnxconverter-common float16.convert_float_to_float16",
                                   "op_block_list": self.op_block_list, "node_block_list": self.node_block_list,
                                   "fp16_check": check.to_dict()}
        return PassResult(True, len(floats), [], notes, details)

    @staticmethod
    def _check(before: Model, after: Model):
        """The FP16 graph against the FP32 one at FP16 tolerances; a failure stops the compile."""
        config = VerifyConfig().for_dtype("float16")
        result = compare_models(before, after, input_specs(before), config, verification_backend(before, after))
        if not result.passed:
            raise VerificationError(f"the FP16 graph disagrees with the FP32 one beyond FP16 tolerances: "
                                    f"{result.describe_worst()}", where=NAME,
                                    fix="keep the sensitive ops in FP32 with op_block_list / node_block_list, "
                                        "or build in FP32 (leave to-fp16 out)")
        return result
