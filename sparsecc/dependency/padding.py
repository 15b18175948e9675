"""Zero channels added back to a group, so its count lands on a multiple the kernels prefer (exact).

Removing channels can leave counts such as 14, 45 or 107, and ONNX Runtime's blocked (NCHWc)
convolutions and GEMM kernels run such counts slower than the next multiple of 8 or 16: a model
that does less work can then take longer. The fix that keeps the removed work removed is to add a
few channels back as zeros: a zero filter with a zero bias, read by every consumer with zero
weights. The channel computes a constant that nothing reads, so the function is exactly the same
(a later verification checks it). Only groups whose every use covers the whole group and is a
weight, a per-channel parameter or a count attribute are padded; others are left with the reason.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.dependency.edits import _decrease_count, _refresh_shapes
from sparsecc.dependency.types import ChannelGroup
from sparsecc.dependency.walk import node_key
from sparsecc.model import Model

PADDABLE = ("weight", "param", "attr")


def padded_size(size: int, multiple: int, limit: int | None = None) -> int:
    """``size`` rounded up to ``multiple``, never above ``limit`` (the count before pruning)."""
    target = -(-size // multiple) * multiple
    return min(target, limit) if limit is not None else target


def why_not_paddable(group: ChannelGroup) -> str | None:
    """Why zero channels cannot be appended to ``group``, or None."""
    if not group.editable():
        return "; ".join(group.blockers)
    for use in group.producers + group.consumers:
        if use.kind not in PADDABLE:
            return f"{use.node} indexes the channels as '{use.kind}'"
        if use.start != 0 or use.offset != 0 or use.covered(group.size) != group.size:
            return f"{use.node} covers only part of the channels, or shares its axis with others (Concat/Split)"
    return None


def pad_groups(model: Model, targets: list[tuple[ChannelGroup, int]]) -> None:
    """Append zero channels to each group until it has the given count (groups of one analysis).

    Raises:
        ValueError: a group cannot be padded (:func:`why_not_paddable`) or the count is smaller.
    """
    constants = {name: t for name, t in model.graph.tensors().items() if isinstance(t, gs.Constant)}
    nodes = {node_key(n): n for n in model.graph.nodes}
    for group, count in targets:
        reason = why_not_paddable(group)
        if reason or count < group.size:
            raise ValueError(f"channel group '{group.id}' cannot be padded to {count}: {reason or 'fewer channels'}")
        extra = count - group.size
        if not extra:
            continue
        for use in group.producers + group.consumers:
            if use.kind == "attr":
                _decrease_count(model.graph, nodes[use.node], "attr", use.tensor, {use.axis: -extra})
                continue
            tensor = constants[use.tensor]
            end = group.size * use.stride
            if tensor.values.shape[use.axis] != end:
                raise ValueError(f"channel group '{group.id}' cannot be padded: '{use.tensor}' holds other channels "
                                 "on the same axis")
            shape = list(tensor.values.shape)
            shape[use.axis] = extra * use.stride
            zeros = np.zeros(shape, tensor.values.dtype)
            before, after = np.split(tensor.values, [end], axis=use.axis)
            tensor.values = np.ascontiguousarray(np.concatenate([before, zeros, after], axis=use.axis))
    _refresh_shapes(model)


def align_pruned_channels(model: Model, reference: Model, multiple: int = 8) -> list[dict]:
    """Pad the groups pruning shrank (fewer channels than in ``reference``) up to ``multiple``, in place.

    A group's count before pruning is its producers' filter count in ``reference`` (matched by
    node name); a group is never padded above it. Returns what was padded, and what could not be
    with the reason.
    """
    from sparsecc.dependency.analysis import build_channel_groups

    weights = {n.name: n.inputs[1].values.shape[0] for n in reference.graph.nodes
               if n.op in ("Conv", "ConvTranspose") and len(n.inputs) > 1 and isinstance(n.inputs[1], gs.Constant)}
    targets, changes = [], []
    for group in build_channel_groups(model):
        before = max((weights.get(node, 0) for node in group.weight_nodes()), default=0)
        if not before or group.size >= before or group.size % multiple == 0:
            continue
        reason = why_not_paddable(group)
        count = padded_size(group.size, multiple, before)
        changes.append({"group": group.id, "layers": group.weight_nodes(), "before_pruning": before,
                        "pruned": group.size, "padded": group.size if reason else count,
                        **({"not_padded": reason} if reason else {})})
        if not reason:
            targets.append((group, count))
    if targets:
        pad_groups(model, targets)
    return changes
