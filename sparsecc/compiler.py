"""``sparsecc compile``: canonicalise -> plan -> rewrite -> verify -> write.

Outputs (``model.onnx``, ``plan.json`` + ``plan.npz``, ``report.json``,
``report.md``) are written as every command writes (:mod:`sparsecc.outputs`): into a
staging folder inside the output folder, moved into place only when everything
succeeded, so a failed or interrupted compile leaves the folder as it was. The
input file and its data are only ever read.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sparsecc import interrupts
from sparsecc.errors import InputError, ModelLoadError, OptionError, OutputError, VerificationError
from sparsecc.feeds import FeedOptions
from sparsecc.inspect import inspect_model
from sparsecc.log import progress
from sparsecc.model import Model, load_model
from sparsecc.onnx_files import SessionFiles, external_data_path, release_to_files, write_model
from sparsecc.outputs import OutputFolder, final_path, resolve
from sparsecc.passes.canonicalize import CANONICAL_PASSES
from sparsecc.passmanager import PassContext, PassManager, PassRecord
from sparsecc.plan import SparsityPlan
from sparsecc.recipe import Recipe, load_recipe
from sparsecc.verify import (VerifyConfig, check_second_shape, compare_models, input_specs,
                             lowest_precision, model_float_dtype, verification_backend)
from sparsecc.verify_options import verify_config


@dataclass
class CompileResult:
    out_dir: Path
    model: Model
    records: list[PassRecord]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.out_dir / "model.onnx"


def compile_model(model_path: str | os.PathLike, recipe: str | Recipe = "none", out_dir: str | os.PathLike = "out",
                  shapes: dict[str, tuple[int, ...]] | None = None, disable: list[str] | tuple[str, ...] = (),
                  dump_dir: str | os.PathLike | None = None, plan: str | os.PathLike | None = None,
                  verify: VerifyConfig | Mapping[str, Any] | None = None, force: bool = False,
                  cost_model: str | None = None, timing_cache: str | os.PathLike | None = None,
                  trace: bool = False, inputs: FeedOptions | None = None) -> CompileResult:
    """Compile a model with a recipe and write the outputs.

    Args:
        model_path: The input .onnx (never modified).
        recipe: A built-in recipe name, a recipe file, or a Recipe. Defaults to "none".
        out_dir: Output folder. Defaults to "out".
        shapes: Concrete shapes for dynamic inputs. Defaults to none.
        disable: Names of passes not to run. Defaults to none.
        dump_dir: Write the graph after each pass here. Defaults to none.
        plan: A plan.json to start from (e.g. made by fine-tuning elsewhere). Defaults to none.
        verify: Tolerances and seed of the numerical checks, a VerifyConfig or a mapping with some of
            atol, rtol, seed, iterations (the rest from the recipe). Defaults to the recipe's; tolerances
            given by neither follow the model's float type (:data:`sparsecc.verify.DTYPE_TOLERANCES`).
        force: Write into ``out_dir`` even if it holds files (the outputs replace theirs).
            Defaults to False: a folder that is not empty is refused.
        cost_model: "measured" or "analytic", for every pass that chooses by a cost model. Defaults to
            each pass's own option.
        timing_cache: The timing cache file, or "off". Defaults to ``$SPARSECC_TIMING_CACHE``, else
            ``~/.cache/sparsecc/timing-cache.json`` (see :mod:`sparsecc.lowering.timing_cache`).
        trace: Log, after each pass, why each rewrite rule did not fire on each layer. Defaults to False.
        inputs: Data and value ranges for the inputs that verification and timing feed
            (:class:`sparsecc.feeds.FeedOptions`); given data fixes the compile shape of its input.
            Defaults to seeded random values (realistic ones for integer inputs by name).

    A failed or interrupted compile leaves the output folder as it was, and removes the folders it created.
    """
    from sparsecc.lowering import open_timing_cache

    started = time.perf_counter()
    model_path = Path(model_path)
    if cost_model not in (None, "measured", "analytic"):
        raise OptionError(f"unknown cost model '{cost_model}'", fix="use --cost-model measured or analytic")
    check_dump_dir(dump_dir)
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    verify = _verify_config(recipe, verify)
    passes = recipe.build_passes()
    cache = open_timing_cache(timing_cache)
    if resolve(Path(out_dir) / "model.onnx") == resolve(model_path):
        raise OutputError("the output would overwrite the input model", where=str(out_dir),
                          fix="choose another output folder")
    input_files = [model_path, *plan_files(plan), *([recipe.source] if Path(recipe.source).is_file() else [])]
    with OutputFolder(out_dir, "compile", inputs=input_files, force=force) as folder:
        return _compile(model_path, recipe, folder, shapes, disable, dump_dir, plan, verify, passes, started,
                        PassContextOptions(trace, cost_model, cache, inputs))


def check_dump_dir(dump_dir: str | os.PathLike | None) -> None:
    """``--dump-dir`` must be a folder (or a path where one can be made), refused before any work."""
    if dump_dir is not None and Path(dump_dir).exists() and not Path(dump_dir).is_dir():
        raise OptionError("--dump-dir names something that is not a folder", where=str(dump_dir),
                          fix="give --dump-dir a folder (it is created if missing)")


@dataclass
class PassContextOptions:
    """What every pass of one compile shares besides the model: trace, cost model, timing cache."""

    trace: bool
    cost_model: str | None
    timing_cache: Any
    inputs: FeedOptions | None = None


def _compile(model_path: Path, recipe: Recipe, folder: OutputFolder, shapes, disable, dump_dir, plan,
             verify: VerifyConfig, passes, started: float, options: PassContextOptions) -> CompileResult:
    progress(f"loading {model_path}")
    original = load_with_feeds(model_path, shapes, options.inputs)
    folder.protect(*original.files)  # its external data is never replaced or removed
    original.static_input_shapes()  # dynamic inputs without --shape fail here, before any work
    interrupts.point("loaded")
    given = verify
    verify = verify.for_model(original)  # tolerances not given follow the model's float type
    model = original.copy()  # shares the weight arrays with the original until a pass replaces them
    ctx = PassContext(model, trace=options.trace, cost_model=options.cost_model,
                      timing_cache=options.timing_cache)
    if plan is not None:
        if "apply-plan" not in [p.name for p in passes] or "apply-plan" in disable:
            raise OptionError(f"--plan was given but recipe '{recipe.name}' never applies a plan",
                              where=str(plan), fix="use a recipe with apply-plan and the rewrite you want, e.g. "
                                                   "passes: [apply-plan, groupwise-rewrite] or [apply-plan, "
                                                   "remove-filters]")
        ctx.plan = SparsityPlan.load(plan)

    # the graphs checked share one temporary weight file: each array is written to it once
    files = SessionFiles()
    staging, out = folder.staging, folder.given
    try:
        check_runs_on_onnxruntime(original, verify, files)
        progress(f"running recipe '{recipe.name}' ({len(passes)} passes)")
        # tolerances not given are resolved per pass, from the graph being checked (to-fp16 changes it)
        manager = PassManager(passes, disabled=tuple(disable), dump_dir=dump_dir, verify=given,
                              session_files=files)
        records = manager.run(ctx, stop=len(CANONICAL_PASSES))
        inspected: dict = {}  # weights the passes leave as they were are inspected once
        before = inspect_model(ctx.model, inspected)  # the canonical input; one sparsecc cannot work on fails here
        for index in range(len(CANONICAL_PASSES), len(passes)):
            records += manager.run(ctx, start=index, stop=index + 1)
            _release_references(original, ctx)
            interrupts.point("pass")
            interrupts.check()  # a signal something swallowed stops the compile here, not at the end
        manager.close()

        specialized = _specialize_input_shapes(original, ctx.model, records, passes)
        # streamed from the graph's arrays; the check below runs the same export, with the weights
        # in the shared temporary file (ONNX Runtime holds one copy of them, not two as from one file)
        model_files = _write_compiled(staging, ctx, original.fields)
        progress("verifying the compiled model")
        # a pass that lowers the precision (to-fp16) makes the compiled model's float type the one to follow
        final_config = given.for_dtype(lowest_precision([model_float_dtype(original), model_float_dtype(ctx.model)]))
        verification = _final_verification(original, ctx, files.write(ctx.model.graph), final_config, files, records)
        verification["second_shape"] = (
            check_second_shape(ctx.state.get("masked") or original, staging / "model.onnx", final_config, files)
            if not specialized else {"shapes": None, "passed": None,
                                     "note": f"input shapes fixed to the compile shapes: {specialized}"})
        report = _build_report(model_path, recipe, original, before, ctx, records, verification, started, verify,
                               inspected)
        report["specialized_input_shapes"] = specialized
        report["model_fields"] = {name: value for name, value in original.fields.items() if name != "doc_string"}
        report["timing_cache"] = options.timing_cache.describe()
        warnings = non_finite_warnings(original)
        report["summary"]["warnings"] = warnings + report["summary"]["warnings"]
        progress(f"writing {out}")
        _write_outputs(folder, model_files, ctx, report)
        interrupts.point("written")
        folder.commit()
    finally:
        files.close()
    return CompileResult(out, ctx.model, records, report)


def load_with_feeds(model_path: Path, shapes, inputs: FeedOptions | None) -> Model:
    """The input model with the feeds given for it; data given fixes the compile shape of a dynamic input."""
    from sparsecc.feeds import check_feed_options
    from sparsecc.model import resolve_input_shapes

    model = load_model(model_path, shapes)
    if inputs is not None:
        declared = {t.name: (t.shape, np.dtype(t.dtype)) for t in model.graph.inputs}
        check_feed_options(inputs, declared, model.source)
        merged = {**{name: tuple(a.shape) for name, a in inputs.data.items()}, **(shapes or {})}
        model.input_shapes = resolve_input_shapes(model.graph, merged, model.source)
        model.feeds = inputs
    return model


def check_runs_on_onnxruntime(original: Model, config: VerifyConfig, files: SessionFiles) -> None:
    """The input model runs on ONNX Runtime at the compile shapes, or a user error names the node.

    Every check runs the graphs on ONNX Runtime, so a model it cannot load or run (a custom-domain op,
    a kernel larger than its input, mixed float types) is refused here, as the user's, before any pass;
    a failure after this is sparsecc's. Its outputs are kept for the first check that needs them.
    """
    from sparsecc.backends.ort import OnnxRuntimeFailure
    from sparsecc.verify import run_model

    specs = input_specs(original)
    for name, _, dtype in specs:
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
            kind = "strings" if dtype.kind in "OSU" else str(dtype)
            raise ModelLoadError(f"input '{name}' holds {kind}; sparsecc checks every rewrite on random numbers "
                                 "and booleans, so it compiles models with numeric inputs only",
                                 where=original.source, fix="compile the numeric part of the model")
    try:
        run_model(original, specs, config, files)
    except OnnxRuntimeFailure as failure:
        raise _feeds_error(original, specs, failure) or failure.user_error(original.source, original.graph) from None


def _feeds_error(original: Model, specs, failure) -> InputError | None:
    """When the input model fails to *run* and has integer or bool inputs (or was given feeds), the inputs
    are the likely cause: an error that says what each input was fed and how to give real values."""
    from sparsecc.feeds import describe_feeds

    integers = [name for name, _, dtype in specs if not np.issubdtype(dtype, np.floating)]
    if failure.stage != "run" or not (integers or specs.options is not None):
        return None
    names = integers or [name for name, _, _ in specs]
    at = f" at node '{failure.node}'" if failure.node else ""
    return InputError(
        f"the input model itself fails in ONNX Runtime{at} on the inputs sparsecc generated "
        f"({describe_feeds(specs, specs.options)}): {failure.detail}", where=original.source,
        fix=f"give real values for {', '.join(repr(n) for n in names)}: --input NAME:FILE.npy (or .npz), or "
            f"--input-range NAME:LOW:HIGH (e.g. --input-range {names[0]}:16000:16000 for a sample rate)")


def non_finite_warnings(model: Model) -> list[str]:
    """A warning naming the weights that hold NaN or infinite values (checks compare them as they are)."""
    import onnx_graphsurgeon as gs

    found = []
    for tensor in model.graph.tensors().values():
        if isinstance(tensor, gs.Constant) and not isinstance(tensor._values, gs.ir.tensor.LazyValues):
            values = tensor.values
            # a float64 sum is finite exactly when every float16/32 value is (and needs no copy of the array)
            if np.issubdtype(values.dtype, np.floating) and values.size and \
                    not np.isfinite(np.sum(values, dtype=np.float64)):
                found.append(tensor.name)
    if not found:
        return []
    return [f"the input model's weights hold NaN or infinite values ({', '.join(found[:5])}"
            f"{f' and {len(found) - 5} more' if len(found) > 5 else ''}): outputs may be NaN or infinite; the "
            "checks count the same NaN or infinity in both graphs as agreement, any other as a mismatch"]


def _release_references(original: Model, ctx: PassContext) -> None:
    """The unpruned and the masked originals are only compared against (ONNX Runtime reads their
    weights from files): their arrays already in a file are mapped from it, so the memory of those
    the working model has replaced is freed, not kept for the final check."""
    release_to_files(original.graph)
    masked = ctx.state.get("masked")
    if masked is not None:
        release_to_files(masked.graph)


def _specialize_input_shapes(original: Model, model: Model, records: list[PassRecord], passes) -> dict:
    """Fix dynamic input dims to the compile shapes when a shape-specific rewrite ran.

    Such a rewrite is verified at the compile shapes only, so the output must not claim to
    accept others. Returns the inputs fixed, {name: shape} (empty when nothing was).
    """
    ran = {r.name for r in records if r.status == "ran"}
    if not any(p.specializes_shapes and p.name in ran for p in passes):
        return {}
    fixed = {}
    for tensor in model.graph.inputs:
        shape = model.input_shapes[tensor.name]
        if tensor.shape is None or list(tensor.shape) != list(shape):
            tensor.shape = list(shape)
            fixed[tensor.name] = list(shape)
    return fixed


def _verify_config(recipe: Recipe, given: VerifyConfig | Mapping[str, Any] | None) -> VerifyConfig:
    """The recipe's verify block, overridden by what was given; every value checked (verify_options)."""
    base = verify_config(recipe.verify, where=f"verify: of recipe '{recipe.name}' ({recipe.source})")
    if given is None:
        return base
    options = asdict(given) if isinstance(given, VerifyConfig) else dict(given)
    return verify_config(options, where="verification options", base=base)


