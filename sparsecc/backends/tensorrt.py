"""TensorRT backend: strongly typed engines with sparse weights, built with Polygraphy's loaders.

TensorRT 11 networks are always strongly typed: the FP16/INT8/BF16 builder flags are gone, so the
precision of an engine is the precision of the ONNX graph (an FP16 engine comes from an FP16 graph).
The one sparsity knob is ``BuilderFlag.SPARSE_WEIGHTS`` (``CreateConfig(sparse_weights=True)``):
TensorRT then times sparse and dense tactics for every layer whose weights are 2:4 sparse and keeps
the faster. The build log says which layers were *eligible* and which had a sparse implementation
*picked*; :func:`parse_sparsity_log` reads both and the session reports them.

Nothing here imports tensorrt, polygraphy or torch at module import time, so
``import sparsecc.backends.tensorrt`` works on machines without TensorRT; every entry point that
needs TensorRT says why it cannot run (:meth:`TensorRTBackend.unavailable_reason`).
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsecc.backends.base import Backend, Session, TensorSpec
from sparsecc.errors import (BackendUnavailableError, ModelLoadError, OptionError, OutputError, ShapeError,
                             SparseccError, UnsupportedModelError)

__all__ = ["TensorRTBackend", "TensorRTSession", "TensorRTBuildError", "SparsityBuildReport", "parse_sparsity_log"]

_INSTALL_FIX = ("install the tensorrt wheel with its libnvinfer on a machine with an NVIDIA GPU "
                "(pip install tensorrt); `sparsecc bench` and `validate` run on ONNX Runtime with --backend ort")


class TensorRTBuildError(SparseccError):
    """TensorRT could not build, deserialize or run an engine for a model it parsed."""


# --------------------------------------------------------------------------------------------------
# The sparsity lines of the build log (pure Python, testable without TensorRT)
# --------------------------------------------------------------------------------------------------

_ELIGIBLE_RE = re.compile(r"\(Sparsity\)\s*Layers eligible for sparse math\s*:?(?P<rest>.*)$", re.IGNORECASE)
_PICKED_RE = re.compile(r"\(Sparsity\)\s*TRT inference plan picked sparse implementation for layers\s*:?(?P<rest>.*)$",
                        re.IGNORECASE)
# A line that starts a new log record: "[08/05/2024-12:06:54] [I] [TRT] ...", "[TRT] [I] ...",
# "[TensorRT] INFO: ...", "[V] ...", or a Python logging prefix ("INFO:...").
_LOG_PREFIX_RE = re.compile(r"^\s*(\[[^\]]*\]|(?:INTERNAL_ERROR|ERROR|WARNING|INFO|VERBOSE|DEBUG)\s*:)")
# An unprefixed "Label: value" message (e.g. "Total Activation Memory: 1024") is a new record, not names.
_LABEL_RE = re.compile(r"^[A-Za-z][\w ]*:\s")
_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")


@dataclass
class SparsityBuildReport:
    """What TensorRT's builder said about 2:4 sparse weights.

    Args:
        eligible: Layers whose weights TensorRT found 2:4 sparse (candidates for sparse tactics),
            in log order, each once. Names are TensorRT layer names after fusion
            ("Conv_0 + Relu_1").
        picked_sparse: Layers for which the final plan uses a sparse implementation. A layer can
            be eligible and not picked: TensorRT times both and keeps dense where it is faster.
        reported: Whether any sparsity line appeared at all (False when sparse weights were off or
            the log was not captured; then both lists are empty for lack of information, not
            because no layer qualified).
    """

    eligible: list[str] = field(default_factory=list)
    picked_sparse: list[str] = field(default_factory=list)
    reported: bool = False

    @property
    def eligible_not_picked(self) -> list[str]:
        """Eligible layers that TensorRT kept dense (the dense tactic was faster)."""
        picked = set(self.picked_sparse)
        return [name for name in self.eligible if name not in picked]

    def to_dict(self) -> dict:
        return {"reported": self.reported, "eligible": list(self.eligible),
                "picked_sparse": list(self.picked_sparse), "eligible_not_picked": self.eligible_not_picked}


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets: fused names such as "PWN(/a/Sigmoid, /a/Mul)" keep their commas."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _layer_names(text: str) -> list[str]:
    """Layer names in one chunk of a list: comma separated, or space separated when there is no comma.

    Fused layer names keep their spaces ("Conv_0 + Relu_1"): a piece with " + " or brackets is one name.
    """
    names = []
    for piece in _split_top_level(_BULLET_RE.sub("", text)):
        piece = piece.strip().strip("\"'`").strip()
        if not piece:
            continue
        if " + " in piece or any(b in piece for b in "([{"):
            names.append(piece)
        else:
            names.extend(piece.split())
    return names


def parse_sparsity_log(lines: list[str]) -> SparsityBuildReport:
    """Read the ``(Sparsity)`` lines of a TensorRT build log.

    Accepts raw logger messages (one message per element, possibly with embedded newlines) as
    well as lines of a trtexec/Polygraphy/Python log file, with or without prefixes such as
    ``[08/05/2024-12:06:54] [I] [TRT]``, ``[TRT] [I]`` or ``[TensorRT] INFO:``. Layer names may
    follow the colon on the same line (comma or space separated) or come on the following lines:
    lines of the same message, indented lines, bullet lines, or a line after a list that ends with a
    comma. A new log record (a prefixed line, a blank line, or an unindented line after a list that
    does not end with a comma) ends the list, so a header with nothing after the colon is an empty list. Names are kept
    once each, in log order.

    Args:
        lines: Log messages or log-file lines.

    Returns:
        A SparsityBuildReport with both lists ("eligible" is not "picked").
    """
    report = SparsityBuildReport()
    seen = {"eligible": set(), "picked": set()}
    target = None  # "eligible", "picked" or None: the list that continuation lines add to
    expect_more = False  # the last chunk ended with a comma: an unindented next line continues it

    def add(kind: str, text: str) -> bool:
        out = report.eligible if kind == "eligible" else report.picked_sparse
        for name in _layer_names(text):
            if name not in seen[kind]:
                seen[kind].add(name)
                out.append(name)
        return text.rstrip().endswith(",")

    for element in lines:
        sublines = str(element).splitlines() or [""]
        for k, raw in enumerate(sublines):
            line = raw.rstrip("\r\n")
            eligible, picked = _ELIGIBLE_RE.search(line), _PICKED_RE.search(line)
            match = eligible or picked
            if match:
                report.reported = True
                target = "eligible" if eligible else "picked"
                rest = match.group("rest")
                expect_more = add(target, rest)
                continue
            if target is None:
                continue
            if not line.strip():
                # a blank line ends a list in a log file; inside one message it is only spacing
                if k == 0:
                    target = None
                continue
            same_message = k > 0
            continuation = not _LOG_PREFIX_RE.match(line) and (
                raw[:1].isspace() or bool(_BULLET_RE.match(line))
                or (expect_more and not _LABEL_RE.match(line)))
            if same_message or continuation:
                expect_more = add(target, line)
            else:
                target, expect_more = None, False
    return report


# --------------------------------------------------------------------------------------------------
# Pure helpers for options and errors (testable without TensorRT)
# --------------------------------------------------------------------------------------------------

def resolve_profile_shapes(network_inputs: dict[str, tuple], shapes: dict[str, tuple] | None,
                           where: str = "model") -> dict[str, tuple]:
    """The fixed shape (min = opt = max) for each input, checked against the network's inputs.

    Args:
        network_inputs: Input name -> shape as TensorRT parsed it (-1 or None for a dynamic dimension).
        shapes: The ``shapes`` option. Defaults to no fixed shapes.
        where: The model, for error messages.

    Returns:
        Input name -> concrete shape for every input that needs a profile entry (an empty dict when
        every input is static and no shape was given).

    Raises:
        OptionError: ``shapes`` names an input the model does not have, or a shape is not integers.
        ShapeError: A dynamic input has no shape, or a given shape contradicts a static dimension.
    """
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - set(network_inputs))
    if unknown:
        raise OptionError(f"shapes names input(s) {unknown} that the model does not have", where=where,
                          fix=f"use the model's input names: {sorted(network_inputs)}")
    fixed = {}
    missing = []
    for name, net_shape in network_inputs.items():
        net_shape = tuple(None if d is None or int(d) < 0 else int(d) for d in net_shape)
        dynamic = any(d is None for d in net_shape)
        if name not in shapes:
            if dynamic:
                missing.append(f"{name} {net_shape}")
            continue
        try:
            given = tuple(int(d) for d in shapes[name])
        except (TypeError, ValueError):
            raise OptionError(f"shapes['{name}'] = {shapes[name]!r} is not a tuple of integers", where=where,
                              fix=f"give a concrete shape, e.g. shapes={{'{name}': {tuple(d or 1 for d in net_shape)}}}")
        if len(given) != len(net_shape) or any(n is not None and n != g for n, g in zip(net_shape, given)) \
                or any(g <= 0 for g in given):
            raise ShapeError(f"shapes['{name}'] = {given} does not fit the input's shape {net_shape}",
                             where=f"{where}: input '{name}'",
                             fix="keep the rank and every static dimension; give positive sizes for dynamic ones")
        fixed[name] = given
    if missing:
        raise ShapeError(f"input(s) with dynamic dimensions have no shape for the optimization profile: "
                         f"{', '.join(missing)}", where=where,
                         fix="pass shapes={'<input>': (concrete, shape)} to the tensorrt backend "
                             "(an engine is built for one fixed shape per dynamic input)")
    return fixed


_NODE_RE = re.compile(r"In node (?P<index>-?\d+) with name: (?P<name>.*?) and operator: (?P<op>\S+)")
_NODE_OLD_RE = re.compile(r"While parsing node number (?P<index>\d+) \[(?P<op>[^\s\]]+)(?: -> \"(?P<out>[^\"]*)\")?\]")


def parser_failure(where: str, messages: list[str], cause: str = "") -> ModelLoadError:
    """A ModelLoadError for an ONNX file TensorRT's parser rejected, naming the node when the log does.

    Args:
        where: The model (path or "<bytes>").
        messages: Error messages TensorRT logged while parsing (the parser's own errors among them).
        cause: The text of the exception Polygraphy raised.
    """
    node = None
    for msg in messages:
        m = _NODE_RE.search(msg)
        if m:
            node = f"node {m.group('index')} '{m.group('name')}' ({m.group('op')})"
            break
        m = _NODE_OLD_RE.search(msg)
        if m and node is None:
            node = f"node {m.group('index')} ({m.group('op')}" + (f" -> {m.group('out')})" if m.group("out") else ")")
    details = [m.strip() for m in messages if m.strip()][-12:]
    what = "TensorRT's ONNX parser rejected the model"
    if cause:
        what += f" ({cause.strip().splitlines()[-1]})"
    if details:
        what += ":\n    " + "\n    ".join(details)
    return ModelLoadError(what, where=f"{where}: {node}" if node else where,
                          fix="check that every op (and its attributes and dtypes) is supported by this TensorRT "
                              "version's ONNX parser; run `polygraphy inspect capability MODEL.onnx` to list the "
                              "unsupported nodes, or fold/replace them before building")


# --------------------------------------------------------------------------------------------------
# The build-log recorder
# --------------------------------------------------------------------------------------------------

_RECORDER = None
_RECORDER_LOCK = threading.Lock()


def _recording_logger():
    """The process-wide trt.ILogger that records messages and forwards them to Polygraphy's logger.

    TensorRT treats the first logger it is given as process-global, and Polygraphy's loaders create
    every Builder, OnnxParser and Runtime with ``polygraphy.backend.trt.util.get_trt_logger()``.
    So this one logger is installed once as that logger (wrapping the one Polygraphy had) and
    captures are switched on around each build.
    """
    global _RECORDER
    with _RECORDER_LOCK:
        if _RECORDER is not None:
            return _RECORDER
        import tensorrt as trt
        from polygraphy.backend.trt import util as trt_util

        forward = trt_util.get_trt_logger()

        class RecordingTrtLogger(trt.ILogger):
            def __init__(self, forward_to):
                trt.ILogger.__init__(self)
                self._forward = forward_to
                self._captures: list[list[tuple[int, str]]] = []
                self._lock = threading.Lock()

            def log(self, severity, msg):
                # Called by TensorRT and must not raise.
                try:
                    level = int(severity)
                    if level <= int(trt.ILogger.Severity.INFO) or "(Sparsity)" in msg:
                        with self._lock:
                            for capture in self._captures:
                                capture.append((level, msg))
                    self._forward.log(severity, msg)
                except Exception:  # noqa: BLE001 - a logger must never throw into TensorRT
                    pass

            @contextlib.contextmanager
            def capture(self):
                records: list[tuple[int, str]] = []
                with self._lock:
                    self._captures.append(records)
                try:
                    yield records
                finally:
                    with self._lock:
                        self._captures.remove(records)

        _RECORDER = RecordingTrtLogger(forward)
        trt_util.TRT_LOGGER = _RECORDER
        return _RECORDER


_ERROR_LEVEL = 1  # trt.ILogger.Severity.ERROR; INTERNAL_ERROR is 0


def _errors(records: list[tuple[int, str]]) -> list[str]:
    return [msg for level, msg in records if level <= _ERROR_LEVEL]


# --------------------------------------------------------------------------------------------------
# sparsecc plugins and serialized engines
# --------------------------------------------------------------------------------------------------

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_COMPUTE_RE = re.compile(r"expecting compute (?P<want>[\d.]+) got compute (?P<got>[\d.]+)", re.IGNORECASE)
_INCOMPATIBLE_RE = re.compile(r"incompatible device|Platform specific tag mismatch|"
                              r"Serialization assertion .*(?:magicTag|version)|Version tag does not match", re.IGNORECASE)


def engine_load_failure(where: str, messages: list[str], cause: str = "") -> SparseccError:
    """The error for a serialized engine TensorRT would not deserialize, saying why when the log does.

    An engine is specific to the GPU model (compute capability) and the TensorRT version it was built with.
    """
    for msg in messages:
        m = _COMPUTE_RE.search(msg)
        if m:
            return ModelLoadError(f"the engine was built for another GPU (compute {m.group('want')}); this GPU is "
                                  f"compute {m.group('got')}", where=where,
                                  fix="rebuild the engine on this GPU: sparsecc build MODEL.onnx -o ENGINE")
    for msg in messages:
        if _INCOMPATIBLE_RE.search(msg):
            return ModelLoadError(f"the engine was built with another TensorRT version or platform ({msg.strip()})",
                                  where=where, fix="rebuild the engine with this TensorRT: sparsecc build MODEL.onnx -o ENGINE")
    detail = "; ".join(m.strip() for m in messages[-4:]) or cause or "no message"
    return ModelLoadError(f"TensorRT could not deserialize the engine ({detail})", where=where,
                          fix="check that the file is a TensorRT engine from sparsecc build (or trtexec) on this "
                              "GPU with this TensorRT version")


def load_sparsecc_plugins(plugin_nodes: list[tuple[str, str, str]], where: str) -> dict:
    """Register the sparsecc QDP plugins, and compile the AOT kernels the model needs so problems surface here.

    Args:
        plugin_nodes: (node, op_type, dtype) from :func:`sparsecc.plugins.ops.find_plugin_nodes`.
        where: The model, for messages.

    Raises:
        BackendUnavailableError: triton (needed for the plugins' kernels) is not installed.
        UnsupportedModelError: A node's op is not a sparsecc plugin.
        HiddenParameterError: The installed Triton's kernels need arguments TensorRT does not pass.
    """
    from sparsecc.plugins import ops

    unknown = [(n, op) for n, op, _ in plugin_nodes if op not in ops.PLUGIN_OPS]
    if unknown:
        raise UnsupportedModelError(f"node '{unknown[0][0]}' has op '{unknown[0][1]}' in the sparsecc domain, "
                                    "which is no sparsecc plugin", where=where,
                                    fix=f"sparsecc plugins are {list(ops.PLUGIN_OPS)}")
    try:
        import triton  # noqa: F401
    except ImportError as err:
        raise BackendUnavailableError(f"the model has sparsecc plugin nodes ({plugin_nodes[0][0]}, ...) whose kernels "
                                      f"need triton, which is not installed ({err})", where=where,
                                      fix="pip install 'sparsecc[tensorrt]' (installs triton)") from err
    from sparsecc.plugins.ptx import plugin_kernel_ptx
    from sparsecc.plugins.qdp import register_plugins

    settings = register_plugins()
    for op in sorted({(op, dtype) for _, op, dtype in plugin_nodes}):
        plugin_kernel_ptx(op[0], op[1] if op[1] != "?" else "float32", settings["arch"], settings["max_ptx_version"],
                          settings["hidden"])
    return settings


def _model_proto(source, is_path: bool):
    import onnx

    return onnx.load(source, load_external_data=False) if is_path else onnx.load_from_string(source)


def _plugin_layers(network) -> list[str]:
    import tensorrt as trt

    kinds = {getattr(trt.LayerType, name) for name in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN") if hasattr(trt.LayerType, name)}
    return [network.get_layer(i).name for i in range(network.num_layers) if network.get_layer(i).type in kinds]


# --------------------------------------------------------------------------------------------------
# Device timing
# --------------------------------------------------------------------------------------------------

def _time_with_cudart(fn, stream_ptr: int) -> float | None:
    """Milliseconds between CUDA events recorded on ``stream_ptr`` around ``fn()``, via libcudart.

    Polygraphy's ``polygraphy.cuda`` has a Stream but no Event; its wrapper's ctypes handle to the
    CUDA runtime (the one TensorRT runs on) provides the five event calls.
    """
    from polygraphy import cuda

    lib = cuda.wrapper().handle
    start, end = ctypes.c_void_p(), ctypes.c_void_p()
    if lib.cudaEventCreate(ctypes.byref(start)) != 0:
        return None
    try:
        if lib.cudaEventCreate(ctypes.byref(end)) != 0:
            return None
        try:
            stream = ctypes.c_void_p(stream_ptr)
            lib.cudaEventRecord(start, stream)
            fn()
            lib.cudaEventRecord(end, stream)
            if lib.cudaEventSynchronize(end) != 0:
                return None
            ms = ctypes.c_float()
            if lib.cudaEventElapsedTime(ctypes.byref(ms), start, end) != 0:
                return None
            return float(ms.value)
        finally:
            lib.cudaEventDestroy(end)
    finally:
        lib.cudaEventDestroy(start)


def _time_with_torch(fn, stream_ptr: int) -> float | None:
    """The same measurement with torch.cuda events on the same stream, where torch has CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    stream = torch.cuda.ExternalStream(stream_ptr)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    fn()
    end.record(stream)
    end.synchronize()
    return float(start.elapsed_time(end))


# --------------------------------------------------------------------------------------------------
# Session and backend
# --------------------------------------------------------------------------------------------------

class TensorRTSession(Session):
    """A built engine behind an active Polygraphy ``TrtRunner`` (activated once, deactivated on close)."""

    def __init__(self, runner, inputs: list[TensorSpec], settings: dict):
        self._runner = runner
        self._inputs = inputs
        self._settings = settings

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def _check_active(self):
        if self._runner is None:
            raise TensorRTBuildError("this TensorRT session is closed", fix="load the model again")

    def _infer(self, feeds, **kwargs):
        from polygraphy.exception import PolygraphyException

        self._check_active()
        try:
            return self._runner.infer(feed_dict=feeds, **kwargs)
        except PolygraphyException as err:
            expected = ", ".join(f"{s.name}: {s.dtype} {s.shape}" for s in self._inputs)
            raise ShapeError(f"the feeds do not fit the engine ({str(err).strip().splitlines()[-1]})",
                             where="tensorrt session",
                             fix=f"feed exactly these inputs: {expected}") from err

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; every engine output, copied to host numpy arrays (Polygraphy reuses its buffers)."""
        outputs = self._infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return {name: np.array(value, copy=True) for name, value in outputs.items()}

    def device_time_ms(self, feeds: dict[str, np.ndarray]) -> float | None:
        """Device time of one engine execution, measured with CUDA events on the runner's stream.

        The inputs are copied to the device first and the outputs stay there, so the time excludes
        host-device copies and host overhead. No warm-up: callers run it several times. None where
        no CUDA event API can be reached.
        """
        from polygraphy import cuda
        from polygraphy.datatype import DataType

        self._check_active()
        stream = self._runner.stream
        device_feeds = {}
        try:
            for name, value in feeds.items():
                value = np.ascontiguousarray(value)
                array = cuda.DeviceArray(shape=value.shape, dtype=DataType.from_dtype(value.dtype))
                array.copy_from(value, stream=stream)
                device_feeds[name] = array
            stream.synchronize()

            def once():
                self._infer(device_feeds, copy_outputs_to_host=False)

            for timer in (_time_with_cudart, _time_with_torch):
                try:
                    ms = timer(once, stream.ptr)
                except (OSError, AttributeError):
                    ms = None
                if ms is not None:
                    return ms
            return None
        finally:
            for array in device_feeds.values():
                array.free()

    def close(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> dict:
        return dict(self._settings)


def _model_source(model) -> tuple[bytes | str, str, bool]:
    """(source, where, is_path) for ONNX bytes, a path, or an onnx.ModelProto."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"no such ONNX file: {path}", where=str(path),
                                 fix="pass the path of an existing .onnx file, or the serialized model bytes")
        return str(path), str(path), True
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model), "<ONNX bytes>", False
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString(), f"<ONNX model '{getattr(getattr(model, 'graph', None), 'name', '')}'>", False
    raise OptionError(f"cannot load a model given as {type(model).__name__}",
                      fix="pass serialized ONNX bytes or a path to a .onnx file")


