"""Optimization-profile shapes for the inputs of a network TensorRT parsed (pure Python, testable without TensorRT)."""

from __future__ import annotations

from sparsecc.errors import OptionError, ShapeError

__all__ = ["resolve_profile_shapes"]


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
                              fix=f"give a concrete shape, e.g. shapes={{'{name}': "
                                  f"{tuple(d or 1 for d in net_shape)}}}")
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

