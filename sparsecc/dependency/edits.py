"""The edits of the channel analysis: read, reorder or remove the channels of a group everywhere at once."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.dependency.walk import node_key
from sparsecc.dependency.types import ChannelGroup
from sparsecc.errors import PlanError
from sparsecc.model import Model


# ---------------------------------------------------------------------------------------------
# Weights as the metrics see them
# ---------------------------------------------------------------------------------------------

def _constants(model: Model) -> dict[str, gs.Constant]:
    return {name: t for name, t in model.graph.tensors().items() if isinstance(t, gs.Constant)}


def producer_weights(model: Model, group: ChannelGroup) -> list[np.ndarray]:
    """The weights that make the group's channels, each as [C, ...] (channel axis first).

    A weight that makes only some of the channels (a depthwise conv after a Concat) is
    zero-padded to all C channels.
    """
    constants = _constants(model)
    arrays = []
    for use in group.producers:
        if use.kind != "weight":
            continue
        values = np.moveaxis(constants[use.tensor].values, use.axis, 0)
        count = use.covered(group.size)
        full = np.zeros((group.size,) + values.shape[1:], values.dtype)
        full[use.start:use.start + count] = values[use.offset:use.offset + count]
        arrays.append(full)
    return arrays


def consumer_weights(model: Model, group: ChannelGroup) -> list[np.ndarray]:
    """The weights that read the group's channels, each as [K_out, C, ...] (channel axis 1).

    A Gemm after Flatten reads a block of H*W features per channel: it comes as [N, C, H*W].
    A weight that reads only some of the channels is zero-padded to all C.
    """
    constants = _constants(model)
    arrays = []
    for use in group.consumers:
        values = np.moveaxis(constants[use.tensor].values, use.axis, 1)
        count = use.covered(group.size)
        part = values[:, use.offset:use.offset + count * use.stride]
        part = part.reshape((part.shape[0], count, use.stride) + part.shape[2:]) if use.stride > 1 else part
        full = np.zeros((part.shape[0], group.size) + part.shape[2:], values.dtype)
        full[:, use.start:use.start + count] = part
        arrays.append(full)
    return arrays


# ---------------------------------------------------------------------------------------------
# Editing
# ---------------------------------------------------------------------------------------------

def reindex_channels(model: Model, group: ChannelGroup, indices: np.ndarray) -> None:
    """Keep the group's channels ``indices``, in this order, everywhere they are used.

    A subset removes channels; a permutation reorders them. Every producer, consumer,
    per-channel parameter, count (Split sizes, Reshape dims, Slice bounds) and depthwise
    ``group`` attribute is edited; shapes are then re-inferred.

    Raises:
        PlanError: the group is blocked, or ``indices`` are out of range, repeated or empty.
    """
    reindex_groups(model, [(group, indices)])


def reindex_groups(model: Model, edits: list[tuple[ChannelGroup, np.ndarray]]) -> None:
    """:func:`reindex_channels` for several groups of one analysis at once.

    Groups found by one :func:`build_channel_groups` call must be edited together (or the
    analysis re-run after each edit): removing channels of one Concat input moves the
    offsets of the others.
    """
    graph = model.graph
    constants = _constants(model)
    nodes = {node_key(n): n for n in graph.nodes}
    maps: dict[tuple[str, int], list[tuple[int, int, np.ndarray]]] = {}
    renumber: dict[str, list[tuple[int, int, np.ndarray]]] = {}
    counts: dict[tuple[str, str, str], dict[int, int]] = {}
    for group, indices in edits:
        indices = _check_indices(group, indices, model.source)
        for use in group.producers + group.consumers:
            count = use.covered(group.size)
            positions = use.positions(group.size, indices)
            if use.kind in ("count", "attr"):
                per_axis = counts.setdefault((use.kind, use.node, use.tensor), {})
                per_axis[use.axis] = per_axis.get(use.axis, 0) + count * use.stride - len(positions)
                continue
            block = (use.offset, count * use.stride, positions)
            if use.kind == "index-value":
                renumber.setdefault(use.tensor, []).append(block)
                continue
            maps.setdefault((use.tensor, use.axis), []).append(block)
    stale = sorted({name for name, _ in maps} - set(constants)) + sorted(set(renumber) - set(constants))
    if stale:
        # an edit between the analysis and this call replaced these tensors: editing the rest would
        # leave the model inconsistent
        raise RuntimeError(f"the channel groups name tensors no longer in the graph ({stale[:3]}): build the "
                           "groups again after the last edit of the graph")
    for (name, axis), blocks in maps.items():
        tensor = constants[name]
        order = _new_order(blocks, tensor.values.shape[axis])
        tensor.values = np.ascontiguousarray(np.take(tensor.values, order, axis=axis))
    for name, blocks in renumber.items():  # Gather indices: old input positions -> new ones
        tensor = constants[name]
        size = max(offset + length for offset, length, _ in blocks)
        size = max(size, int(tensor.values.max()) + 1)
        new_of_old = np.full(size, -1, np.int64)
        order = _new_order(blocks, size)
        new_of_old[order] = np.arange(order.size)
        tensor.values = np.ascontiguousarray(new_of_old[tensor.values].astype(tensor.values.dtype))
    for (kind, node_name, name), removed in counts.items():
        if any(removed.values()):
            _decrease_count(graph, nodes[node_name], kind, name, removed)
    _refresh_shapes(model)


def regroup(model: Model, edits: list[tuple[ChannelGroup, np.ndarray]]) -> list[tuple[ChannelGroup, np.ndarray]]:
    """The same edits on channel groups found again now, after edits of the graph that replaced or added
    constants the groups name (a bias folded into a layer): each group is found again by the node whose
    weight makes its channels. Only for edits that keep every layer's channel count."""
    from sparsecc.dependency.analysis import build_channel_groups

    def makers(group: ChannelGroup) -> set[str]:
        return {u.node for u in group.producers if u.kind == "weight"}

    fresh = build_channel_groups(model)
    found = []
    for group, indices in edits:
        again = next((g for g in fresh if makers(g) & makers(group) and g.size == group.size), None)
        if again is None:
            raise RuntimeError(f"channel group '{group.id}' is not found again after the edits of the graph")
        found.append((again, indices))
    return found