def _numpy_dtype(trt_dtype, name: str, where: str) -> np.dtype:
    """The numpy dtype of a network input, or UnsupportedModelError where numpy has none (bfloat16, fp8)."""
    from polygraphy.datatype import DataType
    from polygraphy.exception import PolygraphyException

    try:
        return np.dtype(DataType.to_dtype(DataType.from_dtype(trt_dtype, "tensorrt"), "numpy"))
    except PolygraphyException as err:
        raise UnsupportedModelError(f"input '{name}' has type {trt_dtype}, which numpy arrays cannot hold",
                                    where=where,
                                    fix="keep the graph inputs float32/float16 and Cast to the narrow type "
                                        "inside the graph") from err


def _cuda_device_count() -> tuple[int, str]:
    """(number of CUDA devices, detail) through Polygraphy's CUDA runtime wrapper; never raises."""
    try:
        from polygraphy import cuda

        count = ctypes.c_int(0)
        status = cuda.wrapper().handle.cudaGetDeviceCount(ctypes.byref(count))
        if status != 0:
            return 0, f"cudaGetDeviceCount returned CUDA error {status}"
        return int(count.value), ""
    except Exception as err:  # noqa: BLE001 - any failure here means "no usable GPU"
        return 0, f"the CUDA runtime could not be loaded ({type(err).__name__}: {err})"


