"""Backends that run graphs holding sparsecc-domain nodes, through the nodes' numpy references.

A graph that holds a sparsecc-domain node (a TensorRT plugin node, say) cannot run on ONNX
Runtime as it is. Verification still has to check it on the CPU, so these backends run every
sparsecc-domain node through the numpy reference registered for its op
(:mod:`sparsecc.plugins.references`) and every standard node as usual:

- ``ort-references`` (the one verification uses): ONNX Runtime with Python custom ops
  (onnxruntime-extensions): the sparsecc nodes move to the extensions' domain and call their
  references; everything else runs on ONNX Runtime's CPU kernels.
- ``onnx-reference``: ONNX's own ReferenceEvaluator with the references as custom ops (pure numpy;
  no extra package, but its Conv/MatMul are numpy loops: far slower on real models).

``tools/bench_verify_backends.py`` measures the two (figures in its docstring).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from sparsecc.backends.base import Backend, Session, TensorSpec
from sparsecc.errors import BackendUnavailableError, UnsupportedModelError
from sparsecc.plugins.references import DOMAIN, get_reference

EXTENSIONS_DOMAIN = "ai.onnx.contrib"


def custom_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The sparsecc-domain nodes of a model (main graph)."""
    return [n for n in model.graph.node if n.domain == DOMAIN]


def graph_has_custom_ops(graph) -> bool:
    """Whether an onnx-graphsurgeon graph holds a sparsecc-domain node (cheap: no serialisation)."""
    return any(node.domain == DOMAIN for node in graph.nodes)


def custom_ops_use_float16(graph) -> bool:
    """Whether a sparsecc-domain node of an onnx-graphsurgeon graph reads or writes float16 tensors.

    onnxruntime-extensions' Python custom ops do not take float16 ("Type float16 not supported by
    python customops api", then the process aborts), so such graphs go to ONNX's ReferenceEvaluator.
    """
    return any(node.domain == DOMAIN and any(t.dtype == np.float16 for t in list(node.inputs) + list(node.outputs))
               for node in graph.nodes)


def reference_backend_name(uses_float16: bool) -> str:
    """Which backend runs sparsecc-domain nodes: "ort-references" (ONNX Runtime + extensions), or
    "onnx-reference" (ONNX's ReferenceEvaluator) when a custom node takes float16 (the extensions'
    Python custom ops abort on it) or the extensions are missing."""
    if uses_float16 or OrtReferencesBackend.unavailable_reason() is not None:
        return "onnx-reference"
    return "ort-references"


def reference_backend_for(proto: onnx.ModelProto) -> "Backend":
    """A backend that runs this model's sparsecc-domain nodes (see :func:`reference_backend_name`)."""
    types = _tensor_dtypes(proto)
    fp16 = any(types.get(name) == np.float16 for node in custom_nodes(proto) for name in node.input)
    return OrtReferencesBackend() if reference_backend_name(fp16) == "ort-references" else OnnxReferenceBackend()


def _reference_for(node: onnx.NodeProto, source: str):
    reference = get_reference(node.op_type, node.domain)
    if reference is None:
        raise UnsupportedModelError(
            f"node '{node.name}' is a {node.domain}::{node.op_type} with no registered numpy reference, "
            "so the graph cannot be verified", where=source,
            fix="register one with sparsecc.plugins.references.register_reference")
    return reference


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    values = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        values[attribute.name] = value
    return values


def _load(model) -> onnx.ModelProto:
    """The model, with external weights read in.

    The verification files link the input model's weight file (a hard link, see onnx_files), which
    onnx.load refuses ("multiple hard links ... hardlink attack"); those files are sparsecc's own,
    so their external data is read here directly.
    """
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    from pathlib import Path

    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    proto = onnx.load(str(model), load_external_data=False)
    base = Path(str(model)).parent
    for tensor in _get_all_tensors(proto):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        with open(base / info.location, "rb") as handle:
            handle.seek(info.offset or 0)
            tensor.raw_data = handle.read(info.length) if info.length else handle.read()
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return proto


def _output_dict(names: list[str], values) -> dict[str, np.ndarray]:
    return dict(zip(names, values))


# ----------------------------------------------------------------------------------------------
# ONNX Runtime with Python custom ops (onnxruntime-extensions)
# ----------------------------------------------------------------------------------------------

_ORT_TYPES = {np.dtype(np.float32): "dt_float", np.dtype(np.float16): "dt_float16", np.dtype(np.float64): "dt_double",
              np.dtype(np.int64): "dt_int64", np.dtype(np.int32): "dt_int32", np.dtype(np.bool_): "dt_bool",
              np.dtype(np.uint8): "dt_uint8", np.dtype(np.int8): "dt_int8"}
_REGISTERED: dict[str, tuple] = {}  # extensions op name -> the (reference, types) it was registered with


def _tensor_dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    """Element types of every tensor whose type ONNX can infer (inputs of custom nodes included)."""
    from onnx import helper, shape_inference

    inferred = shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    types = {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        if info.type.tensor_type.elem_type:
            types[info.name] = np.dtype(helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))
    for tensor in graph.initializer:
        types[tensor.name] = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    return types


