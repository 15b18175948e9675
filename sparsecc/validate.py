"""Validate a built engine or a compiled model against the original ONNX model, output by output.

Two paths:

* both files ONNX and no TensorRT asked for: both run on ONNX Runtime (CPU) through Polygraphy's
  runners and comparator (:func:`sparsecc.verify.compare_models`), so validation works on any machine;
* an engine (``.engine``/``.plan``/``.trt``) or ``backend="tensorrt"``: the candidate runs on TensorRT
  and the original on ONNX Runtime, on the same seeded inputs.

Each output passes when ``max |candidate - original| <= atol + rtol * max |original|``, with a
tolerance per output where one is given. Tolerances not given follow the precision the candidate computes
in (:data:`ENGINE_TOLERANCES`), and the result says which precision and why: FP16 (or BF16) when the
candidate or the graph it was built from is FP16, TF32 for an FP32 engine file (an engine does not record
whether TF32 was allowed, and TensorRT allows it by default), FP32 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsecc.backends.ort import refuse_plugin_nodes
from sparsecc.errors import OptionError

__all__ = ["Tolerances", "parse_tolerances", "validate", "ENGINE_TOLERANCES"]

# Default (atol, rtol) by the precision the candidate computes in. TF32 rounds both GEMM operands to 10
# mantissa bits (relative error up to 2^-11 each, sums in FP32); FP16 also stores every activation in 16 bits.
ENGINE_TOLERANCES = {"fp32": (1e-5, 1e-4), "tf32": (1e-4, 5e-3), "fp16": (1e-3, 2e-2), "bf16": (1e-2, 8e-2)}


@dataclass
class Tolerances:
    """atol / rtol for every output (None: the precision's default) plus overrides per output name."""

    atol: float | None = None
    rtol: float | None = None
    per_output: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def of(self, name: str, default: tuple[float, float] = ENGINE_TOLERANCES["fp32"]) -> tuple[float, float]:
        """(atol, rtol) of output ``name``: its own, else the ones for every output, else ``default``."""
        atol, rtol = self.per_output.get(name, (None, None))
        atol = self.atol if atol is None else atol
        rtol = self.rtol if rtol is None else rtol
        return (default[0] if atol is None else atol), (default[1] if rtol is None else rtol)


def parse_tolerances(atol: list[str] | None, rtol: list[str] | None, default_atol: float | None = None,
                     default_rtol: float | None = None) -> Tolerances:
    """``--atol 1e-3 --atol logits:5e-2``: a bare number sets the default, ``NAME:VALUE`` one output's."""
    tol = Tolerances(default_atol, default_rtol)
    for kind, specs in (("atol", atol or []), ("rtol", rtol or [])):
        for spec in specs:
            name, _, value = spec.rpartition(":")
            try:
                number = float(value)
            except ValueError:
                raise OptionError(f"--{kind} {spec!r} is not a number or NAME:NUMBER",
                                  fix=f"e.g. --{kind} 1e-3 or --{kind} output_0:1e-2") from None
            if not np.isfinite(number) or number < 0:
                raise OptionError(f"--{kind} {spec!r} must be a non-negative number", fix=f"e.g. --{kind} 1e-3")
            if not name:
                setattr(tol, kind, number)
            else:
                a, r = tol.per_output.get(name, (None, None))
                tol.per_output[name] = (number, r) if kind == "atol" else (a, number)
    return tol


def original_session(path: Path):
    """A CPU session of the model an engine is validated against, and what runs it.

    A compiled model with sparsecc plugin nodes (the one ``sparsecc build`` turned into the engine)
    runs with each plugin node through its numpy reference, so an engine can be checked against the
    very graph it was built from, not only against the unpruned original.
    """
    import onnx

    from sparsecc.backends import get_backend
    from sparsecc.backends.reference_ops import custom_nodes, reference_backend_for

    proto = onnx.load(str(path), load_external_data=False)
    if custom_nodes(proto):
        backend = reference_backend_for(proto)  # the graph decides; its weights are not needed for that
        return backend.load(str(path)), f"{backend.name} (CPU; plugin nodes through their numpy references)"
    return get_backend("ort").load(path), "onnxruntime (CPU)"


def validate(candidate: str | Path, against: str | Path, backend: str | None = None,
             tolerances: Tolerances | None = None,
             shapes: dict[str, tuple[int, ...]] | None = None, seed: int = 0, iterations: int = 1) -> dict:
    """Compare ``candidate`` (an engine or ONNX model) with the original ONNX model ``against``.

    Args:
        candidate: The engine or compiled model under test.
        against: The original ONNX model (taken as correct; runs on ONNX Runtime), or for an engine the
            compiled model it was built from (plugin nodes run through their numpy references).
        backend: A backend serving ``validate`` ("ort" or "tensorrt") for an ONNX candidate. Defaults to
            "tensorrt" for an engine file, "ort" otherwise.
        tolerances: Per-output atol / rtol. Defaults to Tolerances().
        shapes: Concrete shapes of dynamic inputs. Defaults to none.
        seed: Seed of the random inputs. Defaults to 0.
        iterations: Random input sets. Defaults to 1.

    Returns:
        {"passed", "backend", "precision": {name, why, atol, rtol}, "outputs": [{name, max_abs_error,
        max_abs_reference, atol, rtol, passed}]}.
    """
    from sparsecc.backends.tensorrt import ENGINE_SUFFIXES
    from sparsecc.model import check_model_file, load_model
    from sparsecc.verify import (compare_models, input_specs, lowest_precision, model_float_dtype, random_feeds,
                                 worst_agreements)

    candidate, against = Path(candidate), Path(against)
    tolerances = tolerances or Tolerances()
    is_engine = candidate.suffix.lower() in ENGINE_SUFFIXES
    backend = backend or ("tensorrt" if is_engine else "ort")
    from sparsecc.backends import backend_names

    if backend not in backend_names("validate"):
        raise OptionError(f"unknown backend '{backend}'", fix=f"choose one of {', '.join(backend_names('validate'))}")
    if is_engine and backend != "tensorrt":
        raise OptionError(f"{candidate} is a TensorRT engine; it runs only with --backend tensorrt",
                          fix="drop --backend ort, or validate the ONNX model instead")
    check_model_file(candidate)
    original = load_model(against, shapes)
    specs = input_specs(original)
    original_dtype = model_float_dtype(original)

    if backend == "ort":
        refuse_plugin_nodes(candidate)
        compiled = load_model(candidate, shapes)
        dtype = lowest_precision([model_float_dtype(compiled), original_dtype])
        precision = _short(dtype)
        why = f"the lower-precision float type of the two models ({dtype}), both on ONNX Runtime"
        config = _config(tolerances, precision, seed, iterations)
        agreements = compare_models(original, compiled, specs, config).outputs
        runtime = {"candidate": "onnxruntime (CPU)", "original": "onnxruntime (CPU)",
                   "comparator": "Polygraphy Comparator.run / compare_accuracy"}
    else:
        from sparsecc.backends import get_backend

        trt_session = get_backend("tensorrt", shapes=shapes).load(candidate)
        try:
            engine = trt_session.describe()
            precision, why = _engine_precision(engine, original_dtype)
            config = _config(tolerances, precision, seed, iterations)
            ort_session, original_runtime = original_session(against)
            feeds = random_feeds(specs, seed, iterations)
            agreements = list(worst_agreements([ort_session.run(f) for f in feeds],
                                               [trt_session.run(f) for f in feeds], config).values())
            runtime = {"candidate": "tensorrt", "original": original_runtime, "engine": engine}
        finally:
            trt_session.close()
    default = ENGINE_TOLERANCES[precision]
    outputs = []
    for a in agreements:
        atol, rtol = tolerances.of(a.name, default)
        passed = bool(np.isfinite(a.max_abs_error) and a.max_abs_error <= atol + rtol * a.max_abs_reference)
        outputs.append({"name": a.name, "max_abs_error": a.max_abs_error, "max_abs_reference": a.max_abs_reference,
                        "atol": atol, "rtol": rtol, "passed": passed})
    unknown = sorted(set(tolerances.per_output) - {o["name"] for o in outputs})
    if unknown:
        raise OptionError(f"tolerances name output(s) {unknown} that the model does not have",
                          fix=f"use output names: {[o['name'] for o in outputs]}")
    return {"passed": all(o["passed"] for o in outputs), "backend": backend, "candidate": str(candidate),
            "against": str(against), "seed": seed, "iterations": iterations, "runtime": runtime,
            "precision": {"name": precision, "why": why, "atol": default[0], "rtol": default[1]}, "outputs": outputs}


def _short(dtype: str) -> str:
    return {"float16": "fp16", "bfloat16": "bf16"}.get(dtype, "fp32")


def _config(tolerances: Tolerances, precision: str, seed: int, iterations: int):
    from sparsecc.verify import VerifyConfig

    atol, rtol = ENGINE_TOLERANCES[precision]
    return VerifyConfig(atol=atol if tolerances.atol is None else tolerances.atol,
                        rtol=rtol if tolerances.rtol is None else tolerances.rtol, seed=seed, iterations=iterations)


def _engine_precision(engine: dict, original_dtype: str) -> tuple[str, str]:
    """(precision, why) of a TensorRT candidate from what the backend reported and the graph it is checked against."""
    reported = engine.get("precision", "fp32")
    against = _short(original_dtype)
    if against in ("fp16", "bf16") and reported not in ("fp16", "bf16"):
        return against, f"the model it is checked against is {original_dtype}"
    note = engine.get("precision_note") or ("the graph's float type" + (" with TF32 allowed" if engine.get("tf32")
                                                                          else ", TF32 not allowed"))
    return reported, note
