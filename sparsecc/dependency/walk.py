"""Graph walking helpers of the channel analysis: node names, broadcasting positions, node order."""

from __future__ import annotations

import onnx_graphsurgeon as gs


def node_key(node: gs.Node) -> str:
    """The node's name, or a stand-in built from its first output for unnamed nodes."""
    return node.name or f"<{node.op} -> {node.outputs[0].name}>"


def dim_from_right(shape, position: int) -> int | None:
    """Dimension ``position`` counted from the right (1 = last), None if the shape is shorter."""
    if shape is None or len(shape) < position:
        return None
    return int(shape[len(shape) - position])


def topological(graph: gs.Graph) -> list[gs.Node]:
    """Nodes in an order where producers come first (the graph itself is not modified)."""
    produced_by = {id(out): node for node in graph.nodes for out in node.outputs}
    order, seen = [], set()
    for root in graph.nodes:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in seen:
                continue
            if expanded:
                seen.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            for tensor in node.inputs:
                producer = produced_by.get(id(tensor))
                if producer is not None and id(producer) not in seen:
                    stack.append((producer, False))
    return order
