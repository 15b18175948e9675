"""ONNX Runtime backend (CPU by default): the embedded default of sparsecc.

Sessions follow BENCHMARKS.md: a fixed, stated number of intra-op threads,
default graph optimisations, and ``session.force_spinning_stop`` so that two
sessions in one process (interleaved benchmarking) do not steal each other's
cores with spinning worker threads.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from sparsecc.backends.base import Backend, Session, TensorSpec


def quiet_onnxruntime() -> None:
    """ONNX Runtime logs at error level: its optimisers' warnings (``UnsqueezeElimination cannot remove
    node ...``) come from the default logger, which session options do not reach."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def numpy_dtype_of_input(node_arg) -> np.dtype:
    """The numpy dtype of an ONNX Runtime input (NodeArg)."""
    return np.dtype(_ORT_TYPES.get(node_arg.type, np.float32))


def refuse_plugin_nodes(model, cause: Exception | None = None) -> None:
    """Raise a clear error if the model (a path, ONNX bytes or a ModelProto) has sparsecc (TensorRT plugin) nodes,
    which ONNX Runtime cannot run."""
    import onnx

    from sparsecc.errors import UnsupportedModelError
    from sparsecc.plugins.ops import find_plugin_nodes

    if isinstance(model, (str, Path)):
        proto = onnx.load(str(model), load_external_data=False)
    elif isinstance(model, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(model))
    else:
        proto = model
    nodes = find_plugin_nodes(proto)
    if nodes:
        listed = ", ".join(f"'{name}' ({op})" for name, op, _ in nodes[:3]) + (" ..." if len(nodes) > 3 else "")
        raise UnsupportedModelError(
            f"the model has {len(nodes)} sparsecc TensorRT plugin node(s), which ONNX Runtime cannot run: {listed}",
            where=str(model) if isinstance(model, (str, Path)) else "<ONNX bytes>",
            fix="run it with --backend tensorrt (sparsecc build / validate), or use the portable model from before "
                "the lower-tensorrt pass on ONNX Runtime") from cause


def is_broadcast_scale(array) -> bool:
    """A per-channel tensor shaped to broadcast over trailing axes ([C, 1, 1], a layer scale).

    ONNX Runtime's optimisers (BASIC and above) rewrite such a tensor when they move a Transpose
    through the Mul that reads it (a channels-last block: ... -> Transpose -> Mul by [C, 1, 1]); handed
    in through ``SessionOptions.add_initializer`` it was seen to stay in its old layout, and the Mul
    then failed with a broadcast error. These tensors are small, so they are left in the model file,
    where the optimiser may rewrite them.
    """
    shape = getattr(array, "shape", ())
    return len(shape) >= 2 and shape[0] > 1 and all(d == 1 for d in shape[1:])


class OnnxRuntimeFailure(RuntimeError):
    """ONNX Runtime refused to load or to run a graph (an internal error unless the graph is the user's:
    :meth:`user_error` turns it into one that names the node).

    Attributes:
        stage: "load" or "run".
        detail: ONNX Runtime's message, without its status prefix and temporary file names.
        node: The node the message names, if it names one.
        op: The op the message names ("domain:Op" for an unregistered one), if it names one.
    """

    def __init__(self, stage: str, message: str):
        self.stage = stage
        self.detail = _clean_message(message)
        self.node, self.op = _node_named(message)
        super().__init__(f"ONNX Runtime could not {stage} the graph: {self.detail}")

    def user_error(self, where: str, graph=None):
        """A :class:`~sparsecc.errors.ModelLoadError` naming the node (and its op, looked up in ``graph``)."""
        from sparsecc.errors import ModelLoadError

        op = self.op
        if graph is not None and self.node and op is None:
            op = next((n.op if not n.domain else f"{n.domain}:{n.op}" for n in graph.nodes if n.name == self.node),
                      None)
        node = (f"node '{self.node}'" + (f" ({op})" if op else "")) if self.node else (f"op {op}" if op else "")
        return ModelLoadError(
            f"ONNX Runtime cannot {self.stage} the model" + (f" at {node}" if node else "") + f": {self.detail}",
            where=where, fix="sparsecc runs every model it works on with ONNX Runtime (each rewrite is checked there): "
                             "fix the model (re-export it; onnxruntime.InferenceSession shows the same error), or "
                             "give the input shapes it runs at with --shape")


_NODE_PATTERNS = (r"Name:'([^']+)'", r"in node \(([^)]+)\)", r"node name \(([^)]+)\)", r"Node \(([^)]+)\)",
                  r"node ([^ :]+): ")


def _node_named(message: str) -> tuple[str | None, str | None]:
    import re

    unregistered = re.search(r"([\w.]*):(\w+)\(-?\d+\) is not a registered function/op", message)
    op = f"{unregistered.group(1)}:{unregistered.group(2)}" if unregistered else None
    for pattern in _NODE_PATTERNS:
        found = re.search(pattern, message)
        if found:
            return found.group(1), op
    return None, op