def _write_compiled(staging: Path, ctx: PassContext, fields: dict) -> list[str]:
    """model.onnx (+ model.onnx.data above protobuf's 2 GB) into the staging folder, with the input's
    model-level fields; their names."""
    try:
        path = write_model(ctx.model.graph, staging / "model.onnx", fields=fields)
    except OSError as exc:
        raise OutputError(f"cannot write the compiled model ({exc.strerror})", where=str(final_path(staging.parent)),
                          fix="check free space and permissions") from None
    data = external_data_path(path)
    return ["model.onnx", data.name] if data.exists() else ["model.onnx"]


def _final_verification(original: Model, ctx: PassContext, compiled: Path, config: VerifyConfig,
                        files: SessionFiles, records: list[PassRecord]) -> dict[str, Any]:
    """Compiled vs masked original (must match), and compiled vs unpruned original (reported).

    When nothing changed the graph after the last apply-plan, the compiled model *is* the masked
    original: comparing the two would check the model against itself. The exact result is then
    the exact passes' own checks, each against the graph before it.
    """
    from sparsecc.verify_options import raise_if_too_tight

    specs = input_specs(ctx.model)
    masked = ctx.state.get("masked")
    reference = masked if masked is not None else original
    backend = verification_backend(reference, ctx.model)
    if masked is not None and not _changed_after_last_mask(records):
        result = {"against": "each exact pass, against the graph before it (nothing changed the graph after "
                             "the last apply-plan, so the compiled model is the masked original)",
                  "exact": _exact_pass_checks(records, config)}
    else:
        exact = compare_models(files.write(reference.graph), compiled, specs, config, backend, files=files)
        if not exact.passed:
            raise_if_too_tight(exact, "the compiled model", where=original.source)
            raise VerificationError(
                f"the compiled model does not match the {'masked' if masked is not None else ''} original: "
                f"{exact.describe_worst()}",
                where=original.source, fix="run with --dump-dir to find the pass; --disable-pass NAME skips it")
        result = {"against": "masked original" if masked is not None else "original", "exact": exact.to_dict()}
    if masked is not None:
        # pruning changes the function on purpose: report how much, never fail on it
        result["agreement_with_unpruned"] = compare_models(files.write(original.graph), compiled, specs,
                                                           config, backend, files=files).to_dict()
    return result


