"""The three sparsecc plugin operators: names, ONNX signatures, attribute checks and output shapes.

Pure Python and numpy (no triton, no tensorrt), so a pass can emit plugin nodes, and a test can check
them, anywhere. Each op is one TensorRT Quickly Deployable Plugin ``sparsecc::<op_type>``; in ONNX a
node is mapped to it by op_type = the plugin name plus the string attribute ``plugin_namespace`` =
"sparsecc" (and ``aot`` = 1 for the ahead-of-time implementation). The node's domain is "sparsecc"
too, so ONNX Runtime and the references registry see one custom domain.

Attributes are ints or lists of ints only: an AOT plugin's attributes are not serialised into the
engine, so the AOT implementation turns each one into an int32 kernel argument at build time; a
float attribute could not travel that way.

``GroupwiseConv``  Y = conv(X, W masked to the kept im2col rows) + B, as an implicit GEMM:
    X [N, C, H, W]; Wk [Cout, K'] (the weight's kept im2col rows, one column per kept position);
    kept int32 [K'] (position c * kh * kw + i * kw + j of each kept row, ascending); B [Cout].
``GroupwiseLinear``  Y = X[..., kept] @ Wk + B:
    X [..., Kin]; kept int32 [K'] (kept input features); Wk [K', Nout]; B [Nout].
``DepthwiseSubGemm``  DEPrune's diagonal-wise refactored depthwise conv, one 32 x K' sub-GEMM per
    group of 32 channels (the last group may be partial): X [N, C, H, W]; Wg [G, 32, K'] (row r of
    group g is output channel 32 g + r; a column is nonzero only on its own channel's row);
    kept int32 [G, K'] (position c' * kh * kw + i * kw + j inside the group's 32 * kh * kw range);
    B [C]; G = ceil(C / 32). Columns that pad a group to the common K' carry zero weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsecc.errors import BackendUnavailableError, UnsupportedModelError
from sparsecc.plugins.references import DOMAIN, OpSignature

__all__ = ["NAMESPACE", "DW_GROUP", "GROUPWISE_CONV", "GROUPWISE_LINEAR", "DEPTHWISE_SUBGEMM", "PLUGIN_OPS",
           "SIGNATURES", "PARSER_ATTRS", "op_attributes", "PluginAttributeError", "PluginRegistrationError",
           "ConvGeometry", "as_int", "as_ints", "conv_geometry", "plugin_node_attributes", "check_plugin_node",
           "find_plugin_nodes"]

NAMESPACE = DOMAIN          # the QDP namespace and the ONNX domain: "sparsecc"
DW_GROUP = 32               # DEPrune's sub-GEMM height (one GPU tile)
INT32_MAX = 2 ** 31 - 1

GROUPWISE_CONV = "GroupwiseConv"
GROUPWISE_LINEAR = "GroupwiseLinear"
DEPTHWISE_SUBGEMM = "DepthwiseSubGemm"
PLUGIN_OPS = (GROUPWISE_CONV, GROUPWISE_LINEAR, DEPTHWISE_SUBGEMM)

# What TensorRT's ONNX parser reads to pick the plugin and its implementation (not op attributes).
PARSER_ATTRS = {"plugin_namespace": str, "aot": int}
_CONV_ATTRS = {"kernel_shape": list, "strides": list, "pads": list, "dilations": list}
SIGNATURES: dict[str, OpSignature] = {
    GROUPWISE_CONV: OpSignature(inputs=("X", "Wk", "kept", "B"), outputs=("Y",),
                                attributes={**_CONV_ATTRS, **PARSER_ATTRS}),
    GROUPWISE_LINEAR: OpSignature(inputs=("X", "kept", "Wk", "B"), outputs=("Y",), attributes=dict(PARSER_ATTRS)),
    DEPTHWISE_SUBGEMM: OpSignature(inputs=("X", "Wg", "kept", "B"), outputs=("Y",),
                                   attributes={**_CONV_ATTRS, **PARSER_ATTRS}),
}


def op_attributes(op_type: str) -> list[str]:
    """The op's own attributes (what the kernel needs), without the parser's plugin_namespace / aot."""
    return [name for name in SIGNATURES[op_type].attributes if name not in PARSER_ATTRS]

# Input positions holding the int32 kept-position list (every other input is float16/float32, one type per node).
INDEX_INPUTS = {GROUPWISE_CONV: 2, GROUPWISE_LINEAR: 1, DEPTHWISE_SUBGEMM: 2}


class PluginAttributeError(UnsupportedModelError):
    """A plugin node's attribute or input shape is outside what its kernel supports."""