class TensorRTBackend(Backend):
    """TensorRT engines from ONNX, built with Polygraphy's loaders.

    Engines are strongly typed (TensorRT 11 has no FP16/INT8 builder flags): build an FP16 engine
    from an FP16 ONNX graph.

    Args:
        sparse_weights: Set ``BuilderFlag.SPARSE_WEIGHTS`` so TensorRT considers 2:4 sparse tactics
            for layers whose weights are 2:4 sparse. Defaults to True.
        workspace_mb: Limit of the workspace memory pool in MiB. Defaults to TensorRT's default
            (the device's global memory).
        builder_optimization_level: 0 (fastest build) to 5 (most tactics tried). Defaults to
            TensorRT's default (3).
        shapes: Input name -> concrete shape, for inputs with dynamic dimensions; the engine gets one
            optimization profile with min = opt = max = that shape. Defaults to none (every input
            must be static).
        engine_path: Where to save the serialized engine. Defaults to not saving it.
        timing_cache: A tactic timing cache file, read before building (if it exists) and updated
            after. Defaults to no timing cache.
    """

    name = "tensorrt"

    def __init__(self, sparse_weights: bool | None = None, workspace_mb: int | None = None,
                 builder_optimization_level: int | None = None, shapes: dict[str, tuple] | None = None,
                 engine_path: str | None = None, timing_cache: str | None = None):
        self.sparse_weights = True if sparse_weights is None else bool(sparse_weights)
        if workspace_mb is not None and (not isinstance(workspace_mb, int) or workspace_mb <= 0):
            raise OptionError(f"workspace_mb must be a positive integer (MiB), got {workspace_mb!r}",
                              fix="pass e.g. workspace_mb=4096, or leave it unset for TensorRT's default")
        if builder_optimization_level is not None and (
                not isinstance(builder_optimization_level, int) or not 0 <= builder_optimization_level <= 5):
            raise OptionError(f"builder_optimization_level must be an integer from 0 to 5, "
                              f"got {builder_optimization_level!r}",
                              fix="pass 0 (fast build) .. 5 (slow build, most tactics), or leave it unset (3)")
        if shapes is not None and not isinstance(shapes, dict):
            raise OptionError(f"shapes must map input names to shapes, got {type(shapes).__name__}",
                              fix="pass e.g. shapes={'input': (1, 3, 224, 224)}")
        self.workspace_mb = workspace_mb
        self.builder_optimization_level = builder_optimization_level
        self.shapes = {k: tuple(v) for k, v in (shapes or {}).items()} or None
        self.engine_path = str(engine_path) if engine_path is not None else None
        self.timing_cache = str(timing_cache) if timing_cache is not None else None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None where engines can be built here, else why not and how to fix it. Never raises."""
        try:
            import tensorrt  # noqa: F401
        except (ImportError, OSError) as err:
            return (f"TensorRT runtime libraries are not installed ({type(err).__name__}: {err}): "
                    f"{_INSTALL_FIX}")
        except Exception as err:  # noqa: BLE001 - a broken install is also "unavailable"
            return f"TensorRT failed to import ({type(err).__name__}: {err}): {_INSTALL_FIX}"
        try:
            import polygraphy.backend.trt  # noqa: F401
        except Exception as err:  # noqa: BLE001
            return (f"Polygraphy is not importable ({type(err).__name__}: {err}): "
                    "install it with: pip install polygraphy")
        count, detail = _cuda_device_count()
        if count == 0:
            return (f"TensorRT is installed but no CUDA device is visible ({detail or 'cudaGetDeviceCount found 0 devices'}): "
                    "run on a machine with an NVIDIA GPU and driver, and check CUDA_VISIBLE_DEVICES")
        return None

    def describe(self) -> dict:
        try:
            import tensorrt

            version = tensorrt.__version__
        except Exception:  # noqa: BLE001 - describe() works without TensorRT
            version = None
        return {"backend": self.name, "tensorrt": version, "sparse_weights": self.sparse_weights,
                "strongly_typed": True, "precision": "as typed in the ONNX graph",
                "workspace_mb": self.workspace_mb, "builder_optimization_level": self.builder_optimization_level,
                "shapes": {k: list(v) for k, v in (self.shapes or {}).items()}, "engine_path": self.engine_path,
                "timing_cache": self.timing_cache}

    def load(self, model: bytes | str | Path) -> TensorRTSession:
        """Parse, build (capturing the builder log), deserialize and activate an engine for ``model``.

        Raises:
            BackendUnavailableError: TensorRT or a GPU is missing.
            ModelLoadError: The file is missing or TensorRT's ONNX parser rejects it.
            OptionError, ShapeError: ``shapes`` does not fit the model's inputs.
            OutputError: ``engine_path`` cannot be written.
            TensorRTBuildError: The builder could not build or deserialize the engine.
        """
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailableError(f"the tensorrt backend cannot run here: {reason}",
                                          fix="use --backend ort (ONNX Runtime on the CPU), or install what is missing")
        source, where, is_path = _model_source(model)
        if is_path and Path(source).suffix.lower() in ENGINE_SUFFIXES:
            return self.load_engine(source)
        from sparsecc.plugins.ops import find_plugin_nodes

        plugin_nodes = find_plugin_nodes(_model_proto(source, is_path))
        plugin_settings = load_sparsecc_plugins(plugin_nodes, where) if plugin_nodes else None
        if self.engine_path and not Path(self.engine_path).resolve().parent.is_dir():
            raise OutputError(f"the folder for the engine does not exist: {Path(self.engine_path).parent}",
                              where=self.engine_path, fix="create the folder or choose another engine_path")

        import tensorrt as trt
        from polygraphy.backend.trt import (CreateConfig, EngineBytesFromNetwork, EngineFromBytes, NetworkFromOnnxBytes,
                                            NetworkFromOnnxPath, Profile, SaveEngine, TrtRunner)
        from polygraphy.exception import PolygraphyException
        from polygraphy.logger import G_LOGGER

        # TensorRT 11 networks are always strongly typed (the creation flag is accepted and ignored);
        # on 10.x the flag must be set. Polygraphy only sets it when asked.
        strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
        network_loader = (NetworkFromOnnxPath(source, strongly_typed=strongly_typed) if is_path
                          else NetworkFromOnnxBytes(source, strongly_typed=strongly_typed))

        recorder = _recording_logger()
        with recorder.capture() as records, G_LOGGER.verbosity(G_LOGGER.WARNING):
            start = time.perf_counter()
            try:
                builder, network, parser = network_loader()
            except PolygraphyException as err:
                raise parser_failure(where, _errors(records), str(err)) from err

            plugin_layers = _plugin_layers(network)
            network_inputs, specs = {}, []
            for i in range(network.num_inputs):
                tensor = network.get_input(i)
                shape = tuple(int(d) for d in tensor.shape)
                network_inputs[tensor.name] = shape
                dtype = _numpy_dtype(tensor.dtype, tensor.name, where)
                specs.append((tensor.name, shape, dtype))
            fixed = resolve_profile_shapes(network_inputs, self.shapes, where)
            inputs = [TensorSpec(name, fixed.get(name, tuple(None if d < 0 else d for d in shape)), dtype)
                      for name, shape, dtype in specs]

            profiles = None
            if fixed:
                profile = Profile()
                for name, shape in fixed.items():
                    profile.add(name, min=shape, opt=shape, max=shape)
                profiles = [profile]
            memory_pool_limits = ({trt.MemoryPoolType.WORKSPACE: self.workspace_mb << 20}
                                  if self.workspace_mb else None)
            config = CreateConfig(sparse_weights=self.sparse_weights, memory_pool_limits=memory_pool_limits,
                                  builder_optimization_level=self.builder_optimization_level, profiles=profiles,
                                  load_timing_cache=self.timing_cache)
            try:
                engine_bytes = EngineBytesFromNetwork((builder, network, parser), config=config,
                                                      save_timing_cache=self.timing_cache)()
            except PolygraphyException as err:
                errors = _errors(records)
                raise TensorRTBuildError(
                    "TensorRT could not build an engine" + (":\n    " + "\n    ".join(errors[-12:]) if errors
                                                            else f" ({err})"),
                    where=where,
                    fix="read the builder errors above; common causes are too small a workspace "
                        "(raise workspace_mb), a dtype mix a strongly typed network rejects (make the graph's "
                        "types consistent), or an unsupported layer") from err
            build_s = time.perf_counter() - start
            del builder, network, parser

            engine_loader = EngineFromBytes(engine_bytes)
            if self.engine_path:
                engine_loader = SaveEngine(engine_loader, path=self.engine_path)
            runner = TrtRunner(engine_loader, name="sparsecc-tensorrt")
            try:
                runner.activate()
            except PolygraphyException as err:
                raise TensorRTBuildError(f"TensorRT built the engine but could not load it ({err})", where=where,
                                         fix="see the TensorRT errors in the log; check free GPU memory") from err
            except OSError as err:
                raise OutputError(f"cannot write the engine: {err}", where=self.engine_path,
                                  fix="choose a writable engine_path") from err

        report = parse_sparsity_log([msg for _, msg in records])
        settings = self.describe()
        settings.update({"tensorrt": trt.__version__, "model": where, "engine_bytes": len(engine_bytes),
                         "build_time_s": round(build_s, 3), "sparsity": report.to_dict(),
                         "plugin_layers": plugin_layers, "plugins": plugin_settings,
                         "device_time": "CUDA events around one execution on the runner's stream"})
        return TensorRTSession(runner, inputs, settings)

    def load_engine(self, path: str | Path) -> TensorRTSession:
        """Deserialize a saved engine (from ``sparsecc build`` or trtexec) and activate it.

        The sparsecc plugins are registered first, so engines whose plugin nodes use the JIT
        implementation find their Python definitions (AOT plugins carry their kernels in the engine).

        Raises:
            BackendUnavailableError: TensorRT or a GPU is missing.
            ModelLoadError: The file is missing, or was built for another GPU or TensorRT version.
        """
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailableError(f"the tensorrt backend cannot run here: {reason}",
                                          fix="load the engine on a machine with TensorRT and the GPU it was built for")
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"no such engine file: {path}", where=str(path),
                                 fix="build one with: sparsecc build MODEL.onnx -o ENGINE")
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.exception import PolygraphyException
        from polygraphy.logger import G_LOGGER

        plugin_settings = None
        try:
            from sparsecc.plugins.qdp import register_plugins

            plugin_settings = register_plugins()
        except ImportError:
            pass  # an engine with AOT plugins (or none) needs no Python plugin definitions
        recorder = _recording_logger()
        with recorder.capture() as records, G_LOGGER.verbosity(G_LOGGER.WARNING):
            runner = TrtRunner(EngineFromBytes(BytesFromPath(str(path))), name="sparsecc-tensorrt")
            try:
                runner.activate()
            except (PolygraphyException, RuntimeError) as err:
                raise engine_load_failure(str(path), _errors(records), str(err)) from err
        engine = runner.engine
        import tensorrt as trt

        inputs = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = tuple(int(d) for d in engine.get_tensor_shape(name))
                inputs.append(TensorSpec(name, tuple(None if d < 0 else d for d in shape),
                                         _numpy_dtype(engine.get_tensor_dtype(name), name, str(path))))
        settings = self.describe()
        settings.update({"tensorrt": trt.__version__, "model": str(path), "engine_bytes": path.stat().st_size,
                         "plugins": plugin_settings, "device_time": "CUDA events around one execution on the runner's stream"})
        return TensorRTSession(runner, inputs, settings)