def _changed_after_last_mask(records: list[PassRecord]) -> bool:
    last = max((i for i, r in enumerate(records) if r.name == "apply-plan" and r.result is not None), default=-1)
    return any(r.status == "ran" for r in records[last + 1:])


def _exact_pass_checks(records: list[PassRecord], config: VerifyConfig) -> dict[str, Any]:
    """The exact passes' verifications as one result: passed if all passed, the worst error of them."""
    checks = [r.verification for r in records if r.verification and r.verification.get("mode") == "exact"]
    worst = max(checks, key=lambda c: c["worst_relative_error"], default=None)
    return {"passed": all(c["passed"] for c in checks), "atol": config.atol, "rtol": config.rtol,
            "outputs": worst["outputs"] if worst else [], "backend": worst["backend"] if worst else None,
            "worst_relative_error": worst["worst_relative_error"] if worst else 0.0,
            "passes": [r.name for r in records if r.verification and r.verification.get("mode") == "exact"]}


def _build_report(model_path: Path, recipe: Recipe, original: Model, before: dict[str, Any], ctx: PassContext,
                  records: list[PassRecord], verification: dict[str, Any], started: float, verify: VerifyConfig,
                  inspected: dict | None = None) -> dict[str, Any]:
    from sparsecc.environment import environment

    from sparsecc.shape_changes import explain_shape_changes

    after = inspect_model(ctx.model, inspected)
    skipped = [{"pass": r.name, **vars(s)} for r in records if r.result for s in r.result.skipped]
    macs_before, macs_after = before["totals"]["macs"], after["totals"]["macs"]
    warnings = _no_gain_warnings(recipe, records, ctx, macs_before, macs_after, skipped)
    return {
        "sparsecc_report": 1,
        "input": str(model_path),
        "recipe": recipe.to_dict(),
        "input_shapes": {k: list(v) for k, v in original.static_input_shapes().items()},
        "passes": [r.to_dict() for r in records],
        "verification": {**verification, "atol": verify.atol, "rtol": verify.rtol, "seed": verify.seed,
                         "dtype": verify.dtype},
        "before": before,
        "after": after,
        "summary": {
            "macs_before": macs_before, "macs_after": macs_after,
            "ideal_speedup": round(macs_before / macs_after, 4) if macs_after else None,
            "params_before": before["totals"]["weight_params"], "params_after": after["totals"]["weight_params"],
            "compile_seconds": round(time.perf_counter() - started, 3),
            "warnings": warnings,
        },
        "shape_changes": explain_shape_changes(before, after, records, ctx.state.get("applied_plans")),
        "skipped": skipped,
        "environment": environment(),
    }