class PluginRegistrationError(BackendUnavailableError):
    """The sparsecc plugins could not be registered with this TensorRT (too old, or its plugin layer refused them)."""


def as_int(value: Any, name: str, where: str = "plugin node") -> int:
    """One int from an int, a numpy scalar, or a 1-element array (TensorRT's plugin fields arrive as arrays)."""
    array = np.asarray(value)
    if array.size != 1 or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)):
        raise PluginAttributeError(f"attribute '{name}' must be one integer, got {value!r}", where=where,
                                   fix=f"give '{name}' as an int")
    return int(array.reshape(-1)[0])


def as_ints(value: Any, name: str, length: int, where: str = "plugin node") -> tuple[int, ...]:
    """A tuple of ``length`` ints from a list, tuple or array (int32 or int64)."""
    array = np.asarray(value).reshape(-1)
    if array.size != length or not np.issubdtype(array.dtype, np.integer):
        raise PluginAttributeError(f"attribute '{name}' must be {length} integers, got {value!r}", where=where,
                                   fix=f"give '{name}' as a list of {length} ints")
    return tuple(int(v) for v in array)


@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one plugin convolution, every one of them an int32 kernel argument."""

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    pads: tuple[int, int, int, int]   # ONNX order: top, left, bottom, right
    dh: int
    dw: int

    @property
    def oh(self) -> int:
        return (self.h + self.pads[0] + self.pads[2] - self.dh * (self.kh - 1) - 1) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pads[1] + self.pads[3] - self.dw * (self.kw - 1) - 1) // self.sw + 1


def conv_geometry(x_shape, kernel_shape, strides, pads, dilations, where: str = "plugin node") -> ConvGeometry:
    """Check a plugin convolution's attributes against its input shape.

    Raises:
        PluginAttributeError: A value out of range (non-positive kernel, stride or dilation, negative
            padding, an empty output, or a size beyond int32).
    """
    if len(tuple(x_shape)) != 4:
        raise PluginAttributeError(f"input X must be 4-D [N, C, H, W], got shape {tuple(x_shape)}", where=where,
                                   fix="the plugin convolutions are 2-D; leave other convolutions as Conv")
    n, c, h, w = (int(d) for d in x_shape)
    kh, kw = as_ints(kernel_shape, "kernel_shape", 2, where)
    sh, sw = as_ints(strides, "strides", 2, where)
    pads4 = as_ints(pads, "pads", 4, where)
    dh, dw = as_ints(dilations, "dilations", 2, where)
    for name, values, low in (("kernel_shape", (kh, kw), 1), ("strides", (sh, sw), 1), ("dilations", (dh, dw), 1),
                              ("pads", pads4, 0)):
        if any(v < low or v > 65535 for v in values):
            raise PluginAttributeError(f"attribute '{name}' = {list(values)} is out of range ({low}..65535)",
                                       where=where, fix=f"use {name} from the Conv the node replaces")
    geometry = ConvGeometry(n, c, h, w, kh, kw, sh, sw, pads4, dh, dw)
    if geometry.oh < 1 or geometry.ow < 1:
        raise PluginAttributeError(f"the convolution has an empty output ({geometry.oh} x {geometry.ow}) for input "
                                   f"{h} x {w}", where=where, fix="check kernel_shape, pads, strides and dilations")
    if max(n * c * h * w, n * c * geometry.oh * geometry.ow) > INT32_MAX:
        raise PluginAttributeError("a tensor has more than 2^31 - 1 elements; the kernels index with int32",
                                   where=where, fix="run a smaller batch, or leave this layer as Conv")
    return geometry


def _check_kept(kept: np.ndarray, limit: int, name: str, where: str) -> None:
    if kept.size and (kept.min() < 0 or kept.max() >= limit):
        raise PluginAttributeError(f"input '{name}' holds positions outside 0..{limit - 1} "
                                   f"(min {kept.min()}, max {kept.max()})", where=where,
                                   fix="kept positions index the im2col rows (or input features) of the original layer")


def plugin_node_attributes(op_type: str, aot: bool = True, **attributes) -> dict[str, Any]:
    """The attributes of an ONNX node that TensorRT's parser maps to the plugin ``sparsecc::op_type``.

    Adds ``plugin_namespace`` and ``aot`` (what the parser reads) to the op's own int attributes,
    checked against its signature. A lowering pass builds nodes with this.
    """
    if op_type not in SIGNATURES:
        raise PluginAttributeError(f"unknown plugin op '{op_type}'", fix=f"choose one of {list(PLUGIN_OPS)}")
    expected = op_attributes(op_type)
    missing, extra = sorted(set(expected) - set(attributes)), sorted(set(attributes) - set(expected))
    if missing or extra:
        raise PluginAttributeError(f"{op_type} takes attributes {sorted(expected)}; missing {missing}, "
                                   f"unexpected {extra}", fix="pass exactly the op's attributes")
    out: dict[str, Any] = {}
    for name, value in attributes.items():
        out[name] = [int(v) for v in np.asarray(value).reshape(-1)]
    out["plugin_namespace"] = NAMESPACE
    out["aot"] = int(bool(aot))
    return out


def check_plugin_node(node, value_types: dict[str, int] | None = None) -> list[str]:
    """Problems with an ONNX NodeProto that claims to be a sparsecc plugin node (empty when it fits).

    Checks, without TensorRT: op_type is a registered plugin, domain and ``plugin_namespace`` are
    "sparsecc", the input/output counts match the signature, the attributes are exactly the signature's
    (ints) plus ``plugin_namespace`` / ``aot``, and, where ``value_types`` (tensor name -> ONNX
    elem type) is given, the kept positions are int32 and the other inputs and outputs share one
    float type (FP16 or FP32).
    """
    from onnx import AttributeProto, TensorProto

    problems = []
    if node.op_type not in SIGNATURES:
        return [f"op_type '{node.op_type}' is not a sparsecc plugin ({list(PLUGIN_OPS)})"]
    sig = SIGNATURES[node.op_type]
    if node.domain != NAMESPACE:
        problems.append(f"domain is '{node.domain}', expected '{NAMESPACE}'")
    if len(node.input) != len(sig.inputs) or len(node.output) != len(sig.outputs):
        problems.append(f"{len(node.input)} inputs / {len(node.output)} outputs, expected "
                        f"{list(sig.inputs)} / {list(sig.outputs)}")
    attrs = {a.name: a for a in node.attribute}
    namespace = attrs.get("plugin_namespace")
    if namespace is None or namespace.type != AttributeProto.STRING or namespace.s.decode() != NAMESPACE:
        problems.append(f"string attribute plugin_namespace='{NAMESPACE}' is missing or wrong")
    if "aot" in attrs and attrs["aot"].type != AttributeProto.INT:
        problems.append("attribute 'aot' must be an int (1 selects the AOT implementation)")
    for name in op_attributes(node.op_type):
        if name not in attrs:
            problems.append(f"attribute '{name}' is missing")
        elif attrs[name].type != AttributeProto.INTS:
            problems.append(f"attribute '{name}' must be a list of ints")
    extra = set(attrs) - set(sig.attributes)
    if extra:
        problems.append(f"unexpected attributes {sorted(extra)}")
    if value_types:
        floats = {TensorProto.FLOAT, TensorProto.FLOAT16}
        index_pos = INDEX_INPUTS[node.op_type]
        types = []
        for i, name in enumerate(list(node.input) + list(node.output)):
            t = value_types.get(name)
            if t is None:
                continue
            if i == index_pos:
                if t != TensorProto.INT32:
                    problems.append(f"input '{name}' (kept positions) must be int32, got "
                                    f"{TensorProto.DataType.Name(t)}")
            elif t not in floats:
                problems.append(f"tensor '{name}' must be float16 or float32, got {TensorProto.DataType.Name(t)}")
            else:
                types.append(t)
        if len(set(types)) > 1:
            problems.append("data inputs and outputs mix float16 and float32 (one type per node)")
    return problems


def find_plugin_nodes(model) -> list[tuple[str, str, str]]:
    """(node name, op_type, data type "float16"/"float32"/"?") of every sparsecc plugin node in an ONNX ModelProto.

    A node counts when its domain or its ``plugin_namespace`` attribute is "sparsecc" (functions and
    subgraphs included). The data type is read from the node's weight initializer.
    """
    from onnx import TensorProto

    found = []
    names = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}

    def visit(graph):
        init_types = {t.name: t.data_type for t in graph.initializer}
        for node in graph.node:
            namespace = next((a.s.decode() for a in node.attribute if a.name == "plugin_namespace"), None)
            if node.domain == NAMESPACE or namespace == NAMESPACE:
                weight = node.input[2] if node.op_type == GROUPWISE_LINEAR and len(node.input) > 2 else \
                    (node.input[1] if len(node.input) > 1 else "")
                found.append((node.name or f"<unnamed {node.op_type}>", node.op_type,
                              names.get(init_types.get(weight), "?")))
            for attr in node.attribute:
                if attr.g.node:
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(model.graph)
    for function in model.functions:
        for node in function.node:
            if node.domain == NAMESPACE:
                found.append((node.name or f"<unnamed {node.op_type}>", node.op_type, "?"))
    return found
