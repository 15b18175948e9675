"""The TensorRT backend: strongly typed engines with sparse weights, built with Polygraphy's loaders.

TensorRT 11 networks are always strongly typed: the FP16/INT8/BF16 builder flags are gone, so the
precision of an engine is the precision of the ONNX graph (an FP16 engine comes from an FP16 graph);
FP32 layers may use TF32 tensor cores only where the TF32 flag is set (``tf32=True``; Polygraphy clears it
by default). The one sparsity knob is ``BuilderFlag.SPARSE_WEIGHTS`` (``CreateConfig(sparse_weights=True)``):
TensorRT then times sparse and dense tactics for every layer whose weights are 2:4 sparse and keeps the
faster; the build log says which layers were *eligible* and which had a sparse implementation *picked*
(:mod:`sparsecc.backends.tensorrt.build_log`).

Nothing here imports tensorrt, polygraphy or torch at module import time; every entry point that needs
TensorRT says why it cannot run (:meth:`TensorRTBackend.unavailable_reason`).
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import numpy as np

from sparsecc.backends.base import Backend, TensorSpec
from sparsecc.backends.tensorrt.build_log import parse_sparsity_log
from sparsecc.backends.tensorrt.errors import TensorRTBuildError, engine_load_failure, errors_in, parser_failure
from sparsecc.backends.tensorrt.plugins import load_sparsecc_plugins, plugin_layers, register_for_engine
from sparsecc.backends.tensorrt.profiles import resolve_profile_shapes
from sparsecc.backends.tensorrt.recorder import recording_logger
from sparsecc.backends.tensorrt.session import TensorRTSession
from sparsecc.errors import BackendUnavailableError, ModelLoadError, OptionError, OutputError, UnsupportedModelError

__all__ = ["TensorRTBackend", "ENGINE_SUFFIXES", "precision_name"]

_INSTALL_FIX = ("install the tensorrt wheel with its libnvinfer on a machine with an NVIDIA GPU "
                "(pip install tensorrt); `sparsecc bench` and `validate` run on ONNX Runtime with --backend ort")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_DEVICE_TIME = "CUDA events around one execution on the runner's stream"


def precision_name(float_dtype: str, tf32: bool) -> str:
    """What an engine computes in: "fp16" or "bf16" for such graphs, else "tf32" where TF32 is allowed, else "fp32"."""
    return {"float16": "fp16", "bfloat16": "bf16"}.get(float_dtype, "tf32" if tf32 else "fp32")


def _graph_float_dtype(proto) -> str:
    """The lowest-precision float type among an ONNX graph's initializers, inputs and outputs."""
    from sparsecc.precision import lowest_precision

    io = [v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)]
    return lowest_precision([t.data_type for t in proto.graph.initializer] + io)


def _model_proto(source, is_path: bool):
    import onnx

    return onnx.load(source, load_external_data=False) if is_path else onnx.load_from_string(source)



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
        tf32: Let FP32 layers (TensorRT's and the sparsecc plugin kernels) use TF32 tensor cores.
            Defaults to False (Polygraphy's default: IEEE FP32).
    """

    name = "tensorrt"

    def __init__(self, sparse_weights: bool | None = None, workspace_mb: int | None = None,
                 builder_optimization_level: int | None = None, shapes: dict[str, tuple] | None = None,
                 engine_path: str | None = None, timing_cache: str | None = None, tf32: bool | None = None):
        self.sparse_weights = True if sparse_weights is None else bool(sparse_weights)
        self.tf32 = bool(tf32)
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
            detail = detail or "cudaGetDeviceCount found 0 devices"
            return (f"TensorRT is installed but no CUDA device is visible ({detail}): "
                    "run on a machine with an NVIDIA GPU and driver, and check CUDA_VISIBLE_DEVICES")
        return None

    def describe(self) -> dict:
        try:
            import tensorrt

            version = tensorrt.__version__
        except Exception:  # noqa: BLE001 - describe() works without TensorRT
            version = None
        return {"backend": self.name, "tensorrt": version, "sparse_weights": self.sparse_weights,
                "strongly_typed": True, "tf32": self.tf32, "precision": "as typed in the ONNX graph",
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

        proto = _model_proto(source, is_path)
        plugin_nodes = find_plugin_nodes(proto)
        plugin_settings = load_sparsecc_plugins(plugin_nodes, where, self.tf32) if plugin_nodes else None
        precision = precision_name(_graph_float_dtype(proto), self.tf32)
        del proto
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

        recorder = recording_logger()
        with recorder.capture() as records, G_LOGGER.verbosity(G_LOGGER.WARNING):
            start = time.perf_counter()
            try:
                builder, network, parser = network_loader()
            except PolygraphyException as err:
                raise parser_failure(where, errors_in(records), str(err)) from err

            plugins_in_network = plugin_layers(network)
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
                                  load_timing_cache=self.timing_cache, tf32=self.tf32)
            try:
                engine_bytes = EngineBytesFromNetwork((builder, network, parser), config=config,
                                                      save_timing_cache=self.timing_cache)()
            except PolygraphyException as err:
                errors = errors_in(records)
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
                         "plugin_layers": plugins_in_network, "plugins": plugin_settings, "precision": precision,
                         "device_time": _DEVICE_TIME})
        return TensorRTSession(runner, inputs, settings)

    def load_engine(self, path: str | Path) -> TensorRTSession:
        """Deserialize a saved engine (from ``sparsecc build`` or trtexec) and activate it.

        The sparsecc plugins are registered first, so engines whose plugin nodes use the JIT
        implementation find their Python definitions (AOT plugins carry their kernels in the engine).
        Whatever happens to that registration, an engine without sparsecc JIT plugin layers loads; one
        that does not load says why the registration failed, if it did.

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

        plugin_settings, plugin_problem = register_for_engine(self.tf32)
        recorder = recording_logger()
        with recorder.capture() as records, G_LOGGER.verbosity(G_LOGGER.WARNING):
            runner = TrtRunner(EngineFromBytes(BytesFromPath(str(path))), name="sparsecc-tensorrt")
            try:
                runner.activate()
            except (PolygraphyException, RuntimeError) as err:
                raise engine_load_failure(str(path), errors_in(records), str(err), plugin_problem) from err
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
                         "plugins": plugin_settings, "plugin_registration_problem": plugin_problem,
                         "precision": precision_name(_engine_float_dtype(engine), tf32=True),
                         "precision_note": "from the engine's input and output types; TF32 assumed for FP32 (an "
                                           "engine does not record whether TF32 was allowed; TensorRT allows it "
                                           "by default)",
                         "device_time": _DEVICE_TIME})
        return TensorRTSession(runner, inputs, settings)


def _engine_float_dtype(engine) -> str:
    """The lowest-precision float type among an engine's inputs and outputs."""
    names = {"HALF": "float16", "BF16": "bfloat16"}
    found = {names.get(getattr(engine.get_tensor_dtype(engine.get_tensor_name(i)), "name", ""), "float32")
             for i in range(engine.num_io_tensors)}
    return next((n for n in ("bfloat16", "float16") if n in found), "float32")
