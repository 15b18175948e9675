"""sparsecc's plugins through TensorRT's own plugin layer, driven as TensorRT's ONNX parser and builder drive them.

TensorRT's Quickly Deployable Plugin layer is pure Python (``tensorrt_bindings/plugin/`` in the
``tensorrt-cu12-bindings`` wheel). :func:`offline_tensorrt` loads that real layer over
:mod:`sparsecc.plugins.trt_stub` (a stand-in for the compiled module only) and imports
:mod:`sparsecc.plugins.qdp` against it, so the registrations run exactly as they would under TensorRT.
Then, for an ONNX plugin node:

* :func:`create_plugin` does what the ONNX parser's plugin importer does: find the creator by op_type,
  ``plugin_version`` (default "1") and ``plugin_namespace``; build the fields from the creator's field
  names, taking each from the node's attribute of that name (INT and INTS as int32, FLOAT(S) as float32,
  STRING as chars); pick the creation request from ``aot`` (1: strict AOT, 0: strict JIT, absent:
  no preference) and call ``create_plugin(op_type, namespace, fields, BUILD, request)``.
* :func:`build_plugin` does what the builder does with the plugin: output types, output shape
  expressions over the input dimensions (a named symbol for a dynamic one), the supported type/format
  combinations, ``configure_plugin`` with the combination matching the network's types, the tactics,
  and for an AOT plugin ``get_launch_params`` and ``get_kernel``: kernel name, PTX, grid, block,
  shared memory and the int32 extra arguments as dimension expressions.
* :meth:`PluginBuild.launch` evaluates those for concrete input dimensions, and
  :func:`run_interpreted` runs the kernel variant the PTX was compiled from under Triton's CPU
  interpreter with exactly that grid and those arguments (inputs, int32 scalars, outputs).

Nothing here needs TensorRT's libraries or a GPU; the kernels need triton and torch (CPU).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

__all__ = ["PLUGIN_LAYER_ENV", "plugin_layer_dir", "plugin_layer_missing_reason", "offline_tensorrt", "OfflineTensorRT",
           "plugin_node", "create_plugin", "build_plugin", "PluginBuild", "Launch", "run_interpreted"]

# A folder holding tensorrt_bindings/ (e.g. an unpacked wheel) to use instead of the installed one.
PLUGIN_LAYER_ENV = "SPARSECC_TRT_PLUGIN_LAYER"
_INSTALL = "pip install tensorrt-cu12-bindings (its pure-Python plugin layer installs without TensorRT's libraries)"


def plugin_layer_dir() -> Path | None:
    """The folder of TensorRT's plugin layer (``tensorrt_bindings/plugin``), or None where it is not installed."""
    root = os.environ.get(PLUGIN_LAYER_ENV)
    if root:
        candidate = Path(root) / "tensorrt_bindings" / "plugin"
        return candidate if (candidate / "_lib.py").is_file() else None
    spec = importlib.util.find_spec("tensorrt_bindings")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]) / "plugin"
    return candidate if (candidate / "_lib.py").is_file() else None


def plugin_layer_missing_reason() -> str | None:
    """None where :func:`offline_tensorrt` can run, else what is missing and how to get it."""
    if plugin_layer_dir() is None:
        where = f" (${PLUGIN_LAYER_ENV}={os.environ[PLUGIN_LAYER_ENV]})" if os.environ.get(PLUGIN_LAYER_ENV) else ""
        return f"TensorRT's Python plugin layer (tensorrt_bindings/plugin) is not installed{where}: {_INSTALL}"
    return None


