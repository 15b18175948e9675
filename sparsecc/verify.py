"""Numerical verification: does graph B compute what graph A computes?

Both graphs run on ONNX Runtime (CPU) through Polygraphy's runners and
comparator, on the same seeded random inputs; a graph holding sparsecc-domain
nodes runs them through their numpy references (:func:`verification_backend`). An output passes when

    max |B - A| <= atol + rtol * max |A|

i.e. ``rtol`` is relative to the scale of the output, not to each element (a
per-element relative test fails on outputs that cross zero, where rounding
differences are legitimately large relative to the element).

Unless given, the tolerances follow the model's float type (its lowest-precision
one, so an FP16 graph with FP32 inputs counts as FP16): an exact rewrite changes
the order of accumulation, and its rounding grows with the type's machine epsilon.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from sparsecc import interrupts
from sparsecc.model import Model
from sparsecc.polygraphy_guard import guard_polygraphy
from sparsecc.precision import lowest_precision  # noqa: F401  (imported from here by callers)
from sparsecc.session_files import SessionFiles

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4
# (atol, rtol) per float type; rtol about ten machine epsilons (FP16 eps 9.8e-4, BF16 7.8e-3).
DTYPE_TOLERANCES = {
    "float64": (DEFAULT_ATOL, DEFAULT_RTOL),
    "float32": (DEFAULT_ATOL, DEFAULT_RTOL),
    "float16": (1e-3, 1e-2),
    "bfloat16": (1e-2, 8e-2),
}


@dataclass
class VerifyConfig:
    """Settings of a verification run.

    Attributes:
        atol: Absolute tolerance. Defaults to the model's float type's (1e-5 for FP32,
            1e-3 for FP16, 1e-2 for BF16; see ``DTYPE_TOLERANCES``).
        rtol: Tolerance relative to max |reference output|. Defaults to the model's float
            type's (1e-4 for FP32, 1e-2 for FP16, 8e-2 for BF16).
        seed: Seed of the random inputs. Defaults to 0.
        iterations: Number of random input sets. Defaults to 1.
        dtype: The float type the tolerances were taken from, once resolved. Defaults to none.
    """

    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    iterations: int = 1
    dtype: str | None = None

    def for_dtype(self, dtype: str) -> "VerifyConfig":
        """This config with the tolerances not given taken from ``dtype``'s."""
        atol, rtol = DTYPE_TOLERANCES.get(dtype, DTYPE_TOLERANCES["float32"])
        return VerifyConfig(atol if self.atol is None else self.atol, rtol if self.rtol is None else self.rtol,
                            self.seed, self.iterations, dtype)

    def for_model(self, model: Model) -> "VerifyConfig":
        """This config with the tolerances not given taken from the model's float type."""
        return self.for_dtype(model_float_dtype(model))


def model_float_dtype(model: Model) -> str:
    """The model's float type: the lowest precision among its float constants and its inputs and outputs."""
    import onnx_graphsurgeon as gs

    tensors = [t for t in model.graph.tensors().values() if isinstance(t, gs.Constant)]
    return lowest_precision([t.dtype for t in tensors] + [t.dtype for t in (*model.graph.inputs,
                                                                              *model.graph.outputs)])


@dataclass
class OutputAgreement:
    name: str
    max_abs_error: float
    max_abs_reference: float
    relative_error: float  # max_abs_error / max_abs_reference
    worst_index: tuple[int, ...]
    reference_value: float
    candidate_value: float
    passed: bool
    dtype: str = ""  # of the reference output (what precision the tolerance can ask for)


@dataclass
class VerifyResult:
    passed: bool
    atol: float
    rtol: float
    outputs: list[OutputAgreement] = field(default_factory=list)
    backend: str = "onnxruntime"  # what ran the graphs (see verification_backend)
    dtype: str | None = None  # the float type the tolerances follow

    @property
    def worst(self) -> OutputAgreement | None:
        return max(self.outputs, key=lambda o: o.relative_error, default=None)

    def describe_worst(self) -> str:
        worst = self.worst
        if worst is None:
            return "no outputs compared"
        return (f"output '{worst.name}' element {list(worst.worst_index)}: expected {worst.reference_value:.6g}, "
                f"got {worst.candidate_value:.6g} (max abs error {worst.max_abs_error:.3g} = "
                f"{worst.relative_error:.3g} x max |output| {worst.max_abs_reference:.3g}; "
                f"allowed {self.atol:g} + {self.rtol:g} x max |output|)")

    def to_dict(self) -> dict:
        data = asdict(self)
        worst = self.worst
        data["worst_relative_error"] = worst.relative_error if worst else 0.0
        return data


