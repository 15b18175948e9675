"""Canonicalisation passes: put every graph into the form the pruning passes expect.

Every difference between exporters (TorchScript or dynamo, Constant nodes or initializers,
de-duplicated constants reached through Identity nodes, weights computed by constant
subgraphs, old opsets) is absorbed here, once, for every model. All of them are exact and run,
verified, before any recipe's passes.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.errors import ModelLoadError
from sparsecc.graphutil import constant, constants_to_initializers, is_graph_output, optional_input
from sparsecc.model import CANONICAL_OPSET, Model
from sparsecc.passmanager import Pass, PassContext, PassManager, PassResult, Role, Skipped, make_pass, register_pass


@register_pass
class ConstantsToInitializers(Pass):
    """Turn Constant nodes into initializers, so weights given as Constant nodes are recognised."""

    name = "constants-to-initializers"
    role = Role.REWRITE
    exact = True
    description = "Constant nodes become initializers (weights exported as Constant nodes are then recognised)"

    def run(self, ctx: PassContext) -> PassResult:
        converted, left = constants_to_initializers(ctx.model.graph)
        skipped = [Skipped(node, why) for node, why in left]
        return PassResult(converted > 0, converted, skipped, [f"{converted} Constant node(s) became initializers"])


@register_pass
class UpgradeOpset(Pass):
    """Convert a model below the supported opsets with ``onnx.version_converter``.

    Old files (opset 7 and 8) are upgraded rather than refused; the pass manager checks the
    converted graph against the original on ONNX Runtime like any other exact pass.
    """

    name = "upgrade-opset"
    role = Role.REWRITE
    exact = True
    description = f"Models below opset 9 are converted to opset {CANONICAL_OPSET} (onnx.version_converter)"

    def run(self, ctx: PassContext) -> PassResult:
        from sparsecc.model import SUPPORTED_OPSETS

        old = ctx.model.opset()
        if old >= SUPPORTED_OPSETS.start:
            return PassResult(False, notes=[f"opset {old} needs no conversion"])
        ctx.model.graph = upgraded_graph(ctx.model, CANONICAL_OPSET)
        return PassResult(True, 1, notes=[f"opset {old} converted to {CANONICAL_OPSET}"],
                          details={"from": old, "to": CANONICAL_OPSET})


def upgraded_graph(model: Model, target: int) -> gs.Graph:
    """The model's graph converted to opset ``target``, or a ModelLoadError naming what failed."""
    import onnx
    from onnx import version_converter

    proto = gs.export_onnx(model.graph)
    try:
        converted = version_converter.convert_version(proto, target)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises RuntimeError or its C++ errors; all mean "cannot"
        raise ModelLoadError(
            f"onnx.version_converter cannot convert this opset-{model.opset()} model to opset {target}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
            where=model.source, fix="re-export the model from its framework with opset_version=17") from None
    return gs.import_onnx(converted)


# Quantized weights stay quantized: folding DequantizeLinear would turn int8 weights into
# float ones (exact, but the model would lose what quantization gave it).
_NEVER_FOLDED = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_FOLD_SIZE_LIMIT = 1 << 29  # bytes: a constant subgraph that would expand beyond this stays a subgraph


@register_pass
class FoldConstants(Pass):
    """Fold constant subgraphs into initializers with onnx-graphsurgeon's ``fold_constants``.

    Covers ``Identity`` of a constant (the TorchScript exporter's de-duplicated weights and
    biases), and weights computed from constants (``ConstantOfShape``, ``Reshape``, ``Cast``,
    ``Transpose`` ...), which would otherwise not be recognised as weights. Quantize and
    dequantize nodes are never folded.
    """

    name = "fold-constants"
    role = Role.REWRITE
    exact = True
    description = ("Constant subgraphs (Identity, Reshape, Cast, Transpose, ConstantOfShape ... of constants) "
                   "become initializers; Q/DQ nodes are kept")

    def run(self, ctx: PassContext) -> PassResult:
        from sparsecc.backends.ort import quiet_onnxruntime

        quiet_onnxruntime()  # onnx-graphsurgeon folds with ONNX Runtime sessions of its own
        graph = ctx.model.graph
        before = len(graph.nodes)
        outputs = {id(t) for t in graph.outputs}

        def keep(node: gs.Node) -> bool:
            return node.op in _NEVER_FOLDED or any(id(t) in outputs for t in node.outputs)

        def fold(target: gs.Graph, flatten: bool) -> gs.Graph:
            return target.fold_constants(fold_shapes=True, error_ok=True, size_threshold=_FOLD_SIZE_LIMIT,
                                         should_exclude_node=keep, flatten_subgraphs=flatten).cleanup()

        if any(n.op == "If" for n in graph.nodes):
            # onnx-graphsurgeon inlines an If whose condition is constant, but loses the outputs of a
            # branch with several (silero-vad's decoder): inlined only when every input is still produced
            flattened = fold(graph.copy(), True)
            graph = ctx.model.graph = flattened if not _dangling_inputs(flattened) else fold(graph, False)
        else:
            fold(graph, True)
        folded = before - len(graph.nodes)
        kept = [Skipped(n.name or n.outputs[0].name, "quantization node: kept so the weights stay quantized")
                for n in graph.nodes if n.op in _NEVER_FOLDED
                and all(isinstance(t, gs.Constant) or t.is_empty() for t in n.inputs)]
        return PassResult(folded > 0, folded, kept, [f"{folded} node(s) of constant subgraphs folded"])


