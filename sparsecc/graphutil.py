"""Small helpers for editing onnx-graphsurgeon graphs (shared by passes)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


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
