"""Numpy references for sparsecc-domain operators, registered by op name.

Every custom operator sparsecc emits (a TensorRT plugin node, say) has a numpy reference here. The
references are what makes such a graph checkable without the plugin's runtime: verification runs the
sparsecc-domain nodes through them, and the plugin kernels are tested against them.

A reference is a function ``fn(*inputs, **attributes)`` of numpy arrays and the node's attributes
(ints, floats, strings, lists of them) that returns one array or a tuple of arrays, one per output.
Its signature (input and output names, attribute names and types) is registered beside it, so a
pass can check that the nodes it emits match what the plugin expects without importing TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

DOMAIN = "sparsecc"


@dataclass(frozen=True)
class OpSignature:
    """What a node of one sparsecc-domain op must look like.

    Attributes:
        inputs: input names, in order (optional trailing inputs end with ``?``).
        outputs: output names, in order.
        attributes: attribute name -> Python type (``int``, ``float``, ``str``, ``list``).
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, type] = field(default_factory=dict)


@dataclass(frozen=True)
class Reference:
    op_type: str
    domain: str
    fn: Callable[..., Any]
    signature: OpSignature

    def __call__(self, *inputs: np.ndarray, **attributes: Any) -> tuple[np.ndarray, ...]:
        result = self.fn(*inputs, **attributes)
        return tuple(result) if isinstance(result, (tuple, list)) else (result,)


_REFERENCES: dict[tuple[str, str], Reference] = {}


def register_reference(op_type: str, signature: OpSignature, domain: str = DOMAIN):
    """Decorator: register ``fn`` as the numpy reference of ``domain::op_type``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = (domain, op_type)
        if key in _REFERENCES and _REFERENCES[key].fn is not fn:
            raise ValueError(f"a reference for {domain}::{op_type} is already registered "
                             f"({_REFERENCES[key].fn.__module__}.{_REFERENCES[key].fn.__qualname__})")
        _REFERENCES[key] = Reference(op_type, domain, fn, signature)
        return fn

    return decorate


def unregister_reference(op_type: str, domain: str = DOMAIN) -> None:
    """Remove a registration (for tests that register a throw-away op)."""
    _REFERENCES.pop((domain, op_type), None)


def get_reference(op_type: str, domain: str = DOMAIN) -> Reference | None:
    """The registered reference of ``domain::op_type``, or None."""
    return _REFERENCES.get((domain, op_type))


def registered_references() -> dict[tuple[str, str], Reference]:
    """Every registration, keyed by (domain, op_type)."""
    return dict(_REFERENCES)