class InputSpecs(list):
    """``(name, shape, dtype)`` of each input, with the :class:`~sparsecc.feeds.FeedOptions` that say
    what to feed them (user data, value ranges; None for the defaults)."""

    def __init__(self, specs=(), options=None):
        super().__init__(specs)
        self.options = options


def random_feeds(specs, seed: int, iterations: int = 1) -> list[dict[str, np.ndarray]]:
    """Seeded inputs (:func:`sparsecc.feeds.make_feeds`): the data and ranges the user gave, realistic
    values for integer inputs by name, else standard normal floats and integers in {0, 1}."""
    from sparsecc.feeds import make_feeds

    return make_feeds(specs, seed, iterations, getattr(specs, "options", None))


def input_specs(model: Model, shapes: dict[str, tuple[int, ...]] | None = None) -> InputSpecs:
    """The inputs of the model at its compile shapes (or at ``shapes``), with what to feed them."""
    shapes = shapes or model.static_input_shapes()
    return InputSpecs([(t.name, shapes[t.name], np.dtype(t.dtype)) for t in model.graph.inputs], model.feeds)


def verification_backend(*models: Model) -> str:
    """The backend that can run these graphs: "onnxruntime" for standard ONNX; for a graph holding
    sparsecc-domain nodes, "ort-references" (ONNX Runtime + the nodes' numpy references as Python
    custom ops), or "onnx-reference" (ONNX's ReferenceEvaluator) without onnxruntime-extensions.
    (tools/bench_verify_backends.py measured the two: the first was faster on 3 of 4 models and runs the
    standard nodes on the very kernels the graph before the pass ran on.)"""
    from sparsecc.backends.reference_ops import custom_ops_use_float16, graph_has_custom_ops, reference_backend_name

    graphs = [m.graph for m in models if isinstance(m, Model)]
    if not any(graph_has_custom_ops(g) for g in graphs):
        return "onnxruntime"
    return reference_backend_name(any(custom_ops_use_float16(g) for g in graphs))


def compare_models(reference: Model | bytes | str | os.PathLike, candidate: Model | bytes | str | os.PathLike,
                   specs, config: VerifyConfig | None = None, backend: str | None = None,
                   files: SessionFiles | None = None) -> VerifyResult:
    """Run both graphs on the same random inputs and compare every output.

    Args:
        reference: The graph taken as correct: a Model (written to a temporary file with
            external data, which ONNX Runtime loads without another copy of the weights),
            the path of an .onnx file, or serialized ONNX bytes.
        candidate: The graph under test.
        specs: ``(name, shape, dtype)`` for each input (see :func:`input_specs`).
        config: Tolerances and seed. Defaults to :class:`VerifyConfig()`.
        backend: "onnxruntime", "ort-references" or "onnx-reference". Defaults to
            :func:`verification_backend` of the two graphs (give it when passing files or bytes of
            graphs with sparsecc-domain nodes).
        files: Where Models are written; a graph it wrote before with the same weights is not
            run again on the same inputs (its outputs are kept). Defaults to a private one.
    """
    interrupts.point("verify")
    interrupts.check()  # a signal whose exception something swallowed stops the work here
    config = config or VerifyConfig()
    if isinstance(reference, Model) and (config.atol is None or config.rtol is None):
        config = config.for_model(reference)
    backend = backend or verification_backend(reference, candidate)
    if backend != "onnxruntime":
        return _compare_with_references(reference, candidate, specs, config, backend, files)
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.comparator.struct import RunResults
    from polygraphy.logger import G_LOGGER

    from sparsecc.log import quiet_polygraphy

    quiet_polygraphy()
    guard_polygraphy()
    owned = files is None
    files = files or SessionFiles()
    try:
        feeds = random_feeds(specs, config.seed, config.iterations)
        inputs_key = _inputs_key(config, specs)
        results = RunResults()
        for label, model in (("reference", reference), ("candidate", candidate)):
            source = files.write(model.graph) if isinstance(model, Model) else model
            results.append((label, _run(label, source, feeds, files, inputs_key)))
    finally:
        if owned:
            files.close()
    config = _resolve_tolerances(config, results[0][1])
    agreements = worst_agreements(results[0][1], results[1][1], config)

    # Polygraphy's comparator makes the pass/fail call, with a per-output absolute tolerance
    # that encodes "atol + rtol * max |reference|".
    scale = {name: config.atol + config.rtol * a.max_abs_reference for name, a in agreements.items()
             if np.isfinite(a.max_abs_error)}
    # Polygraphy logs every mismatch as an error; a pruning pass differs on purpose, and a real
    # failure is reported by sparsecc's own message, so its log is silenced here.
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL), np.errstate(all="ignore"):  # its relative errors divide by 0
        accuracy = Comparator.compare_accuracy(
            _without_agreeing_non_finite(results),
            compare_func=SimpleCompareFunc(atol=scale or config.atol, rtol=0.0, check_error_stat="max",
                                           check_shapes=True))
    passed = bool(accuracy) and all(a.passed for a in agreements.values())
    return VerifyResult(passed, config.atol, config.rtol, list(agreements.values()), dtype=config.dtype)


