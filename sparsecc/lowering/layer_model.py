"""A candidate lowering on its own: its analytic run time, and the one-layer model it is timed as.

Both the cost models (:mod:`sparsecc.lowering.cost`) and the machine's calibration of the analytic
model (:mod:`sparsecc.lowering.calibration`) price and time candidates this way.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.lowering.emitter import Emitter
from sparsecc.lowering.registry import Candidate

# ~0.8 ns per element moved by Gather/Transpose/NCHWc reorder, ~15 us per node on ONNX Runtime CPU
# (tools/bench_groupwise.py profiles, 2 threads).
S_PER_COPY = 0.8e-9
S_PER_NODE = 15e-6


def analytic_seconds(candidate: Candidate) -> float:
    """Estimated run time of a candidate lowering (analytical model, calibrated as above)."""
    return candidate.macs * candidate.s_per_mac + candidate.copied * S_PER_COPY + candidate.nodes * S_PER_NODE


def layer_graph(candidate: Candidate, in_shape, out_shape, dtype=np.float32) -> gs.Graph:
    """A one-layer model of a candidate, as the measured cost model times it.

    A Conv layer sits between two 1x1 depthwise Convs: in a network its neighbours are Convs, so
    ONNX Runtime keeps a dense layer in its blocked (NCHWc) layout while a lowering leaves it; the
    wrappers make each candidate pay the layout changes it would pay in the model.
    """
    graph = gs.Graph(opset=17)
    em = Emitter(graph, "m", "cost-model", dtype)
    x = gs.Variable("x", dtype=em.dtype, shape=list(in_shape))
    y = gs.Variable("y", dtype=em.dtype, shape=list(out_shape))
    graph.inputs, graph.outputs = [x], [y]
    if len(in_shape) == 4 and len(out_shape) == 4:
        inner_x, inner_y = em.var("in"), em.var("out")
        em.node("Conv", [x, em.const("w_in", np.ones((in_shape[1], 1, 1, 1)))], [inner_x], "wrap_in",
                group=in_shape[1])
        em.node("Conv", [inner_y, em.const("w_out", np.ones((out_shape[1], 1, 1, 1)))], [y], "wrap_out",
                group=out_shape[1])
        candidate.emit(em, inner_x, inner_y)
    else:
        candidate.emit(em, x, y)
    return graph
