"""The channel analysis: which channels of a graph are coupled (one walk, per-op rules)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from sparsecc.dependency.rules import OP_RULES
from sparsecc.dependency.rules_layout import LayoutRules
from sparsecc.dependency.rules_per_channel import PerChannelRules
from sparsecc.dependency.rules_weights import WeightRules
from sparsecc.dependency.types import ChannelGroup, ChannelUse, Layout, dedupe
from sparsecc.dependency.walk import node_key, topological
from sparsecc.model import Model


class _Analysis(WeightRules, PerChannelRules, LayoutRules):
    """One walk over the graph: a channel layout per tensor, spaces united by the ops that couple them.

    The rule for each op (``rule_<name>``, named in :data:`~sparsecc.dependency.rules.OP_RULES`)
    comes from the mixins: weights, per-channel ops, layout-changing ops.
    """

    def __init__(self, model: Model):
        from sparsecc.shapes import infer_shapes

        self.model = model
        self.graph = model.graph
        wanted = {t.name for t in self.graph.tensors().values() if isinstance(t, gs.Variable)}
        self.shapes = infer_shapes(model, wanted=wanted)
        self.layouts: dict[str, Layout] = {}
        self.sizes: list[int] = []
        self.parent: list[int] = []
        self.producers: list[list[ChannelUse]] = []
        self.consumers: list[list[ChannelUse]] = []
        self.blockers: list[list[str]] = []
        self.names: list[str] = []

    # -- spaces and union-find ------------------------------------------------------------------
    def new_space(self, size: int, name: str) -> int:
        self.sizes.append(size)
        self.parent.append(len(self.parent))
        self.producers.append([])
        self.consumers.append([])
        self.blockers.append([])
        self.names.append(name)
        return len(self.sizes) - 1

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def block(self, layout: Layout | None, reason: str) -> None:
        if layout is None:
            return
        for seg in layout.segments:
            if seg.space is not None and reason not in self.blockers[seg.space]:
                self.blockers[seg.space].append(reason)

    def add_uses(self, layout: Layout, node: gs.Node, tensor: str, axis: int, kind: str, consumer: bool,
                 low: int = 0, high: int | None = None) -> None:
        """Record a use of every segment of ``layout`` (channels [low, high) of it) on ``tensor``."""
        high = layout.channels if high is None else high
        for position, seg in Layout(layout.axis, layout.rank, layout.stride, layout.sliced(low, high)) \
                .offsets():
            if seg.space is None:
                continue
            use = ChannelUse(node_key(node), tensor, axis, offset=position * layout.stride,
                             stride=layout.stride, start=seg.start, count=seg.length, kind=kind)
            (self.consumers if consumer else self.producers)[seg.space].append(use)

    # -- helpers ------------------------------------------------------------------------------------
    def shape(self, tensor) -> tuple[int, ...] | None:
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.values.shape)
        return self.shapes.get(tensor.name)

    def label(self, node: gs.Node) -> str:
        return f"{node.op} '{node_key(node)}'"

    def check_private(self, node: gs.Node, const: gs.Constant, layout: Layout) -> bool:
        """A weight or parameter constant edited along the channels must belong to this node alone."""
        users = dedupe(node_key(n) for n in const.outputs)
        if len(users) > 1:
            self.block(layout, f"constant '{const.name}' of {self.label(node)} is shared by nodes {users}; "
                               "editing it for one would change the others")
            return False
        return True

    def set_output(self, node: gs.Node, layout: Layout | None, index: int = 0) -> None:
        if layout is not None and index < len(node.outputs):
            self.layouts[node.outputs[index].name] = layout

    # -- walk ---------------------------------------------------------------------------------------
    def run(self) -> list[ChannelGroup]:
        for node in topological(self.graph):
            self.visit(node)
        for tensor in self.graph.outputs:
            self.block(self.layouts.get(tensor.name),
                       f"tensor '{tensor.name}' is a graph output: its channel count is part of the model's "
                       "interface")
        return self.groups()

    def visit(self, node: gs.Node) -> None:
        inputs = [(t, self.layouts.get(t.name)) for t in node.inputs if isinstance(t, gs.Variable)]
        channel_inputs = [lay for _, lay in inputs if lay is not None]
        op = node.op
        rule = OP_RULES.get(op) if node.domain in (None, "", "ai.onnx") else None
        if rule in ("conv", "gemm"):
            return getattr(self, f"rule_{rule}")(node)
        if not channel_inputs:
            return  # nothing prunable flows through this node
        if node.domain not in (None, "", "ai.onnx"):
            return self.opaque(node, channel_inputs, f"custom op {node.domain}::{op}")
        if rule is not None:
            return getattr(self, f"rule_{rule}")(node)
        self.opaque(node, channel_inputs, f"{self.label(node)} reads these channels and sparsecc does not "
                                          "know how it uses them")

    def opaque(self, node: gs.Node, layouts: list[Layout], reason: str) -> None:
        for layout in layouts:
            self.block(layout, reason)

    # -- result ---------------------------------------------------------------------------------------
    def groups(self) -> list[ChannelGroup]:
        members: dict[int, list[int]] = {}
        for space in range(len(self.sizes)):
            members.setdefault(self.find(space), []).append(space)
        groups = []
        for root, spaces in members.items():
            producers = [u for s in spaces for u in self.producers[s]]
            consumers = [u for s in spaces for u in self.consumers[s]]
            blockers = dedupe(b for s in spaces for b in self.blockers[s])
            first = next((u for u in producers if u.kind == "weight"), None)
            ident = f"{first.node}:{first.tensor}" if first else self.names[root]
            groups.append(ChannelGroup(ident, self.sizes[root], producers, consumers, blockers))
        return groups



def build_channel_groups(model: Model) -> list[ChannelGroup]:
    """Find every set of coupled channels in the graph, with its uses and blockers (no edits).

    Args:
        model: The model (after canonicalisation, usually); its input shapes must be concrete.

    Raises:
        ShapeError: the model has dynamic input shapes and none were given.
    """
    return _Analysis(model).run()