def _dangling_inputs(graph: gs.Graph) -> list[str]:
    """Names of node inputs that nothing produces (no node, graph input or constant)."""
    produced = {id(t) for n in graph.nodes for t in n.outputs} | {id(t) for t in graph.inputs}
    return [t.name for n in graph.nodes for t in n.inputs
            if isinstance(t, gs.Variable) and not t.is_empty() and id(t) not in produced]


# A constant with at most this many elements along its one long axis is a per-channel parameter
# (bias, scale, BatchNorm statistics), cheap to copy; anything larger shared by several nodes is a
# real tie (one weight used by several layers) and is kept.
_UNTIE_MAX_ELEMENTS = 1 << 16


def is_per_channel(values: np.ndarray) -> bool:
    """A float vector (one axis longer than 1, e.g. [C] or [1, C, 1, 1]): a bias, scale or BN parameter."""
    return (np.issubdtype(values.dtype, np.floating) and values.size > 1
            and sum(d > 1 for d in values.shape) == 1 and values.size <= _UNTIE_MAX_ELEMENTS)


@register_pass
class UntieSharedConstants(Pass):
    """Give every user of a shared per-channel constant its own copy; keep and list real weight ties.

    Exporters de-duplicate equal constants (every fresh BatchNorm folds into the same zero
    bias), so one bias can reach several Convs; pruning the channels of one would change
    the others, which blocks their channel groups. Weights shared by several layers (tied
    embeddings, reused convolutions) are real ties: they stay shared and are listed.
    """

    name = "untie-shared-constants"
    role = Role.REWRITE
    exact = True
    description = "Per-channel constants (biases, scales) shared by several nodes get one copy per node"

    def run(self, ctx: PassContext) -> PassResult:
        graph = ctx.model.graph
        copies, ties = 0, []
        for tensor in list(graph.tensors().values()):
            if not isinstance(tensor, gs.Constant):
                continue
            users = _distinct(tensor.outputs)
            if len(users) < 2:
                continue
            if not is_per_channel(tensor.values):
                if tensor.values.ndim >= 2 and np.issubdtype(tensor.values.dtype, np.floating):
                    names = [u.name or u.op for u in users]
                    ties.append(Skipped(tensor.name, f"weight shared by {len(users)} nodes {names}: a real "
                                                     "tie, kept shared (layers using it are not pruned)"))
                continue
            for user in users[1:]:  # the first user keeps the original name (plans made outside name it)
                copy = constant(graph, f"{tensor.name}.{user.name or user.op}", tensor.values.copy())
                for index, used in enumerate(list(user.inputs)):
                    if used is tensor:
                        user.inputs[index] = copy
                copies += 1
        return PassResult(copies > 0, copies, ties, [f"{copies} copy(ies) of shared per-channel constants made"])


def _distinct(nodes) -> list[gs.Node]:
    seen, result = set(), []
    for node in nodes:
        if id(node) not in seen:
            seen.add(id(node))
            result.append(node)
    return result