def _register_extension_op(node: onnx.NodeProto, reference, types: dict[str, np.dtype]) -> str:
    """Register ``reference`` as an extensions op for this node's input/output types; returns its name."""
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    def type_of(name: str, fallback: np.dtype) -> Any:
        return getattr(PyCustomOpDef, _ORT_TYPES.get(types.get(name, fallback), "dt_float"))

    first = types.get(node.input[0], np.dtype(np.float32)) if node.input else np.dtype(np.float32)
    ins = [type_of(name, first) for name in node.input if name]
    outs = [type_of(name, first) for name in node.output]
    attributes = _attributes(node)
    # one extensions op per (op, types, attributes): attribute values are bound into the function
    signature = (node.op_type, tuple(ins), tuple(outs), repr(sorted(attributes.items())))
    for name, (known_reference, known) in _REGISTERED.items():
        if known == signature and known_reference is reference:
            return name
    name = f"sparsecc_{node.op_type}_{len(_REGISTERED)}"

    def compute(*inputs):
        result = reference(*inputs, **attributes)
        return result[0] if len(result) == 1 else result

    onnx_op(op_type=name, inputs=ins, outputs=outs)(compute)
    _REGISTERED[name] = (reference, signature)
    return name


class OrtReferencesBackend(Backend):
    """ONNX Runtime CPU, with sparsecc-domain nodes run through their numpy references.

    Args:
        threads: intra_op_num_threads. Defaults to 2.
    """

    name = "ort-references"

    def __init__(self, threads: int | None = None):
        self.threads = threads or 2

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import onnxruntime_extensions  # noqa: F401
        except ImportError:
            return "onnxruntime-extensions is not installed (pip install onnxruntime-extensions)"
        return None

    def load(self, model) -> Session:
        import onnxruntime as ort
        from onnxruntime_extensions import get_library_path

        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailableError(f"graphs with {DOMAIN}-domain nodes cannot be run: {reason}",
                                          fix="pip install onnxruntime-extensions")
        proto = _load(model)
        nodes = custom_nodes(proto)
        if nodes:
            types = _tensor_dtypes(proto)
            for node in nodes:
                reference = _reference_for(node, "the graph under verification")
                node.op_type = _register_extension_op(node, reference, types)
                node.domain = EXTENSIONS_DOMAIN
                del node.attribute[:]  # bound into the registered function
            imports = [o for o in proto.opset_import if o.domain != DOMAIN]
            del proto.opset_import[:]
            proto.opset_import.extend(imports + [onnx.helper.make_opsetid(EXTENSIONS_DOMAIN, 1)])
        from sparsecc.backends.ort import quiet_onnxruntime

        quiet_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        options.register_custom_ops_library(get_library_path())
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return _OrtSession(session)


class _OrtSession(Session):
    def __init__(self, session):
        from sparsecc.backends.ort import numpy_dtype_of_input

        self._session = session
        self._inputs = [TensorSpec(i.name, tuple(i.shape), numpy_dtype_of_input(i)) for i in session.get_inputs()]
        self._names = [o.name for o in session.get_outputs()]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    def run(self, feeds):
        return _output_dict(self._names, self._session.run(self._names, feeds))


# ----------------------------------------------------------------------------------------------
# ONNX's ReferenceEvaluator with custom ops
# ----------------------------------------------------------------------------------------------

def _op_run_class(reference):
    from onnx.reference.op_run import OpRun

    def _run(self, *inputs, **attributes):
        attributes = {k: v.decode() if isinstance(v, bytes) else v for k, v in attributes.items()}
        return reference(*inputs, **attributes)

    return type(reference.op_type, (OpRun,), {"op_domain": reference.domain, "_run": _run})


class OnnxReferenceBackend(Backend):
    """ONNX's ReferenceEvaluator (numpy), with sparsecc-domain nodes run through their references."""

    name = "onnx-reference"

    def load(self, model) -> Session:
        from onnx.reference import ReferenceEvaluator

        proto = _load(model)
        classes = {}
        for node in custom_nodes(proto):
            reference = _reference_for(node, "the graph under verification")
            classes[node.op_type] = _op_run_class(reference)
        return _ReferenceSession(ReferenceEvaluator(proto, new_ops=list(classes.values())), proto)


class _ReferenceSession(Session):
    def __init__(self, evaluator, proto: onnx.ModelProto):
        from onnx import helper

        self._evaluator = evaluator
        initializers = {t.name for t in proto.graph.initializer}
        self._inputs = [TensorSpec(i.name, tuple(d.dim_value or None for d in i.type.tensor_type.shape.dim),
                                   np.dtype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)))
                        for i in proto.graph.input if i.name not in initializers]
        self._names = [o.name for o in proto.graph.output]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    def run(self, feeds):
        return _output_dict(self._names, self._evaluator.run(None, feeds))