def _bindings_version(layer: Path) -> str:
    from importlib import metadata

    for dist in ("tensorrt_cu12_bindings", "tensorrt_cu13_bindings", "tensorrt_bindings"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    for info in layer.parent.parent.glob("tensorrt_cu*_bindings-*.dist-info"):
        return info.name[:-len(".dist-info")].split("-")[1]
    return "0.0.0"


@dataclass
class OfflineTensorRT:
    """The loaded layer: ``trt`` (the stub as ``tensorrt``), ``trtp`` (TensorRT's ``tensorrt.plugin``), ``qdp``."""

    trt: object
    trtp: object
    qdp: object
    layer: Path


_OWNED = ("tensorrt", "sparsecc.plugins.qdp")


def _owned(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in _OWNED)


@contextlib.contextmanager
def offline_tensorrt(version: str | None = None):
    """TensorRT's plugin layer over the stub, with :mod:`sparsecc.plugins.qdp` imported against it.

    Inside the block ``import tensorrt`` gives the stub and ``tensorrt.plugin`` the real layer (fresh:
    a new plugin registry each time); on exit the previous modules are put back.

    Args:
        version: The ``tensorrt.__version__`` the stub reports. Defaults to the plugin layer's wheel version.

    Raises:
        ModuleNotFoundError: The plugin layer is not installed (:func:`plugin_layer_missing_reason`).
    """
    layer = plugin_layer_dir()
    if layer is None:
        raise ModuleNotFoundError(plugin_layer_missing_reason())
    saved = {name: module for name, module in sys.modules.items() if _owned(name)}
    package = sys.modules.get("sparsecc.plugins")
    saved_attr = getattr(package, "qdp", None) if package is not None else None
    for name in saved:
        del sys.modules[name]
    try:
        stub_spec = importlib.util.spec_from_file_location("tensorrt", Path(__file__).with_name("trt_stub.py"))
        trt = importlib.util.module_from_spec(stub_spec)
        trt.__path__ = []  # a package, so that tensorrt.plugin resolves
        sys.modules["tensorrt"] = trt
        stub_spec.loader.exec_module(trt)
        trt.__version__ = version or _bindings_version(layer)
        layer_spec = importlib.util.spec_from_file_location("tensorrt.plugin", layer / "__init__.py",
                                                            submodule_search_locations=[str(layer)])
        trtp = importlib.util.module_from_spec(layer_spec)
        sys.modules["tensorrt.plugin"] = trtp
        trt.plugin = trtp
        layer_spec.loader.exec_module(trtp)
        import sparsecc.plugins.qdp as qdp

        yield OfflineTensorRT(trt, trtp, qdp, layer)
    finally:
        for name in [n for n in sys.modules if _owned(n)]:
            del sys.modules[name]
        sys.modules.update(saved)
        if package is not None:
            if saved_attr is None:
                package.__dict__.pop("qdp", None)
            else:
                package.qdp = saved_attr


# --------------------------------------------------------------------------------------------------
# The ONNX parser's plugin importer
# --------------------------------------------------------------------------------------------------

# AttributeProto.AttributeType values (the ONNX spec's), so a node need not come from the onnx package
_FLOAT, _INT, _STRING, _FLOATS, _INTS = 1, 2, 3, 6, 7


def plugin_node(op_type: str, aot: bool = True, **attributes) -> SimpleNamespace:
    """A stand-in for an ONNX NodeProto of a sparsecc plugin (op_type and attributes), built without onnx."""
    from sparsecc.plugins.ops import plugin_node_attributes

    attrs = []
    for name, value in plugin_node_attributes(op_type, aot=aot, **attributes).items():
        if isinstance(value, str):
            attrs.append(SimpleNamespace(name=name, type=_STRING, s=value.encode()))
        elif isinstance(value, list):
            attrs.append(SimpleNamespace(name=name, type=_INTS, ints=[int(v) for v in value]))
        else:
            attrs.append(SimpleNamespace(name=name, type=_INT, i=int(value)))
    return SimpleNamespace(op_type=op_type, attribute=attrs)


def _field(trt, name: str, attr):
    kinds = {_INT: (lambda a: np.array([a.i], np.int32), trt.PluginFieldType.INT32),
             _INTS: (lambda a: np.array(list(a.ints), np.int32), trt.PluginFieldType.INT32),
             _FLOAT: (lambda a: np.array([a.f], np.float32), trt.PluginFieldType.FLOAT32),
             _FLOATS: (lambda a: np.array(list(a.floats), np.float32), trt.PluginFieldType.FLOAT32),
             _STRING: (lambda a: a.s, trt.PluginFieldType.CHAR)}
    if attr.type not in kinds:
        raise ValueError(f"attribute '{name}' of type {attr.type} is not supported as a plugin field by TensorRT's "
                         "ONNX parser")
    convert, kind = kinds[attr.type]
    return trt.PluginField(name, convert(attr), kind)


def create_plugin(offline: OfflineTensorRT, node):
    """Create the plugin for an ONNX NodeProto (or a :func:`plugin_node`) as TensorRT's ONNX parser does.

    Returns:
        (plugin, request name, [(field name, numpy data)], [attributes the creator does not read]).

    Raises:
        LookupError: No creator is registered for the node (the parser's "Plugin not found").
    """
    trt = offline.trt
    attrs = {a.name: a for a in node.attribute}
    namespace = attrs["plugin_namespace"].s.decode() if "plugin_namespace" in attrs else ""
    version = attrs["plugin_version"].s.decode() if "plugin_version" in attrs else "1"
    creator = trt.get_plugin_registry().get_creator(node.op_type, version, namespace)
    if creator is None:
        raise LookupError(f"Plugin not found, are the plugin name, version, and namespace correct? "
                          f"({node.op_type}, version {version}, namespace '{namespace}')")
    fields = [_field(trt, f.name, attrs[f.name]) for f in creator.field_names if f.name in attrs]
    unread = sorted(set(attrs) - {f.name for f in creator.field_names})
    if "aot" in attrs:
        request = trt.QuickPluginCreationRequest.STRICT_AOT if attrs["aot"].i else \
            trt.QuickPluginCreationRequest.STRICT_JIT
    else:
        request = trt.QuickPluginCreationRequest.UNKNOWN
    plugin = creator.create_plugin(node.op_type, namespace, trt.PluginFieldCollection(fields),
                                   trt.TensorRTPhase.BUILD, request)
    return plugin, request.name, [(f.name, f.data) for f in fields], unread


# --------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------

@dataclass
class Launch:
    """An AOT kernel launch as TensorRT would make it, for concrete input dimensions."""

    kernel_name: str
    ptx: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int
    scalars: list[int]
    output_shapes: list[tuple[int, ...]]


@dataclass
class PluginBuild:
    """What the builder learnt from one plugin: types, shape expressions, formats, and the AOT launch."""

    aot: bool
    output_types: list
    output_shapes: list            # IDimensionExpr per output dimension
    combinations: list             # [(types, formats)] the plugin advertised
    chosen: tuple                  # the (types, formats) matching the network's types
    tactics: list[int]
    kernel_name: str | None = None
    ptx: str | None = None
    launch_params: dict = field(default_factory=dict)    # grid_x .. shared_mem -> IDimensionExpr
    extra_args: list = field(default_factory=list)       # (PluginArgDataType, IDimensionExpr)

    def launch(self, dims: dict[str, int] | None = None) -> Launch:
        """Grid, block, shared memory and scalar arguments for the symbols' values ``dims`` (e.g. {"N": 4})."""
        if not self.aot:
            raise ValueError("a JIT plugin launches its kernel from Python at run time; there is no AOT launch")
        value = {k: e.evaluate(dims) for k, e in self.launch_params.items()}
        return Launch(self.kernel_name, self.ptx, (value["grid_x"], value["grid_y"], value["grid_z"]),
                      (value["block_x"], value["block_y"], value["block_z"]), value["shared_mem"],
                      [e.evaluate(dims) for _, e in self.extra_args],
                      [tuple(e.evaluate(dims) for e in shape) for shape in self.output_shapes])


def _dynamic_desc(trt, exprs, dtype, fmt, profile):
    """A DynamicPluginTensorDesc: -1 for a run-time dimension, min/opt/max evaluated at the profile's values."""
    dims = [e.get_constant_value() if e.is_constant() else -1 for e in exprs]
    bounds = [[e.evaluate({s: v[i] for s, v in profile.items()}) for e in exprs] for i in range(3)]
    return trt.DynamicPluginTensorDesc(trt.PluginTensorDesc(dims, dtype, fmt), *bounds)


def build_plugin(offline: OfflineTensorRT, plugin, input_types: list, input_shapes: list,
                 profile: dict[str, tuple[int, int, int]] | None = None) -> PluginBuild:
    """Take a created plugin through the builder's calls (see the module docstring).

    Args:
        offline: From :func:`offline_tensorrt`.
        plugin: From :func:`create_plugin`.
        input_types: TensorRT data type of each input, as the network gives them.
        input_shapes: Each input's shape: ints, or a symbol name (str) for a dynamic dimension.
        profile: (min, opt, max) of each symbol. Defaults to (1, 1, 1) for every symbol.

    Raises:
        LookupError: The plugin advertises no combination with the network's input types.
    """
    trt = offline.trt
    symbols = {d for shape in input_shapes for d in shape if isinstance(d, str)}
    profile = {s: tuple((profile or {}).get(s, (1, 1, 1))) for s in symbols}
    plugin = plugin.get_capability_interface(trt.PluginCapabilityType.BUILD)
    n_in = len(input_types)
    output_types = list(plugin.get_output_data_types(list(input_types), [len(s) for s in input_shapes]))
    builder = trt.IExprBuilder()
    in_exprs = [trt.DimsExprs([builder.constant(d) if isinstance(d, int) else builder.symbol(d) for d in shape])
                for shape in input_shapes]
    out_exprs = [list(e) for e in plugin.get_output_shapes(in_exprs, [], builder)]
    n_io = n_in + len(output_types)

    def descs(types, formats):
        exprs = [list(e) for e in in_exprs] + out_exprs
        return [_dynamic_desc(trt, exprs[i], types[i], formats[i], profile) for i in range(n_io)]

    linear = [trt.TensorFormat.LINEAR] * n_io
    flat = plugin.get_supported_format_combinations(descs(list(input_types) + output_types, linear), n_in)
    combinations = [(tuple(d.type for d in flat[i:i + n_io]), tuple(d.format for d in flat[i:i + n_io]))
                    for i in range(0, len(flat), n_io)]
    wanted = tuple(input_types) + tuple(output_types)
    matching = [c for c in combinations if c[0] == wanted]
    if not matching:
        raise LookupError(f"the plugin advertises no type combination for the network's types {wanted}: "
                          f"{combinations}")
    chosen = matching[0]
    in_out = descs(list(chosen[0]), list(chosen[1]))
    plugin.configure_plugin(in_out[:n_in], in_out[n_in:])
    tactics = list(plugin.get_valid_tactics()) or [0]
    result = PluginBuild(aot=hasattr(plugin, "get_launch_params"), output_types=output_types, output_shapes=out_exprs,
                         combinations=combinations, chosen=chosen, tactics=tactics)
    if not result.aot:
        return result
    plugin.set_tactic(tactics[0])
    params, setter = _LaunchParams(), _SymExprSetter()
    plugin.get_launch_params(in_exprs, in_out, n_in, params, setter, trt.IExprBuilder())
    name, ptx = plugin.get_kernel([d.desc for d in in_out[:n_in]], [d.desc for d in in_out[n_in:]])
    result.kernel_name = name.decode() if isinstance(name, bytes) else name
    result.ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    result.launch_params = {k: v.expr for k, v in vars(params).items()}
    result.extra_args = [(setter[i].dtype, setter[i].expr) for i in range(setter.nbSymExprs)]
    plugin.get_timing_cache_id()
    return result


class _LaunchParams:
    """TensorRT's launch-parameter setter: the plugin layer assigns ISymExprs to its grid/block/shared fields."""

    _FIELDS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")

    def __setattr__(self, name, value):
        if name not in self._FIELDS:
            raise AttributeError(f"launch parameters have no field '{name}'")
        super().__setattr__(name, value)


class _SymExprSetter:
    """TensorRT's extra-argument setter: a count, then one ISymExpr per index."""

    def __init__(self):
        self.nbSymExprs = 0
        self._exprs = {}

    def __setitem__(self, index, expr):
        if not 0 <= index < self.nbSymExprs:
            raise IndexError(f"extra argument {index} set with nbSymExprs = {self.nbSymExprs}")
        self._exprs[index] = expr

    def __getitem__(self, index):
        return self._exprs[index]


# --------------------------------------------------------------------------------------------------
# The kernel under Triton's interpreter
# --------------------------------------------------------------------------------------------------

def run_interpreted(launch: Launch, inputs: list[np.ndarray], output_dtype) -> np.ndarray:
    """Run the launch's kernel variant under Triton's interpreter: inputs, int32 scalars, output, that grid.

    The variant (Triton function, constants) is the one :mod:`sparsecc.plugins.ptx` compiled under
    ``launch.kernel_name`` in this process.

    Raises:
        LookupError: No kernel of that name was compiled here.
    """
    import torch
    from triton.runtime.interpreter import InterpretedFunction

    from sparsecc.plugins.ptx import kernel_variant

    variant = kernel_variant(launch.kernel_name)
    if variant is None:
        raise LookupError(f"no kernel variant named {launch.kernel_name} was compiled in this process")
    fn = InterpretedFunction(variant.fn.fn)
    args = [torch.from_numpy(np.array(a, copy=True, order="C")) for a in inputs]
    (shape,) = launch.output_shapes
    out = torch.zeros(shape, dtype=torch.from_numpy(np.zeros(0, output_dtype)).dtype)
    fn[launch.grid](*args, *launch.scalars, out, **dict(variant.constexprs))
    return out.numpy()
