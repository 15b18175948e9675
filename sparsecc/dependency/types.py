"""The types of the channel analysis: coupled channel groups, their uses, and tensor channel layouts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ChannelUse:
    """One place that indexes a group's channels.

    Attributes:
        node: Node name.
        tensor: The constant edited along ``axis`` (conv weight or bias, BN parameter, per-channel
            Mul/Add constant, Gemm weight, Split sizes, Reshape shape), or, for ``kind == "attr"``,
            the name of the node attribute (``group`` of a depthwise conv, ``split``).
        axis: Axis of ``tensor`` that holds the channels (for counts: the element of the 1-D constant).
        offset: Where this use's channels start along ``axis`` (Concat inputs, Split outputs).
        stride: Elements per channel along ``axis`` (after Flatten/Reshape into a Gemm, one channel
            is a block of H*W features).
        start: First channel of the group this use covers (a Split output covers a part).
        count: Number of the group's channels covered. Defaults to all.
        kind: "weight" (a filter or input-channel slice of a Conv/Gemm/MatMul weight), "param"
            (per-channel bias, BN, scale), "count" (an integer in a constant that counts channels:
            Split sizes, Reshape dims, Slice bounds), "attr" (an integer attribute that counts them),
            "index" (entries of a Gather's indices, one per output channel) and "index-value" (the
            input channel positions those entries hold, renumbered when channels go or move).
    """

    node: str
    tensor: str
    axis: int
    offset: int = 0
    stride: int = 1
    start: int = 0
    count: int | None = None
    kind: str = "weight"

    def covered(self, size: int) -> int:
        return size - self.start if self.count is None else self.count

    def positions(self, size: int, indices: np.ndarray) -> np.ndarray:
        """Where the group's channels ``indices`` lie along ``axis``, in the order given.

        Channels this use does not cover are left out; each covered channel takes ``stride``
        consecutive positions. ``size`` is the group's channel count.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        count = self.covered(size)
        inside = indices[(indices >= self.start) & (indices < self.start + count)] - self.start
        return (self.offset + inside[:, None] * self.stride + np.arange(self.stride)[None, :]).reshape(-1)


@dataclass
class ChannelGroup:
    """A set of coupled channels: removing channel ``i`` edits every use at its index ``i``.

    Attributes:
        id: Stable name (the first producer's node and tensor).
        size: Number of coupled channels.
        producers: Uses whose OUTPUT channels are these channels (conv weight axis 0, bias, BN,
            depthwise weight, per-channel constants), plus the counts and attributes to update.
        consumers: Uses whose INPUT channels read these channels (conv weight axis 1, Gemm/MatMul K).
        blockers: Why the group must not be edited; empty means editable.
    """

    id: str
    size: int
    producers: list[ChannelUse] = field(default_factory=list)
    consumers: list[ChannelUse] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)

    def editable(self) -> bool:
        return not self.blockers

    def weight_nodes(self) -> list[str]:
        """Nodes whose weight produces these channels (for messages and layer selection)."""
        return dedupe(u.node for u in self.producers if u.kind == "weight")

    def to_dict(self) -> dict:
        return {"id": self.id, "size": self.size, "producers": self.weight_nodes(),
                "consumers": dedupe(u.node for u in self.consumers), "blockers": list(self.blockers)}


def dedupe(items) -> list:
    return list(dict.fromkeys(items))


@dataclass(frozen=True)
class Segment:
    """A run of consecutive channels of one channel space."""

    space: int | None  # None: channels that come from no prunable producer (graph input, opaque op)
    start: int
    length: int


@dataclass(frozen=True)
class Layout:
    """What the channel axis of one activation tensor is made of."""

    axis: int
    rank: int
    stride: int
    segments: tuple[Segment, ...]

    @property
    def channels(self) -> int:
        return sum(s.length for s in self.segments)

    def offsets(self):
        position = 0
        for segment in self.segments:
            yield position, segment
            position += segment.length

    def sliced(self, low: int, high: int) -> tuple[Segment, ...]:
        """Segments covering channels [low, high) of this tensor."""
        pieces = []
        for position, seg in self.offsets():
            a, b = max(low, position), min(high, position + seg.length)
            if a < b:
                pieces.append(Segment(seg.space, seg.start + a - position, b - a))
        return tuple(pieces)