def _new_order(blocks: list[tuple[int, int, np.ndarray]], size: int) -> np.ndarray:
    """Old positions along an axis in their new order: each block [offset, offset + length) becomes
    its ``positions``; everything outside the blocks stays."""
    pieces, cursor = [], 0
    for offset, length, positions in sorted(blocks, key=lambda b: b[0]):
        pieces.extend([np.arange(cursor, offset), positions])
        cursor = offset + length
    pieces.append(np.arange(cursor, size))
    return np.concatenate(pieces).astype(np.int64)


def _check_indices(group: ChannelGroup, indices, source: str) -> np.ndarray:
    if not group.editable():
        raise PlanError(f"channel group '{group.id}' cannot be edited: {'; '.join(group.blockers)}",
                        where=source, fix="leave this group out of the plan")
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= group.size or \
            len(np.unique(indices)) != indices.size:
        raise PlanError(f"indices for channel group '{group.id}' must be distinct, within [0, {group.size}) "
                        f"and not empty; got {indices.size} index(es)", where=source,
                        fix="keep at least one channel of every group")
    return indices


def _decrease_count(graph: gs.Graph, node: gs.Node, kind: str, name: str, removed: dict[int, int]) -> None:
    """Lower channel counts held in an attribute or a (possibly shared) integer constant.

    ``removed`` maps the element of the attribute or constant to the number to subtract.
    """
    from sparsecc.graphutil import constant

    if kind == "attr":
        value = node.attrs[name]
        if isinstance(value, (list, tuple)):
            value = list(value)
            for axis, count in removed.items():
                value[axis] -= count
            node.attrs[name] = value
        else:
            node.attrs[name] = int(value) - removed[0]
        return
    slot = next(i for i, t in enumerate(node.inputs) if t.name == name)
    values = node.inputs[slot].values.copy()
    for axis, count in removed.items():
        values[axis] -= count
    # counts are often shared constants (exporters deduplicate them): give this node its own
    node.inputs[slot] = constant(graph, name, values)


def _refresh_shapes(model: Model) -> None:
    """Drop the now stale intermediate shapes and infer them again (ORT trips on stale value_info).

    They are inferred at the model's declared input shapes, so symbolic dimensions (batch, image size)
    stay symbolic: ONNX Runtime folds shapes it reads from value_info, and a fixed batch there would
    break the model at any other batch.
    """
    from sparsecc.shapes import symbolic_shapes

    graph = model.graph
    keep = {id(t) for t in list(graph.inputs) + list(graph.outputs)}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in keep:
            tensor.shape = None
    shapes = symbolic_shapes(model)
    for name, tensor in graph.tensors().items():
        # gs exports a value_info only with a dtype; shapes of dtype-less tensors stay for ORT to infer
        if isinstance(tensor, gs.Variable) and name in shapes and id(tensor) not in keep and tensor.dtype:
            tensor.shape = list(shapes[name])