def _clean_message(message: str) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(message))
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text.strip())
    text = re.sub(r"Load model from \S+ failed:\s*", "", text)
    text = re.sub(r"Non-zero status code returned while running \w+ node\. Name:'[^']*' Status Message: ", "", text)
    return text.splitlines()[0][:400] if text else "(no message)"


def create_session(source, options, providers: list[str]):
    """The one place sparsecc makes ONNX Runtime sessions: a load failure is an :class:`OnnxRuntimeFailure`."""
    import onnxruntime as ort

    quiet_onnxruntime()
    if options is not None:
        options.log_severity_level = max(options.log_severity_level, 4)  # its errors reach the user as ours
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as err:  # noqa: BLE001 - pybind raises one type per status code; all mean "cannot load"
        raise OnnxRuntimeFailure("load", str(err)) from err


def run_session(session, names, feeds):
    """``session.run``, with a failure as an :class:`OnnxRuntimeFailure`."""
    try:
        return session.run(names, feeds)
    except Exception as err:  # noqa: BLE001 - as in create_session
        raise OnnxRuntimeFailure("run", str(err)) from err


@contextmanager
def user_model(where: str, graph=None):
    """ONNX Runtime failures inside the block are the user's model's (bench, eval, validate): user errors."""
    try:
        yield
    except OnnxRuntimeFailure as failure:
        raise failure.user_error(where, graph) from None


def add_initializers(options, initializers: list[tuple[str, Any]] | None) -> list:
    """Give ONNX Runtime these (name, array) weights from memory (``SessionOptions.add_initializer``,
    no copy); the OrtValues returned must outlive the session. Arrays that are not aligned and
    C-contiguous (a weight mapped at an odd offset of its file), and per-channel broadcast tensors
    (:func:`is_broadcast_scale`), are left for it to read from the file."""
    import onnxruntime as ort

    values = []
    for name, array in initializers or []:
        if is_broadcast_scale(array):
            continue  # read from the file: see is_broadcast_scale
        if isinstance(array, np.ndarray) and array.flags.aligned and array.flags.c_contiguous and array.size:
            value = ort.OrtValue.ortvalue_from_numpy(array)
            options.add_initializer(name, value)
            values.append(value)
    return values


class OrtSession(Session):
    def __init__(self, session, settings: dict):
        self._session = session
        self._settings = settings
        self._output_names = [o.name for o in session.get_outputs()]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(i.name, tuple(i.shape), numpy_dtype_of_input(i)) for i in self._session.get_inputs()]

    def run(self, feeds):
        values = run_session(self._session, self._output_names, feeds)
        return dict(zip(self._output_names, values))

    def describe(self) -> dict:
        return dict(self._settings)


class OrtBackend(Backend):
    """ONNX Runtime sessions.

    Args:
        threads: intra_op_num_threads. Defaults to 2 (this project's CI machines have 2 cores).
        providers: Execution providers. Defaults to ["CPUExecutionProvider"].
        optimization: "default" (all graph optimisations, ONNX Runtime's default) or "none".
            Defaults to "default".
        allow_spinning: Let idle worker threads spin. Turn it off when more than two sessions
            are interleaved in one process: even with force_spinning_stop, nine spinning sessions
            slowed some variants 3-5x on 2 cores. Defaults to True.
    """

    name = "ort"

    def __init__(self, threads: int | None = None, providers: list[str] | None = None,
                 optimization: str | None = None, allow_spinning: bool = True):
        self.threads = threads or 2
        self.allow_spinning = allow_spinning
        self.providers = providers or ["CPUExecutionProvider"]
        self.optimization = optimization or "default"

    def load(self, model, initializers: list[tuple[str, Any]] | None = None) -> OrtSession:
        """A session for a model (path or bytes).

        ``initializers``: (name, numpy array) pairs ONNX Runtime takes from memory instead of
        reading them from the file (``SessionOptions.add_initializer``, no copy; prepacking still
        makes its own blocked copy, as when deployed). The arrays must outlive the session (the
        returned session holds them). Defaults to none.
        """
        import onnxruntime as ort

        quiet_onnxruntime()
        options = ort.SessionOptions()
        values = add_initializers(options, initializers)
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if not self.allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.optimization == "none":
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        source = str(model) if isinstance(model, (str, Path)) else model
        try:
            session = create_session(source, options, self.providers)
        except OnnxRuntimeFailure as err:
            if "sparsecc" in str(err):
                refuse_plugin_nodes(model, err)
            raise
        wrapped = OrtSession(session, self.describe())
        wrapped._initializers = values  # ONNX Runtime reads these buffers for the session's life
        return wrapped

    def describe(self) -> dict:
        import onnxruntime as ort

        return {"backend": self.name, "onnxruntime": ort.__version__, "intra_op_num_threads": self.threads,
                "providers": self.providers, "graph_optimization": self.optimization,
                "force_spinning_stop": True, "allow_spinning": self.allow_spinning}
