"""Small helpers for editing onnx-graphsurgeon graphs (shared by passes)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import numpy_helper

_SCALAR_ATTRS = {"value_float": np.float32, "value_int": np.int64}
_LIST_ATTRS = {"value_floats": np.float32, "value_ints": np.int64}


def unique_name(graph: gs.Graph, base: str) -> str:
    """A tensor/node name not yet used in the graph, derived from ``base``."""
    taken = graph.__dict__.setdefault("_sparsecc_names", None)
    if taken is None:
        taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
        graph.__dict__["_sparsecc_names"] = taken
    name, index = base, 1
    while name in taken:
        name = f"{base}_{index}"
        index += 1
    taken.add(name)
    return name


def constant(graph: gs.Graph, base: str, values: np.ndarray) -> gs.Constant:
    return gs.Constant(unique_name(graph, base), np.ascontiguousarray(values))


def mark_provenance(node: gs.Node, pass_name: str) -> gs.Node:
    """Record which pass made a node, as the prefix ``<pass>/`` of its name.

    onnx-graphsurgeon nodes carry no ``metadata_props``, so the name is the provenance that survives
    export (and the report and --dump-dir graphs show it).
    """
    node.name = node.name if node.name.startswith(f"{pass_name}/") else f"{pass_name}/{node.name}"
    return node


def optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    """The node's input ``index`` (a Conv's bias, a Gemm's C), or None when it is absent or empty."""
    return node.inputs[index] if len(node.inputs) > index and not node.inputs[index].is_empty() else None


def is_graph_output(graph: gs.Graph, tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def subgraphs(graph: gs.Graph):
    """The bodies of the graph's control-flow nodes (If branches, Loop and Scan bodies), nested ones too."""
    for node in graph.nodes:
        for value in node.attrs.values():
            for body in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(body, gs.Graph):
                    yield body
                    yield from subgraphs(body)


def all_tensors(graph: gs.Graph) -> list[gs.Tensor]:
    """The tensors of the graph and of every subgraph in it (weights used only inside If/Loop/Scan)."""
    tensors = list(graph.tensors().values())
    for body in subgraphs(graph):
        tensors.extend(body.tensors().values())
    return tensors


def constant_node_value(node: gs.Node) -> np.ndarray | None:
    """The value of a Constant node, or None when it is given by an attribute sparsecc does not read."""
    attrs = node.attrs
    if "value" in attrs:
        value = attrs["value"]
        return value.values if isinstance(value, gs.Constant) else np.asarray(value)
    for key, dtype in _SCALAR_ATTRS.items():
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key, dtype in _LIST_ATTRS.items():
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    if "sparse_value" in attrs:
        return numpy_helper.to_array(attrs["sparse_value"]) if hasattr(attrs["sparse_value"], "dims") else None
    return None


def constants_to_initializers(graph: gs.Graph) -> tuple[int, list[tuple[str, str]]]:
    """Turn the graph's Constant nodes into initializers (weights written as Constant nodes are then weights).

    Returns how many were turned, and (node, why) for each Constant node left as it is.
    """
    converted, left = 0, []
    for node in list(graph.nodes):
        if node.op != "Constant":
            continue
        output = node.outputs[0]
        value = constant_node_value(node)
        if value is None:
            left.append((node.name, "Constant with an attribute sparsecc does not read; left as is"))
            continue
        if is_graph_output(graph, output):
            left.append((node.name, "its output is a graph output; left as a Constant node"))
            continue
        node.outputs.clear()
        output.to_constant(np.asarray(value))
        converted += 1
    return converted, left
