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

from sparsecc import interrupts
from sparsecc.backends.base import Backend, Session, TensorSpec
from sparsecc.errors import BackendUnavailableError, SparseccError, UnsupportedModelError
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


def check_custom_nodes(proto: onnx.ModelProto, source: str) -> None:
    """Every sparsecc-domain node against its op's registered signature, before any reference runs.

    A node that does not fit (an unknown or huge attribute, a wrong input count or type) would reach
    the reference as keyword arguments, and an exception raised inside ONNX Runtime's Python custom
    op aborts the process. Raises a :class:`~sparsecc.plugins.ops.PluginAttributeError` naming the node.
    """
    from sparsecc.plugins.ops import SIGNATURES, PluginAttributeError, check_plugin_node

    nodes = custom_nodes(proto)
    if not nodes:
        return
    types, shapes = _tensor_info(proto)
    elem_types = {name: onnx.helper.np_dtype_to_tensor_dtype(dtype) for name, dtype in types.items()}
    for node in nodes:
        reference = _reference_for(node, source)
        if node.op_type in SIGNATURES:
            problems = check_plugin_node(node, elem_types) or _geometry_problems(node, shapes)
        else:
            problems = _signature_problems(node, reference.signature)
        if problems:
            raise PluginAttributeError(
                f"node '{node.name}' ({node.domain}::{node.op_type}) does not fit the op's signature: "
                + "; ".join(problems), where=source,
                fix="sparsecc plugin nodes are made by the lower-tensorrt pass; re-make the model from its ONNX "
                    "original, or fix the node to the signature in sparsecc.plugins.ops")


def _signature_problems(node: onnx.NodeProto, signature) -> list[str]:
    """Input/output counts and attribute names and types against a reference's :class:`OpSignature`."""
    problems = []
    required = [i for i in signature.inputs if not i.endswith("?")]
    if not len(required) <= len(node.input) <= len(signature.inputs) or len(node.output) != len(signature.outputs):
        problems.append(f"{len(node.input)} inputs / {len(node.output)} outputs, expected {list(signature.inputs)} / "
                        f"{list(signature.outputs)}")
    kinds = {int: (onnx.AttributeProto.INT,), float: (onnx.AttributeProto.FLOAT,), str: (onnx.AttributeProto.STRING,),
             list: (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS, onnx.AttributeProto.STRINGS)}
    for attribute in node.attribute:
        expected = signature.attributes.get(attribute.name)
        if expected is None:
            problems.append(f"unexpected attribute '{attribute.name}'")
        elif attribute.type not in kinds.get(expected, (attribute.type,)):
            problems.append(f"attribute '{attribute.name}' must be {expected.__name__}")
    return problems


# the references compute im2col in float64: more than this is refused before running
MAX_REFERENCE_BYTES = 2**31


def _geometry_problems(node: onnx.NodeProto, shapes: dict[str, tuple]) -> list[str]:
    """A plugin convolution's attributes against its input's shape (ranges, an empty output, the size of
    the reference's im2col)."""
    from sparsecc.plugins.ops import GROUPWISE_LINEAR, PluginAttributeError, as_ints, conv_geometry

    if node.op_type == GROUPWISE_LINEAR:
        return []
    attrs = {a.name: list(a.ints) for a in node.attribute if a.type == onnx.AttributeProto.INTS}
    shape = shapes.get(node.input[0]) if node.input else None
    try:
        if not (shape and len(shape) == 4):  # the input's shape is not known: the attributes' sizes and ranges
            for name, length, low in (("kernel_shape", 2, 1), ("strides", 2, 1), ("pads", 4, 0), ("dilations", 2, 1)):
                values = as_ints(attrs[name], name, length)
                if any(v < low or v > 65535 for v in values):
                    return [f"attribute '{name}' = {list(values)} is out of range ({low}..65535)"]
            return []
        geometry = conv_geometry(shape, attrs["kernel_shape"], attrs["strides"], attrs["pads"], attrs["dilations"])
    except PluginAttributeError as err:
        return [err.what]
    cells = geometry.n * max(geometry.c, 32) * geometry.kh * geometry.kw * geometry.oh * geometry.ow
    if cells * 8 > MAX_REFERENCE_BYTES:
        return [f"its numpy reference would take {cells * 8 / 2**30:.1f} GiB (limit "
                f"{MAX_REFERENCE_BYTES / 2**30:.0f} GiB) at input shape {list(shape)}"]
    return []


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
_FAILURES: list[tuple[str, BaseException]] = []  # (node, exception) raised by a reference during one run


def _tensor_dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    """Element types of every tensor whose type ONNX can infer (inputs of custom nodes included)."""
    return _tensor_info(model)[0]


def _tensor_info(model: onnx.ModelProto) -> tuple[dict[str, np.dtype], dict[str, tuple]]:
    """Element types, and the shapes known in full, of every tensor ONNX shape inference can follow."""
    from onnx import helper, shape_inference

    try:
        graph = shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # noqa: BLE001 - inference is best effort: what it cannot follow stays unknown
        graph = model.graph
    types, shapes = {}, {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type:
            try:
                types[info.name] = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
            except (KeyError, TypeError):
                pass
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if tensor_type.HasField("shape") and all(d is not None and d > 0 for d in dims):
            shapes[info.name] = tuple(dims)
    for tensor in graph.initializer:
        try:
            types[tensor.name] = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        except (KeyError, TypeError):
            pass
        shapes[tensor.name] = tuple(tensor.dims)
    return types, shapes


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
    placeholders = [np.zeros(1, types.get(out, first)) for out in node.output]

    def compute(*inputs):
        # an exception escaping into ONNX Runtime aborts the process: it is kept for after the run
        # (signals wait for the run to return: see _OrtSession.run)
        if _FAILURES:
            return placeholders[0] if len(placeholders) == 1 else tuple(placeholders)
        try:
            interrupts.point("reference-op")
            result = reference(*inputs, **attributes)
        except BaseException as exc:  # noqa: BLE001 - re-raised by run() once ONNX Runtime has returned
            _FAILURES.append((node.name, exc))
            return placeholders[0] if len(placeholders) == 1 else tuple(placeholders)
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

        from sparsecc.backends.ort import create_session

        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailableError(f"graphs with {DOMAIN}-domain nodes cannot be run: {reason}",
                                          fix="pip install onnxruntime-extensions")
        proto = _load(model)
        check_custom_nodes(proto, "the graph under verification")
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
        session = create_session(proto.SerializeToString(), options, ["CPUExecutionProvider"])
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
        from sparsecc.backends.ort import OnnxRuntimeFailure, run_session

        _FAILURES.clear()
        try:
            # Python runs in ONNX Runtime's callbacks, where an exception (a Ctrl-C's included) aborts the
            # process: a signal is recorded and raised once the run has returned
            with interrupts.deferred():
                values = run_session(self._session, self._names, feeds)
        except OnnxRuntimeFailure:
            if not _FAILURES:
                raise
            values = None
        finally:
            failures, _FAILURES[:] = list(_FAILURES), []
        if failures:
            node, exc = failures[0]
            if not isinstance(exc, Exception):  # an interrupt
                raise exc
            detail = exc.what if isinstance(exc, SparseccError) else f"{type(exc).__name__}: {exc}"
            raise UnsupportedModelError(f"the numpy reference of node '{node}' failed: {detail}",
                                        where="the graph under verification",
                                        fix="check the node's inputs and attributes against its op's signature "
                                            "(sparsecc.plugins.ops)") from exc
        return _output_dict(self._names, values)


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
        check_custom_nodes(proto, "the graph under verification")
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