def _inputs_key(config: VerifyConfig, specs) -> tuple:
    options = getattr(specs, "options", None)  # user data and ranges (InputSpecs)
    return (config.seed, config.iterations, tuple((n, tuple(s), str(d)) for n, s, d in specs),
            options.key() if options is not None else None)


def run_model(model: Model, specs, config: VerifyConfig, files: SessionFiles) -> None:
    """Run one graph on the inputs the checks use, as they run it (its outputs are kept in ``files``, so
    the next check of the same graph does not run it again).

    Raises:
        OnnxRuntimeFailure: ONNX Runtime cannot load or run the graph.
    """
    config = config if config.atol is not None and config.rtol is not None else config.for_model(model)
    backend = verification_backend(model)
    feeds = random_feeds(specs, config.seed, config.iterations)
    if backend == "onnxruntime":
        from sparsecc.log import quiet_polygraphy

        quiet_polygraphy()
        _run("reference", files.write(model.graph), feeds, files, _inputs_key(config, specs))
        return
    from sparsecc.backends.reference_ops import OnnxReferenceBackend, OrtReferencesBackend

    runner = OrtReferencesBackend() if backend == "ort-references" else OnnxReferenceBackend()
    session = runner.load(files.write(model.graph))
    for feed in feeds:
        session.run(feed)


def _compare_with_references(reference, candidate, specs, config: VerifyConfig, backend: str,
                             files: SessionFiles | None) -> VerifyResult:
    """Both graphs on a backend that runs sparsecc-domain nodes through their numpy references."""
    from sparsecc.backends.reference_ops import OnnxReferenceBackend, OrtReferencesBackend

    runner = OrtReferencesBackend() if backend == "ort-references" else OnnxReferenceBackend()
    feeds = random_feeds(specs, config.seed, config.iterations)
    owned = files is None
    files = files or SessionFiles()
    try:  # Models go through the shared weight file, as on the plain path: no serialised copy of the weights
        sessions = [runner.load(files.write(m.graph) if isinstance(m, Model) else m) for m in (reference, candidate)]
    finally:
        if owned:
            files.close()
    ref_iters = [sessions[0].run(f) for f in feeds]
    config = _resolve_tolerances(config, ref_iters)
    agreements = worst_agreements(ref_iters, [sessions[1].run(f) for f in feeds], config)
    return VerifyResult(all(a.passed for a in agreements.values()), config.atol, config.rtol,
                        list(agreements.values()), backend, config.dtype)


def _resolve_tolerances(config: VerifyConfig, ref_iters) -> VerifyConfig:
    """Tolerances not given, for serialised models: from their outputs' float type."""
    if config.atol is not None and config.rtol is not None:
        return config
    return config.for_dtype(lowest_precision(np.asarray(v).dtype for out in ref_iters for v in out.values()))


