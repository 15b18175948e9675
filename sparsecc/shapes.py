"""Concrete tensor shapes for analysis (MACs, layer shapes).

ONNX shape inference runs first, with the graph inputs fixed to concrete
shapes and data propagation on. Graphs exported with dynamic dimensions often
compute shapes at run time (Shape -> Gather -> Concat -> Reshape) that
inference cannot follow; for the tensors still unknown after it, one ONNX
Runtime run on zero inputs reads the real shapes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import shape_inference

from sparsecc.errors import ShapeError
from sparsecc.model import Model, clamp_ir_version
from sparsecc.onnx_files import export_skeleton
from sparsecc.session_files import SessionFiles


def _fix_inputs(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    for value in proto.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[value.name]):
                dim.Clear()
                dim.dim_value = size


def _known(value_info) -> tuple[int, ...] | None:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = []
    for dim in tensor_type.shape.dim:
        if not dim.HasField("dim_value") or dim.dim_value <= 0:
            return None
        dims.append(dim.dim_value)
    return tuple(dims)


def infer_shapes(model: Model, wanted: set[str] | None = None) -> dict[str, tuple[int, ...]]:
    """Shape of every activation tensor whose shape can be found.

    Args:
        model: The model; its concrete input shapes must be known.
        wanted: Tensors whose shapes matter; those still unknown after ONNX shape
            inference are measured with ONNX Runtime. Defaults to none (no fallback).
    """
    input_shapes = model.static_input_shapes()
    # inference needs the weights' shapes, not their values: the large ones stay out of the proto
    proto, emptied = export_skeleton(model.graph)
    _fix_inputs(proto, input_shapes)
    try:
        inferred = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # inference is best effort; the fallback below measures
        inferred = proto
    shapes: dict[str, tuple[int, ...]] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        known = _known(value)
        if known is not None:
            shapes[value.name] = known
    shapes.update(input_shapes)
    produced = {out for node in proto.graph.node for out in node.output}
    missing = sorted(((wanted or set()) & produced) - set(shapes))
    if missing:
        shapes.update(_measure_shapes(proto, emptied, input_shapes, missing, model.feeds))
    return shapes


def symbolic_shapes(model: Model) -> dict[str, list]:
    """Shape of every tensor ONNX shape inference can follow at the model's *declared* input shapes.

    Dimensions the inputs leave symbolic stay symbolic (a name, or None where inference has none), so
    the shapes can be written back into the graph without fixing the model to one input size.
    """
    proto, _ = export_skeleton(model.graph)
    try:
        inferred = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # best effort: tensors it cannot follow keep no shape (ONNX Runtime infers them)
        return {}
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                              else (d.dim_param or None) for d in tensor_type.shape.dim]
    return shapes


def _shape_backend(proto: onnx.ModelProto):
    """ONNX Runtime; for a graph with sparsecc plugin nodes, a backend that runs them by their references."""
    from sparsecc.backends.ort import OrtBackend
    from sparsecc.backends.reference_ops import custom_nodes, reference_backend_for

    return reference_backend_for(proto) if custom_nodes(proto) else OrtBackend(optimization="none")


def _measure_shapes(proto: onnx.ModelProto, emptied, input_shapes, names: list[str], feeds=None
                    ) -> dict[str, tuple[int, ...]]:
    """Run the graph once with ``names`` exposed as outputs, and read their shapes. The inputs are those
    verification feeds (``feeds``: the user's data and ranges; realistic integers by name)."""
    from sparsecc.feeds import make_feeds

    existing = {o.name for o in proto.graph.output}
    for name in names:
        if name not in existing:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    clamp_ir_version(proto)
    try:
        with SessionFiles() as files:  # loaded by path: ONNX Runtime reads the weights once
            session = _shape_backend(proto).load(files.write(proto, emptied))
            specs = [(spec.name, input_shapes[spec.name], spec.dtype) for spec in session.inputs]
            outputs = session.run(make_feeds(specs, 0, options=feeds)[0])
            values = [outputs[name] for name in names]
            del session, outputs
    except Exception as exc:  # ONNX Runtime raises its own types; all mean "cannot run at these shapes"
        raise ShapeError(f"ONNX shape inference could not follow the graph and ONNX Runtime could not run it "
                         f"at the input shapes {input_shapes} to measure them ({type(exc).__name__}: "
                         f"{str(exc).strip()[:300]})",
                         fix="check --shape: the model may need other input sizes (e.g. a multiple of 32)") from None
    return {name: tuple(int(d) for d in np.shape(v)) for name, v in zip(names, values)}