@register_pass
class FoldBatchNorm(Pass):
    """Fold BatchNormalization (inference mode) into the Conv that feeds only it."""

    name = "fold-batchnorm"
    role = Role.REWRITE
    exact = True
    description = "BatchNormalization after a Conv is folded into the Conv's weight and bias"

    def run(self, ctx: PassContext) -> PassResult:
        graph = ctx.model.graph
        folded, skipped = 0, []
        for bn in list(graph.nodes):
            if bn.op != "BatchNormalization":
                continue
            reason = self._why_not(graph, bn)
            if reason:
                skipped.append(Skipped(bn.name or bn.outputs[0].name, reason))
                continue
            self._fold(graph, bn.inputs[0].inputs[0], bn)
            folded += 1
        return PassResult(folded > 0, folded, skipped, [f"{folded} BatchNormalization node(s) folded into Conv"])

    @staticmethod
    def _why_not(graph: gs.Graph, bn: gs.Node) -> str | None:
        if int(bn.attrs.get("training_mode", 0)):
            return "training_mode=1"
        if any(len(out.outputs) or is_graph_output(graph, out) for out in bn.outputs[1:]):
            return "uses the running-statistics outputs"
        if not all(isinstance(t, gs.Constant) for t in bn.inputs[1:5]):
            return "scale, bias, mean or variance is not constant"
        source = bn.inputs[0]
        if not source.inputs or source.inputs[0].op != "Conv":
            producer = source.inputs[0].op if source.inputs else "a graph input"
            return f"input comes from {producer}, not a Conv (left unfused; ONNX Runtime fuses it where it can)"
        conv = source.inputs[0]
        if len(source.outputs) != 1 or is_graph_output(graph, source):
            return "the Conv output is also used elsewhere"
        bias = optional_input(conv, 2)
        if not isinstance(conv.inputs[1], gs.Constant) or (bias is not None and not isinstance(bias, gs.Constant)):
            return "the Conv weight or bias is not constant"
        if conv.inputs[1].values.shape[0] != bn.inputs[1].values.shape[0]:
            return "channel counts of Conv and BatchNormalization differ"
        return None

    @staticmethod
    def _fold(graph: gs.Graph, conv: gs.Node, bn: gs.Node) -> None:
        gamma, beta, mean, var = (t.values.astype(np.float64) for t in bn.inputs[1:5])
        eps = float(bn.attrs.get("epsilon", 1e-5))
        scale = gamma / np.sqrt(var + eps)
        weight = conv.inputs[1].values
        has_bias = optional_input(conv, 2) is not None
        bias = conv.inputs[2].values.astype(np.float64) if has_bias else np.zeros_like(mean)
        shape = (-1,) + (1,) * (weight.ndim - 1)
        new_weight = (weight.astype(np.float64) * scale.reshape(shape)).astype(weight.dtype)
        new_bias = ((bias - mean) * scale + beta).astype(weight.dtype)
        conv.inputs[1] = _replace_values(graph, conv.inputs[1], new_weight)
        if has_bias:
            conv.inputs[2] = _replace_values(graph, conv.inputs[2], new_bias)
        else:
            bias_tensor = constant(graph, f"{conv.name or conv.outputs[0].name}.bias", new_bias)
            while len(conv.inputs) < 2:
                conv.inputs.append(gs.Variable.empty())
            conv.inputs.append(bias_tensor)
        result = bn.outputs[0]
        bn.outputs.clear()
        conv.outputs = [result]


def _replace_values(graph: gs.Graph, tensor: gs.Constant, values: np.ndarray) -> gs.Constant:
    """New values for a constant: in place (keeping its name, so plans made outside sparsecc
    still name it) when nothing else reads it, else as a new constant."""
    if len(tensor.outputs) == 1:
        tensor.values = values
        return tensor
    return constant(graph, tensor.name, values)


CANONICAL_PASSES = ("upgrade-opset", "constants-to-initializers", "fold-constants", "untie-shared-constants",
                    "fold-batchnorm")


class Canonicalize(PassManager):
    """The canonical passes as one pipeline: every compile runs it first, and inspection runs it alone.

    Inside a compile's pipeline its passes are steps of the compile (verified, dumped and recorded
    one by one); run alone it is not verified (inspection only reads the result).

    Args:
        disabled: Names of canonical passes not to run. Defaults to none.
    """

    name = "canonicalize"
    description = "Canonicalise the graph: " + ", ".join(CANONICAL_PASSES)

    def __init__(self, disabled: tuple[str, ...] | list[str] = ()):
        super().__init__([make_pass(name) for name in CANONICAL_PASSES], disabled=disabled, verify=None)


def canonicalize(model) -> None:
    """Run the canonical passes in place, without verification (for analysis: inspect, reports).

    Compiles run the same pipeline inside theirs, verified.
    """
    Canonicalize().run(PassContext(model))