def worst_agreements(ref_iters, cand_iters, config: VerifyConfig) -> dict[str, OutputAgreement]:
    """The worst agreement of each output over the input sets."""
    agreements: dict[str, OutputAgreement] = {}
    for ref_out, cand_out in zip(ref_iters, cand_iters):
        for name in ref_out.keys():
            if name not in cand_out:
                agreements[name] = OutputAgreement(name, float("inf"), 0.0, float("inf"), (), 0.0, float("nan"), False)
                continue
            agreement = _agreement(name, np.asarray(ref_out[name]), np.asarray(cand_out[name]), config)
            previous = agreements.get(name)
            if previous is None or agreement.relative_error > previous.relative_error:
                agreements[name] = agreement
    return agreements


def verification_session(source: bytes | str, initializers: list | None = None):
    """An ONNX Runtime CPU session that runs the graph as written, holding one copy of its weights.

    Graph optimisations are off (the check is of sparsecc's graph, not of ONNX Runtime's
    rewrite of it), and so are weight prepacking and the memory arena: with them a VGG-16
    session took 3-4 s to build and peaked at 1.8x its weights, without them 0.1 s and 1.1x,
    and the memory goes back when the session is closed. ``initializers`` ((name, array) pairs,
    :meth:`SessionFiles.initializers`) are run from the graph's own arrays: with nothing prepacked,
    the session then holds no copy of them at all.
    """
    import onnxruntime as ort

    from sparsecc.backends.ort import add_initializers, create_session

    options = ort.SessionOptions()
    values = add_initializers(options, initializers)
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = create_session(source, options, ["CPUExecutionProvider"])
    session._sparsecc_initializers = values  # the buffers ONNX Runtime runs from, for the session's life
    return session


