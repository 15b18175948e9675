"""A stand-in for TensorRT's compiled Python module, enough to run TensorRT's own plugin layer without TensorRT.

TensorRT's Quickly Deployable Plugin layer (``tensorrt.plugin``) is plain Python, shipped in the
``tensorrt-cu12-bindings`` wheel as ``tensorrt_bindings/plugin/``; only the compiled module it imports as
``tensorrt`` needs libnvinfer and a GPU. This module provides what that layer and sparsecc's registrations
use of the compiled module, written from TensorRT's documented Python API: the enums (data types,
formats, dimension operations, plugin creation requests), plugin fields, the plugin registry, tensor
descriptors, the plugin interfaces (empty bases here) and a dimension-expression builder.

Dimension expressions are symbolic: an input dimension is a named symbol (``"N"`` for a dynamic batch)
or a build-time constant, operations of two constants fold to a constant as TensorRT's builder does,
and :meth:`IDimensionExpr.evaluate` gives the value for any assignment of the symbols. The builder
refuses a negative constant (:class:`NegativeConstantError`): a dimension expression describes a size,
so sparsecc's shape expressions use only non-negative constants.

:mod:`sparsecc.plugins.trt_offline` installs this module as ``tensorrt`` (only where TensorRT itself is
absent) and drives the plugins through the real plugin layer the way TensorRT's ONNX parser and builder
do. It is not TensorRT: it runs no engine and checks only what the plugin layer hands to TensorRT.
"""

from __future__ import annotations

import enum

import numpy as np

__version__ = "0.0.0"  # replaced by the plugin layer's wheel version when installed (trt_offline)

INT64_MIN = -(2 ** 63)


class NegativeConstantError(ValueError):
    """A shape expression asked the builder for a negative constant."""


# --------------------------------------------------------------------------------------------------
# Enums
# --------------------------------------------------------------------------------------------------

class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10
    E8M0 = 11


float32, float16, bfloat16 = DataType.FLOAT, DataType.HALF, DataType.BF16
int8, int32, int64 = DataType.INT8, DataType.INT32, DataType.INT64
_NP_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
             DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}


def nptype(dtype: DataType):
    """The numpy type of a TensorRT data type."""
    if dtype not in _NP_TYPES:
        raise TypeError(f"no numpy type for {dtype!r}")
    return _NP_TYPES[dtype]


class TensorFormat(enum.IntEnum):
    LINEAR = 0
    CHW2 = 1
    HWC8 = 2
    CHW4 = 3
    CHW16 = 4
    CHW32 = 5
    DHWC8 = 6
    CDHW32 = 7
    HWC = 8
    DLA_LINEAR = 9
    DLA_HWC4 = 10
    HWC16 = 11
    DHWC = 12


class DimensionOperation(enum.IntEnum):
    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    SUB = 4
    EQUAL = 5
    LESS = 6
    FLOOR_DIV = 7
    CEIL_DIV = 8


class PluginFieldType(enum.IntEnum):
    FLOAT16 = 0
    FLOAT32 = 1
    FLOAT64 = 2
    INT8 = 3
    INT16 = 4
    INT32 = 5
    CHAR = 6
    DIMS = 7
    UNKNOWN = 8
    BF16 = 9
    INT64 = 10
    FP8 = 11
    INT4 = 12
    FP4 = 13


class TensorRTPhase(enum.IntEnum):
    BUILD = 0
    RUNTIME = 1


class QuickPluginCreationRequest(enum.IntEnum):
    UNKNOWN = 0
    PREFER_JIT = 1
    PREFER_AOT = 2
    STRICT_JIT = 3
    STRICT_AOT = 4


class PluginArgType(enum.IntEnum):
    INT = 0


class PluginArgDataType(enum.IntEnum):
    INT8 = 0
    INT16 = 1
    INT32 = 2


class PluginCapabilityType(enum.IntEnum):
    CORE = 0
    BUILD = 1
    RUNTIME = 2


# --------------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------------