def _no_gain_warnings(recipe: Recipe, records: list[PassRecord], ctx: PassContext, macs_before: int,
                      macs_after: int, skipped: list[dict]) -> list[str]:
    """A pruning recipe whose compiled model does no fewer MACs gained nothing: say so, and why."""
    pruned = [r.name for r in records if not r.exact and r.status == "ran"]
    if not pruned or macs_after < macs_before:
        return []
    why = []
    patterns = {e.pattern for plan in ctx.state.get("applied_plans") or [] for e in plan.entries.values()}
    if patterns & {"2:4"}:
        why.append("2:4 weights keep their MACs: TensorRT's sparse tensor cores exploit them, ONNX Runtime runs "
                   "them dense")
    undone = [s["reason"] for s in skipped if s["layer"] == "(whole model)"]
    if undone:
        why.append(f"the rewrite was undone: {undone[0]}")
    elif skipped:
        why.append(f"{len(skipped)} layer(s) were left as they were (reasons in report.md)")
    return [f"recipe '{recipe.name}' pruned weights ({', '.join(pruned)}) but the compiled model does "
            f"{'the same' if macs_after == macs_before else 'more'} MACs (ideal speedup "
            f"{macs_before / macs_after if macs_after else 0:.2f}x): it gains nothing on this model"
            + (f" ({'; '.join(why)})" if why else "")]


