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

from sparsecc import interrupts
from sparsecc.errors import OptionError, OutputError, VerificationError
from sparsecc.feeds import FeedOptions
from sparsecc.input_model import check_runs_on_onnxruntime, load_with_feeds, non_finite_warnings
from sparsecc.inspection import inspect_model
from sparsecc.log import progress
from sparsecc.model import Model
from sparsecc.onnx_files import external_data_path, write_model
from sparsecc.outputs import OutputFolder, final_path, resolve
from sparsecc.passmanager import Instrument, PassContext, PassManager, PassRecord, Role, steps_of
from sparsecc.session_files import SessionFiles, release_to_files
from sparsecc.plan import SparsityPlan
from sparsecc.recipe import Recipe, load_recipe
from sparsecc.verify import (VerifyConfig, check_second_shape, compare_models, input_specs,
                             lowest_precision, model_float_dtype, verification_backend)
from sparsecc.verify_options import refuse_unusable_tolerances, verify_config


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
    tolerances_from = _tolerance_origin(recipe, verify)
    verify = _verify_config(recipe, verify)
    passes = recipe.build_passes()
    cache = open_timing_cache(timing_cache)
    if resolve(Path(out_dir) / "model.onnx") == resolve(model_path):
        raise OutputError("the output would overwrite the input model", where=str(out_dir),
                          fix="choose another output folder")
    input_files = [model_path, *plan_files(plan), *([recipe.source] if Path(recipe.source).is_file() else [])]
    with OutputFolder(out_dir, "compile", inputs=input_files, force=force) as folder:
        return _compile(model_path, recipe, folder, shapes, disable, dump_dir, plan, verify, passes, started,
                        PassContextOptions(trace, cost_model, cache, inputs), tolerances_from)


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
             verify: VerifyConfig, passes, started: float, options: PassContextOptions,
             tolerances_from: str) -> CompileResult:
    progress(f"loading {model_path}")
    original = load_with_feeds(model_path, shapes, options.inputs)
    folder.protect(*original.files)  # its external data is never replaced or removed
    original.static_input_shapes()  # dynamic inputs without --shape fail here, before any work
    interrupts.point("loaded")
    given = verify
    verify = verify.for_model(original)  # tolerances not given follow the model's float type
    refuse_unusable_tolerances(verify, where=tolerances_from)  # its float type is known only now
    model = original.copy()  # shares the weight arrays with the original until a pass replaces them
    ctx = PassContext(model, trace=options.trace, cost_model=options.cost_model,
                      timing_cache=options.timing_cache)
    steps = steps_of(passes)
    if plan is not None:
        if not any(p.role == Role.APPLY and p.name not in disable for p in steps):
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
        progress(f"running recipe '{recipe.name}' ({len(steps)} passes)")
        inspected: dict = {}  # weights the passes leave as they were are inspected once
        canonical_steps = len(steps_of(passes[:1]))
        canonical = CanonicalInput(canonical_steps, inspected)
        # tolerances not given are resolved per pass, from the graph being checked (to-fp16 changes it)
        manager = PassManager(passes, disabled=tuple(disable), dump_dir=dump_dir, verify=given, session_files=files,
                              instruments=[InterruptPoints(canonical_steps), canonical, ReleaseReferences(original)])
        records = manager.run(ctx).records
        before = canonical.inspection

        specialized = _specialize_input_shapes(original, ctx.model, records, steps)
        # streamed from the graph's arrays; the check below runs the same export, with the weights
        # in the shared temporary file (ONNX Runtime holds one copy of them, not two as from one file)
        model_files = _write_compiled(staging, ctx, original.fields)
        progress("verifying the compiled model")
        # a pass that lowers the precision (to-fp16) makes the compiled model's float type the one to follow
        final_config = given.for_dtype(lowest_precision([model_float_dtype(original), model_float_dtype(ctx.model)]))
        verification = _final_verification(original, ctx, files.write(ctx.model.graph), final_config, files, records)
        verification["second_shape"] = (
            check_second_shape(ctx.masked or original, staging / "model.onnx", final_config, files)
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


class CanonicalInput(Instrument):
    """Inspects the canonical input once the canonical passes are done, before any recipe pass runs.

    A model sparsecc cannot work on (no weight layer) fails there, before any pruning; the
    inspection is the report's "before".

    Args:
        steps: How many steps the canonicalisation takes (the recipe's passes follow).
        cache: The compile's inspection cache (see :func:`~sparsecc.inspection.inspect_model`).
    """

    def __init__(self, steps: int, cache: dict):
        self.steps = steps
        self.cache = cache
        self.inspection: dict[str, Any] | None = None

    def before_pass(self, index, pass_, ctx) -> None:
        if index >= self.steps:
            self._inspect(ctx)

    def exit_pipeline(self, ctx, failed: bool) -> None:
        if not failed:  # a recipe with no pass of its own (none) inspects the model canonicalisation left
            self._inspect(ctx)

    def _inspect(self, ctx) -> None:
        if self.inspection is None:
            self.inspection = inspect_model(ctx.model, self.cache)


class ReleaseReferences(Instrument):
    """After each pass, the unpruned and the masked originals map their weights already in a file.

    They are only compared against (ONNX Runtime reads their weights from files), so the memory
    of the arrays the working model has replaced is freed, not kept for the final check.
    """

    def __init__(self, original: Model):
        self.original = original

    def after_pass(self, index, pass_, ctx, record) -> None:
        release_to_files(self.original.graph)
        if ctx.masked is not None:
            release_to_files(ctx.masked.graph)


class InterruptPoints(Instrument):
    """After each recipe pass (verified, references released): the ``pass`` test point, and a signal
    something swallowed stops the compile there, not at the end.

    Args:
        steps: How many steps the canonicalisation takes (the recipe's passes follow).
    """

    def __init__(self, steps: int):
        self.steps = steps

    def after_pass(self, index, pass_, ctx, record) -> None:
        if index >= self.steps:
            interrupts.point("pass")
            interrupts.check()


def _specialize_input_shapes(original: Model, model: Model, records: list[PassRecord], steps) -> dict:
    """Fix dynamic input dims to the compile shapes when a shape-specific rewrite ran.

    Such a rewrite is verified at the compile shapes only, so the output must not claim to
    accept others. Returns the inputs fixed, {name: shape} (empty when nothing was).
    """
    ran = {r.name for r in records if r.status == "ran"}
    if not any(p.specializes_shapes and p.name in ran for p in steps):
        return {}
    fixed = {}
    for tensor in model.graph.inputs:
        shape = model.input_shapes[tensor.name]
        if tensor.shape is None or list(tensor.shape) != list(shape):
            tensor.shape = list(shape)
            fixed[tensor.name] = list(shape)
    return fixed


def _recipe_verify(recipe: Recipe) -> str:
    return f"verify: of recipe '{recipe.name}' ({recipe.source})"


def _tolerance_origin(recipe: Recipe, given: VerifyConfig | Mapping[str, Any] | None) -> str:
    """Where the tolerances came from, for messages: what was given (the command line) or the recipe."""
    options = asdict(given) if isinstance(given, VerifyConfig) else dict(given or {})
    if options.get("atol") is not None or options.get("rtol") is not None:
        return "verification options (--atol/--rtol)"
    return _recipe_verify(recipe)


def _verify_config(recipe: Recipe, given: VerifyConfig | Mapping[str, Any] | None) -> VerifyConfig:
    """The recipe's verify block, overridden by what was given; every value checked (verify_options)."""
    base = verify_config(recipe.verify, where=_recipe_verify(recipe))
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
    masked = ctx.masked
    reference = masked if masked is not None else original
    backend = verification_backend(reference, ctx.model)
    if masked is not None and not _changed_after_last_mask(records):
        result = {"against": "graph before each exact pass (nothing changed the graph after "
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
    last = max((i for i, r in enumerate(records) if r.role == Role.APPLY and r.result is not None), default=-1)
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
    from sparsecc.latency.describe import speed_target_summary
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
            **speed_target_summary(records),
        },
        "shape_changes": explain_shape_changes(before, after, records, ctx.applied_plans),
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
    patterns = {e.pattern for plan in ctx.applied_plans for e in plan.entries.values()}
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
    applied = ctx.applied_plans or [ctx.plan or SparsityPlan(source="no pruning")]
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