def _run(label: str, source, feeds, files: SessionFiles, inputs_key) -> list:
    """The outputs of one graph on ``feeds`` (Polygraphy IterationResults), from ``files``' cache if it has them."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.comparator.struct import IterationResult

    from sparsecc.backends.ort import OnnxRuntimeFailure

    cached = files.outputs(source, inputs_key)
    if cached is None:
        guard_polygraphy()
        source_arg = str(source) if isinstance(source, (str, os.PathLike)) else source
        arrays = files.initializers(source) if isinstance(source, (str, os.PathLike)) else None
        runner = OnnxrtRunner(lambda: verification_session(source_arg, arrays), name=label)
        try:
            cached = Comparator.run([runner], data_loader=feeds)[0][1]  # the session is released after the run
        except OnnxRuntimeFailure:
            raise
        except Exception as err:  # noqa: BLE001 - ONNX Runtime's run errors come through Polygraphy unchanged
            raise OnnxRuntimeFailure("run", str(err)) from err
        files.keep_outputs(source, inputs_key, cached)
    return [IterationResult(outputs={name: it[name] for name in it.keys()}, runtime=it.runtime, runner_name=label)
            for it in cached]


def _agreement(name: str, ref: np.ndarray, cand: np.ndarray, config: VerifyConfig) -> OutputAgreement:
    if ref.shape != cand.shape:
        return OutputAgreement(name, float("inf"), float(np.max(np.abs(ref), initial=0.0)), float("inf"),
                               (), float("nan"), float("nan"), False)
    ref64, cand64 = ref.astype(np.float64), cand.astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(cand64 - ref64)
    # a NaN or infinity the reference gives (NaN weights, say) is matched by the same one; any other
    # non-finite difference is the largest error there is
    same = _same_non_finite(ref64, cand64)
    diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff)) if diff.size else diff
    finite = np.abs(ref64[np.isfinite(ref64)])
    max_ref = float(np.max(finite, initial=0.0))
    if diff.size == 0:
        return OutputAgreement(name, 0.0, max_ref, 0.0, (), 0.0, 0.0, True, ref.dtype.name)
    index = np.unravel_index(int(np.argmax(diff)), diff.shape)
    max_err = float(diff[index])
    relative = max_err / max_ref if max_ref > 0 else (0.0 if max_err == 0 else float("inf"))
    passed = max_err <= config.atol + config.rtol * max_ref
    return OutputAgreement(name, max_err, max_ref, relative, tuple(int(i) for i in index),
                           float(ref64[index]), float(cand64[index]), passed, ref.dtype.name)


def optimized_outputs(path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs of a model file on ONNX Runtime with its default graph optimisations, as users run it
    (they fold shapes the model declares in value_info: a fixed size there breaks other sizes)."""
    import onnxruntime as ort

    from sparsecc.backends.ort import create_session, run_session

    session = create_session(str(path), ort.SessionOptions(), ["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, run_session(session, names, feeds)))


def check_second_shape(reference: Model, compiled, config: VerifyConfig, files: SessionFiles) -> dict:
    """Compare the compiled model with ``reference`` at second input shapes, where the input model leaves
    a dimension symbolic (:func:`sparsecc.feeds.second_shapes`): the compiled model must keep accepting
    every size the input model accepts.

    Returns a dict for the report: ``shapes`` (None when every dim is fixed), ``passed`` (None when not
    checked) and a ``note``.

    Raises:
        VerificationError: the compiled model fails, or disagrees, where the reference runs.
    """
    from sparsecc.errors import VerificationError
    from sparsecc.feeds import second_shapes

    shapes = second_shapes({t.name: t.shape for t in reference.graph.inputs}, reference.static_input_shapes())
    if shapes is None:
        return {"shapes": None, "passed": None, "note": "every input dimension is fixed"}
    shown = {name: list(shape) for name, shape in shapes.items()}
    if verification_backend(reference) != "onnxruntime":
        return {"shapes": shown, "passed": None, "note": "not checked: the graph has sparsecc-domain nodes"}
    feeds = random_feeds(input_specs(reference, shapes), config.seed + 1)[0]
    try:
        expected = optimized_outputs(files.write(reference.graph), feeds)
    except Exception as exc:  # the input model rejects these sizes: nothing for the compiled one to keep
        reason = " ".join(str(exc).split())[:200]
        return {"shapes": shown, "passed": None, "note": f"not checked: the input model does not run at these "
                                                         f"shapes ({reason})"}
    try:
        got = optimized_outputs(compiled, feeds)
    except Exception as exc:
        raise VerificationError(
            f"the compiled model fails at input shapes {shown}, which the input model accepts (its symbolic "
            f"dimensions must stay symbolic): {' '.join(str(exc).split())[:300]}", where=reference.source,
            fix="run with --dump-dir to find the pass that fixed a size; --disable-pass NAME skips it") from None
    agreements = worst_agreements([expected], [got], config)
    result = VerifyResult(all(a.passed for a in agreements.values()), config.atol, config.rtol,
                          list(agreements.values()), dtype=config.dtype)
    if not result.passed:
        raise VerificationError(f"at input shapes {shown} the compiled model does not match: "
                                f"{result.describe_worst()}", where=reference.source,
                                fix="run with --dump-dir to find the pass; --disable-pass NAME skips it")
    return {"shapes": shown, "passed": True, "note": "outputs match",
            "worst_relative_error": result.to_dict()["worst_relative_error"]}


def _same_non_finite(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Where both are NaN, or both the same infinity."""
    return (np.isnan(ref) & np.isnan(cand)) | (np.isinf(ref) & (ref == cand))


def _without_agreeing_non_finite(results):
    """Copies of both runs' outputs with the NaNs and infinities they agree on set to 0, for Polygraphy's
    comparator (which counts NaN against NaN as a mismatch); everything else as it was."""
    from polygraphy.comparator.struct import IterationResult, RunResults

    (ref_name, ref_iters), (cand_name, cand_iters) = results[0], results[1]
    new_ref, new_cand = [], []
    for ref_it, cand_it in zip(ref_iters, cand_iters):
        ref_out, cand_out = dict(ref_it.items()), dict(cand_it.items())
        for name, ref in list(ref_out.items()):
            cand = cand_out.get(name)
            ref, cand = np.asarray(ref), np.asarray(cand) if cand is not None else None
            if cand is None or ref.shape != cand.shape or not np.issubdtype(ref.dtype, np.floating) \
                    or np.isfinite(ref).all():
                continue
            same = _same_non_finite(ref, cand.astype(ref.dtype, copy=False))
            ref_out[name], cand_out[name] = np.where(same, 0, ref), np.where(same, 0, cand)
        new_ref.append(IterationResult(outputs=ref_out, runtime=ref_it.runtime, runner_name=ref_name))
        new_cand.append(IterationResult(outputs=cand_out, runtime=cand_it.runtime, runner_name=cand_name))
    out = RunResults()
    out.append((ref_name, new_ref))
    out.append((cand_name, new_cand))
    return out