class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (Severity.INTERNAL_ERROR, Severity.ERROR, Severity.WARNING,
                                                      Severity.INFO, Severity.VERBOSE)

    def __init__(self, *args):
        self.messages: list[tuple[int, str]] = []

    def log(self, severity, msg):
        self.messages.append((int(severity), str(msg)))


class Logger(ILogger):
    pass


# --------------------------------------------------------------------------------------------------
# Dimensions and dimension expressions
# --------------------------------------------------------------------------------------------------

class Dims(list):
    """A shape: ``Dims((2, 3))`` or ``Dims(rank)`` (zeros)."""

    MAX_DIMS = 8

    def __init__(self, shape=()):
        super().__init__([0] * shape if isinstance(shape, int) else [int(d) for d in shape])


class DimsExprs(list):
    """One IDimensionExpr per dimension of a tensor."""

    def __init__(self, rank=0):
        super().__init__([None] * rank if isinstance(rank, int) else list(rank))


def _apply(op: DimensionOperation, a: int, b: int) -> int:
    if op in (DimensionOperation.FLOOR_DIV, DimensionOperation.CEIL_DIV) and b == 0:
        raise ZeroDivisionError(f"{op.name} by zero in a dimension expression")
    return {DimensionOperation.SUM: lambda: a + b, DimensionOperation.PROD: lambda: a * b,
            DimensionOperation.MAX: lambda: max(a, b), DimensionOperation.MIN: lambda: min(a, b),
            DimensionOperation.SUB: lambda: a - b, DimensionOperation.EQUAL: lambda: int(a == b),
            DimensionOperation.LESS: lambda: int(a < b), DimensionOperation.FLOOR_DIV: lambda: a // b,
            DimensionOperation.CEIL_DIV: lambda: -(-a // b)}[op]()


_SYMBOLS = {DimensionOperation.SUM: "+", DimensionOperation.PROD: "*", DimensionOperation.SUB: "-",
            DimensionOperation.FLOOR_DIV: "//", DimensionOperation.EQUAL: "==", DimensionOperation.LESS: "<"}


class IDimensionExpr:
    """An integer expression of constants and named input dimensions."""

    def __init__(self, constant: int | None = None, symbol: str | None = None, op=None, operands=()):
        self._constant = constant
        self._symbol = symbol
        self._op = op
        self._operands = tuple(operands)

    def is_constant(self) -> bool:
        return self._constant is not None

    def get_constant_value(self) -> int:
        return self._constant if self._constant is not None else INT64_MIN

    def is_size_tensor(self) -> bool:
        return False

    def symbols(self) -> set[str]:
        """The named dimensions this expression depends on."""
        if self._symbol is not None:
            return {self._symbol}
        return set().union(*(o.symbols() for o in self._operands)) if self._operands else set()

    def evaluate(self, values: dict[str, int] | None = None) -> int:
        """The value for ``values`` (symbol -> int); constants need none."""
        if self._constant is not None:
            return self._constant
        if self._symbol is not None:
            if not values or self._symbol not in values:
                raise KeyError(f"no value for the dimension '{self._symbol}'")
            return int(values[self._symbol])
        a, b = (o.evaluate(values) for o in self._operands)
        return _apply(self._op, a, b)

    def __repr__(self):
        if self._constant is not None:
            return str(self._constant)
        if self._symbol is not None:
            return self._symbol
        a, b = self._operands
        sym = _SYMBOLS.get(self._op)
        return f"({a!r} {sym} {b!r})" if sym else f"{self._op.name.lower()}({a!r}, {b!r})"


class IExprBuilder:
    """Builds dimension expressions; constant operands fold, negative constants are refused."""

    def __init__(self):
        self.constants: list[int] = []

    def constant(self, value) -> IDimensionExpr:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"a dimension constant must be an int, got {type(value).__name__} {value!r}")
        value = int(value)
        if value < 0:
            raise NegativeConstantError(f"negative constant {value} in a dimension expression: shape expressions "
                                        "describe sizes; use SUB with a positive constant instead")
        self.constants.append(value)
        return IDimensionExpr(constant=value)

    def operation(self, op: DimensionOperation, first: IDimensionExpr, second: IDimensionExpr) -> IDimensionExpr:
        if not isinstance(first, IDimensionExpr) or not isinstance(second, IDimensionExpr):
            raise TypeError(f"operation({op!r}) takes two IDimensionExpr, got {type(first).__name__}, "
                            f"{type(second).__name__}")
        if first.is_constant() and second.is_constant():
            return IDimensionExpr(constant=_apply(op, first.get_constant_value(), second.get_constant_value()))
        return IDimensionExpr(op=DimensionOperation(op), operands=(first, second))

    @staticmethod
    def symbol(name: str) -> IDimensionExpr:
        """An input dimension known only at run time (not part of TensorRT's builder API)."""
        return IDimensionExpr(symbol=name)

    def declare_size_tensor(self, *args):
        raise NotImplementedError("size tensors are not modelled: sparsecc's plugins have none")


# --------------------------------------------------------------------------------------------------
# Tensor descriptors
# --------------------------------------------------------------------------------------------------

class PluginTensorDesc:
    def __init__(self, dims=(), type=DataType.FLOAT, format=TensorFormat.LINEAR, scale=1.0):  # noqa: A002
        self.dims = Dims(dims)
        self.type = type
        self.format = format
        self.scale = scale


class DynamicPluginTensorDesc:
    def __init__(self, desc: PluginTensorDesc | None = None, min=(), opt=(), max=()):  # noqa: A002
        self.desc = desc or PluginTensorDesc()
        self.min, self.opt, self.max = Dims(min), Dims(opt), Dims(max)


class ITensor:
    """A network tensor (only a type here: the plugin layer checks isinstance against it)."""


class TensorDesc:
    """Placeholder of the compiled TensorDesc (the plugin layer defines its own)."""


# --------------------------------------------------------------------------------------------------
# Plugin fields, interfaces and the registry
# --------------------------------------------------------------------------------------------------

class PluginField:
    """A named plugin attribute: its data is always a numpy array (bytes become uint8)."""

    def __init__(self, name: str = "", data=None, type: PluginFieldType = PluginFieldType.UNKNOWN):  # noqa: A002
        self.name = name
        if data is None:
            data = np.array([])
        elif isinstance(data, (bytes, bytearray)):
            data = np.frombuffer(bytes(data), dtype=np.uint8)
        self.data = np.asarray(data)
        self.type = type
        self.size = int(self.data.size)


class PluginFieldCollection(list):
    pass


class _Interface:
    def __init__(self, *args, **kwargs):
        pass


class IPluginV3(_Interface):
    pass


class IPluginV3QuickCore(_Interface):
    pass


class IPluginV3QuickBuild(_Interface):
    pass


class IPluginV3QuickRuntime(_Interface):
    pass


class IPluginV3QuickAOTBuild(_Interface):
    pass


class IPluginCreatorV3Quick(_Interface):
    pass


class IPluginCreatorV3One(_Interface):
    pass


class ISymExpr(_Interface):
    pass


class IPluginRegistry:
    """Plugin creators by (name, version, namespace), as TensorRT's registry keeps them."""

    def __init__(self):
        self._creators: dict[tuple[str, str, str], object] = {}

    def register_creator(self, creator, plugin_namespace: str = "") -> bool:
        key = (creator.name, str(creator.plugin_version), plugin_namespace)
        if key in self._creators:
            return False
        self._creators[key] = creator
        return True

    def deregister_creator(self, creator) -> bool:
        for key, value in list(self._creators.items()):
            if value is creator:
                del self._creators[key]
                return True
        return False

    def get_creator(self, name: str, version: str, plugin_namespace: str = ""):
        return self._creators.get((name, str(version), plugin_namespace))

    @property
    def all_creators(self) -> list:
        return list(self._creators.values())

    plugin_creator_list = all_creators


_REGISTRY = IPluginRegistry()


def get_plugin_registry() -> IPluginRegistry:
    return _REGISTRY


def reset_plugin_registry() -> None:
    """A fresh, empty registry (each offline session starts with one)."""
    global _REGISTRY
    _REGISTRY = IPluginRegistry()
