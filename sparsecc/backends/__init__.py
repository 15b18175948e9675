"""Backends: ONNX Runtime (default, CPU) and TensorRT (where installed), in a registry that feeds the CLI.

Each backend is declared once (:class:`BackendSpec`): where its class is (imported only when it is
used, so ``import sparsecc`` never imports tensorrt), which commands it serves, and the options it
takes (:class:`BackendOption`), which ``bench``, ``validate`` and ``build`` turn into their
``--backend`` choices and command-line flags.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from sparsecc.backends.base import Backend, Session, TensorSpec
from sparsecc.errors import BackendUnavailableError, OptionError

__all__ = ["Backend", "BackendOption", "BackendSpec", "BACKENDS", "Session", "TensorSpec", "add_backend_options",
           "backend_class", "backend_names", "backend_options", "get_backend", "register_backend"]

COMMANDS = ("bench", "validate", "build")


@dataclass(frozen=True)
class BackendOption:
    """One option of a backend: its constructor keyword, and the flag a command gives it.

    Attributes:
        keyword: The keyword of the backend's constructor (also the argparse destination).
        flag: The command-line flag.
        help: What it does, "Default: ..." included.
        commands: The commands that take it. Defaults to every command the backend serves.
        argparse: More ``add_argument`` keywords (``type``, ``default``, ``action``, ``metavar``).
    """

    keyword: str
    flag: str
    help: str
    commands: tuple[str, ...] = COMMANDS
    argparse: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendSpec:
    """A registered backend.

    Attributes:
        name: What ``--backend`` takes.
        target: ``"module:Class"`` of its :class:`Backend`, imported when it is used.
        description: One line for help texts.
        commands: The commands it serves (``build`` only for backends that build engines).
        options: The options it takes.
        takes_shapes: Its constructor takes ``shapes`` (concrete input shapes, from ``--shape``).
    """

    name: str
    target: str
    description: str
    commands: tuple[str, ...] = ("bench", "validate")
    options: tuple[BackendOption, ...] = ()
    takes_shapes: bool = False


BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Make a backend available to the API and to the commands it serves."""
    unknown = sorted(set(spec.commands) - set(COMMANDS))
    if unknown:
        raise ValueError(f"backend {spec.name!r} names unknown command(s) {unknown}")
    known = BACKENDS.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"two backends are named {spec.name!r}")
    BACKENDS[spec.name] = spec
    return spec


def backend_names(command: str | None = None) -> list[str]:
    """The registered backends (those serving ``command`` when given)."""
    return [name for name, spec in BACKENDS.items() if command is None or command in spec.commands]


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise OptionError(f"unknown backend '{name}'", fix=f"choose one of: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].target.split(":")
    return getattr(importlib.import_module(module), cls)


def get_backend(name: str = "ort", **options) -> Backend:
    """A ready backend, or BackendUnavailableError saying why it cannot run here."""
    cls = backend_class(name)
    reason = cls.unavailable_reason()
    if reason:
        raise BackendUnavailableError(f"the {name} backend cannot run here: {reason}",
                                      fix="use --backend ort (ONNX Runtime on the CPU), or install what is missing")
    return cls(**options)


def add_backend_options(parser, command: str) -> None:
    """Add the flags of every backend serving ``command`` to its parser (each flag once)."""
    seen: set[str] = set()
    for name in backend_names(command):
        for option in BACKENDS[name].options:
            if command in option.commands and option.flag not in seen:
                seen.add(option.flag)
                parser.add_argument(option.flag, dest=option.keyword, help=option.help, **option.argparse)


def backend_options(name: str, values: Any, command: str | None = None, shapes=None) -> dict[str, Any]:
    """The constructor options of backend ``name`` found in ``values`` (parsed arguments or a mapping).

    Only the options the backend declares (for ``command``) are taken, and ``shapes`` when it takes them.
    """
    if name not in BACKENDS:
        raise OptionError(f"unknown backend '{name}'", fix=f"choose one of: {', '.join(BACKENDS)}")
    spec = BACKENDS[name]
    get = values.get if isinstance(values, dict) else lambda key, default=None: getattr(values, key, default)
    options = {o.keyword: get(o.keyword) for o in spec.options
               if (command is None or command in o.commands) and get(o.keyword) is not None}
    if spec.takes_shapes:
        options["shapes"] = shapes
    return options


register_backend(BackendSpec(
    "ort", "sparsecc.backends.ort:OrtBackend", "ONNX Runtime on the CPU",
    options=(BackendOption("threads", "--threads", "intra-op threads (ort). Default: 2", commands=("bench",),
                           argparse={"type": int, "default": 2}),)))
register_backend(BackendSpec(
    "tensorrt", "sparsecc.backends.tensorrt:TensorRTBackend",
    "TensorRT engines on an NVIDIA GPU (device time from CUDA events beside host time)",
    commands=("bench", "validate", "build"), takes_shapes=True,
    options=(
        BackendOption("sparse_weights", "--no-sparse-weights", "do not let TensorRT use 2:4 sparse tactics",
                      commands=("build",), argparse={"action": "store_false", "default": True}),
        BackendOption("workspace_mb", "--workspace-mb", "workspace memory pool limit in MiB. Default: TensorRT's",
                      commands=("build",), argparse={"type": int, "metavar": "WORKSPACE_MB"}),
        BackendOption("builder_optimization_level", "--opt-level", "builder optimization level 0-5. Default: 3",
                      commands=("build",), argparse={"type": int, "metavar": "OPT_LEVEL"}),
        BackendOption("timing_cache", "--timing-cache", "tactic timing cache, read if present and updated",
                      commands=("build",), argparse={"metavar": "FILE"}),
        BackendOption("tf32", "--tf32", "let FP32 layers and the sparsecc plugin kernels use TF32 tensor cores. "
                      "Default: IEEE FP32", commands=("build",), argparse={"action": "store_true"}),
    )))
