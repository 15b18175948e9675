"""The open registry of lowerings: ways to run one weight layer as other ONNX nodes.

A :class:`Lowering` is registered once (``register_lowering``) and found by the passes of its
family (``lowerings(family, op)``). Its ``propose`` function looks at one layer
(:class:`LayerToLower`) and returns either a :class:`Candidate` (how to emit it, its MACs and
the data it moves) or a string saying why it does not apply; the pass records that reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.conv_geometry import padding_depends_on_size, symbolic_spatial_dims
from sparsecc.layers import WeightLayer

# ONNX Runtime CPU, 2 threads (tools/bench_groupwise.py profiles): a 3x3 Conv runs ~20 ps per MAC.
DEFAULT_S_PER_MAC = 20e-12


@dataclass(frozen=True)
class LayerToLower:
    """What a lowering sees of one layer (read only: a lowering emits new nodes, never edits these).

    Attributes:
        node: The layer's node.
        layer: Its description (kind, group, weight and tensor names).
        weight: The weight values.
        bias: The Conv bias constant, or None.
        in_shape: Static input shape, or None when unknown.
        out_shape: Static output shape, or None when unknown.
        options: The pass's options for its family's lowerings (e.g. DEPrune's sub-GEMM width).
            Defaults to none.
    """

    node: gs.Node
    layer: WeightLayer
    weight: np.ndarray
    bias: gs.Tensor | None
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None
    options: Mapping[str, Any] = field(default_factory=dict)


Emit = Callable[[Any, gs.Tensor, gs.Tensor], None]  # (Emitter, layer input, layer output)


@dataclass
class Candidate:
    """One way to run a layer: an emitter, and what it costs.

    Attributes:
        name: The lowering's name ("dense" for the layer as it is).
        emit: ``emit(emitter, x, y)`` adds the nodes computing ``y`` from ``x``.
        macs: Multiply-accumulates of the lowered layer.
        copied: Activation elements moved by Gather/Transpose and layout reorders.
        nodes: Nodes emitted (each costs a fixed launch overhead).
        s_per_mac: The analytic cost model's time per MAC for this lowering, in seconds.
        seconds: Its time, once a cost model has estimated or measured it (measured: the median CPU time).
        source: Where ``seconds`` came from: "analytic", "measured" or "timing cache".
        evidence: Its paired timing against the layer's baseline
            (:class:`~sparsecc.measure.RatioEvidence`), once measured.
        estimate_s: The analytic model's estimate, once asked for.
        geometry: Where its layer sits (:func:`~sparsecc.lowering.calibration.layer_geometry`), set by
            :func:`~sparsecc.lowering.cost.choose_lowering`: the calibration's factor depends on it.
    """

    name: str
    emit: Emit
    macs: int
    copied: int
    nodes: int
    s_per_mac: float = DEFAULT_S_PER_MAC
    seconds: float | None = None
    source: str | None = None
    evidence: Any = None
    estimate_s: float | None = None
    geometry: tuple[int, int, int] | None = None


Propose = Callable[[LayerToLower], "Candidate | str"]


@dataclass(frozen=True)
class Lowering:
    """A registered lowering.

    Attributes:
        name: Unique name (what ``groupwise-rewrite: {lowering: NAME}`` forces).
        family: The passes that consider it ("groupwise", "deprune", "tensorrt", ...).
        ops: The op types it lowers.
        propose: ``propose(layer) -> Candidate | str`` (a reason when it does not apply).
        s_per_mac: The analytic cost model's calibration, in seconds per MAC. Defaults to 20e-12 (20 ps).
        description: One line for listings.
    """

    name: str
    family: str
    ops: frozenset[str]
    propose: Propose
    s_per_mac: float = DEFAULT_S_PER_MAC
    description: str = ""

    def candidate(self, layer: LayerToLower) -> Candidate | str:
        """The candidate for ``layer`` (with this lowering's name and calibration), or why none."""
        if layer.node.op not in self.ops:
            return f"{self.name} lowers {sorted(self.ops)}, not {layer.node.op}"
        if layer.node.op == "Conv" and padding_depends_on_size(layer.node) and \
                symbolic_spatial_dims(layer.node.inputs[0]):
            # emitted Convs carry explicit pads; the model must keep running at every input size
            return ("auto_pad SAME with a stride above 1 pads by the input size, which is symbolic here: explicit "
                    "pads would be right at the compile size only")
        proposal = self.propose(layer)
        if isinstance(proposal, Candidate):
            proposal.name = self.name
            proposal.s_per_mac = self.s_per_mac
        return proposal


_LOWERINGS: dict[str, Lowering] = {}
RESERVED = ("dense", "auto")


def register_lowering(lowering: Lowering) -> Lowering:
    """Make ``lowering`` available to the passes of its family."""
    if lowering.name in RESERVED:
        raise ValueError(f"'{lowering.name}' is reserved")
    known = _LOWERINGS.get(lowering.name)
    if known is not None and known.propose is not lowering.propose:
        raise ValueError(f"two lowerings are named {lowering.name!r}")
    _LOWERINGS[lowering.name] = lowering
    return lowering


def unregister_lowering(name: str) -> None:
    """Remove a registration (for tests that add a throw-away lowering)."""
    _LOWERINGS.pop(name, None)


def get_lowering(name: str) -> Lowering | None:
    return _LOWERINGS.get(name)


def lowerings(family: str | None = None, op: str | None = None) -> list[Lowering]:
    """Registered lowerings of ``family`` that lower ``op`` (all when None), in registration order."""
    return [lw for lw in _LOWERINGS.values()
            if (family is None or lw.family == family) and (op is None or op in lw.ops)]


@dataclass
class Proposals:
    """The candidates for one layer (dense first) and the reasons the other lowerings gave."""

    candidates: list[Candidate]
    not_applicable: dict[str, str] = field(default_factory=dict)


def propose_all(layer: LayerToLower, dense: Candidate, family: str) -> Proposals:
    """Ask every lowering of ``family`` for ``layer``; dense is always the first candidate.

    A family whose baseline is itself a registered lowering (DEPrune's plain ``depthwise``) passes
    that lowering's candidate as ``dense``; it is not asked a second time.
    """
    proposals = Proposals([dense])
    for lowering in lowerings(family, layer.node.op):
        if lowering.name == dense.name:
            continue
        result = lowering.candidate(layer)
        if isinstance(result, Candidate):
            proposals.candidates.append(result)
        else:
            proposals.not_applicable[lowering.name] = result
    return proposals