def _write_outputs(folder: OutputFolder, model_files: list[str], ctx: PassContext, report: dict[str, Any]) -> None:
    """Plans and reports into the staging folder, beside the model (outputs of an earlier compile that are
    not written again are removed at the commit)."""
    from sparsecc.report import render_compile_markdown

    staging = folder.staging
    try:
        plan_files = _write_plans(staging, ctx)
        names = [*model_files, *plan_files, "report.json", "report.md"]
        report["outputs"] = {name: str(final_path(folder.path / name)) for name in names}
        (staging / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        (staging / "report.md").write_text(render_compile_markdown(report))
    except OSError as exc:
        raise OutputError(f"cannot write the outputs ({exc.strerror})", where=str(folder.given),
                          fix="check free space and permissions") from None


def plan_files(plan: str | os.PathLike | None) -> list[Path]:
    """A plan.json and the mask file beside it (inputs of a compile: never replaced)."""
    if plan is None:
        return []
    plan = Path(plan)
    return [plan, plan.with_suffix(".npz")]


def _write_plans(folder: Path, ctx: PassContext) -> list[str]:
    """``plan.json`` (+ .npz): the plan as applied to the canonical input model, so that
    ``--plan`` can replay it. A multi-stage recipe (e.g. filters, then 2:4 on the smaller
    weights) writes each later stage as ``plan.stageN.json``, against the graph of its stage."""
    applied = ctx.state.get("applied_plans") or [ctx.plan or SparsityPlan(source="no pruning")]
    names = []
    for index, plan in enumerate(applied, start=1):
        stem = "plan" if index == 1 else f"plan.stage{index}"
        plan.save(folder / f"{stem}.json")
        names += [f"{stem}.json", f"{stem}.npz"]
    return names


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
