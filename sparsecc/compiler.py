"""``sparsecc compile``: canonicalise -> plan -> rewrite -> verify -> write.

Outputs (``model.onnx``, ``plan.json`` + ``plan.npz``, ``report.json``,
``report.md``) are written into a staging folder inside the output folder and
moved into place only when everything succeeded, so a failed compile leaves
nothing half-written. The input file is only ever read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsecc.errors import OptionError, OutputError, VerificationError
from sparsecc.inspect import inspect_model
from sparsecc.log import progress
from sparsecc.model import Model, load_model, write_bytes_atomic
from sparsecc.passes.canonicalize import CANONICAL_PASSES
from sparsecc.passmanager import PassContext, PassManager, PassRecord
from sparsecc.plan import SparsityPlan
from sparsecc.recipe import Recipe, load_recipe
from sparsecc.verify import VerifyConfig, compare_models, input_specs, verification_backend


@dataclass
class CompileResult:
    out_dir: Path
    model: Model
    records: list[PassRecord]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.out_dir / "model.onnx"


def prepare_output_dir(out_dir: str | os.PathLike, model_path: Path) -> Path:
    """Create the output folder (or fail early, before any work) and refuse to overwrite the input."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError("the output path exists and is not a folder", where=str(out),
                          fix="give -o a folder (it is created if missing)")
    if (out / "model.onnx").resolve() == model_path.resolve():
        raise OutputError("the output would overwrite the input model", where=str(out),
                          fix="choose another output folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".sparsecc-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder ({exc.strerror})", where=str(out),
                          fix="choose a writable folder with -o") from None
    return out


def compile_model(model_path: str | os.PathLike, recipe: str | Recipe = "none", out_dir: str | os.PathLike = "out",
                  shapes: dict[str, tuple[int, ...]] | None = None, disable: list[str] | tuple[str, ...] = (),
                  dump_dir: str | os.PathLike | None = None, plan: str | os.PathLike | None = None,
                  verify: VerifyConfig | None = None, cost_model: str | None = None,
                  timing_cache: str | os.PathLike | None = None, trace: bool = False) -> CompileResult:
    """Compile a model with a recipe and write the outputs.

    Args:
        model_path: The input .onnx (never modified).
        recipe: A built-in recipe name, a recipe file, or a Recipe. Defaults to "none".
        out_dir: Output folder. Defaults to "out".
        shapes: Concrete shapes for dynamic inputs. Defaults to none.
        disable: Names of passes not to run. Defaults to none.
        dump_dir: Write the graph after each pass here. Defaults to none.
        plan: A plan.json to start from (e.g. made by fine-tuning elsewhere). Defaults to none.
        verify: Tolerances and seed of the numerical checks. Defaults to the recipe's; tolerances given by
            neither follow the model's float type (:data:`sparsecc.verify.DTYPE_TOLERANCES`).
        cost_model: "measured" or "analytic", for every pass that chooses by a cost model. Defaults to
            each pass's own option.
        timing_cache: The timing cache file, or "off". Defaults to ``$SPARSECC_TIMING_CACHE``, else
            ``~/.cache/sparsecc/timing-cache.json`` (see :mod:`sparsecc.lowering.timing_cache`).
        trace: Log, after each pass, why each rewrite rule did not fire on each layer. Defaults to False.
    """
    from sparsecc.lowering import open_timing_cache

    started = time.perf_counter()
    model_path = Path(model_path)
    if cost_model not in (None, "measured", "analytic"):
        raise OptionError(f"unknown cost model '{cost_model}'", fix="use --cost-model measured or analytic")
    cache = open_timing_cache(timing_cache)
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    verify = verify or _verify_config(recipe)
    passes = recipe.build_passes()
    out = prepare_output_dir(out_dir, model_path)

    progress(f"loading {model_path}")
    original = load_model(model_path, shapes)
    original.static_input_shapes()  # dynamic inputs without --shape fail here, before any work
    verify = verify.for_model(original)  # tolerances not given follow the model's float type
    model = original.copy()
    ctx = PassContext(model, trace=trace, cost_model=cost_model, timing_cache=cache)
    if plan is not None:
        if "apply-plan" not in [p.name for p in passes] or "apply-plan" in disable:
            raise OptionError(f"--plan was given but recipe '{recipe.name}' never applies a plan",
                              where=str(plan), fix="use a recipe with apply-plan and the rewrite you want, e.g. "
                                                   "passes: [apply-plan, groupwise-rewrite] or [apply-plan, "
                                                   "remove-filters]")
        ctx.plan = SparsityPlan.load(plan)

    progress(f"running recipe '{recipe.name}' ({len(passes)} passes)")
    manager = PassManager(passes, disabled=tuple(disable), dump_dir=dump_dir, verify=verify)
    records = manager.run(ctx, stop=len(CANONICAL_PASSES))
    before = inspect_model(ctx.model)  # the canonical input; a model sparsecc cannot work on fails here
    records += manager.run(ctx, start=len(CANONICAL_PASSES))

    specialized = _specialize_input_shapes(original, ctx.model, records, passes)
    compiled = ctx.model.to_bytes()  # serialised once: checked below, then written as model.onnx
    progress("verifying the compiled model")
    verification = _final_verification(original, ctx, compiled, verify, records)
    report = _build_report(model_path, recipe, original, before, ctx, records, verification, started, verify)
    report["specialized_input_shapes"] = specialized
    report["timing_cache"] = cache.describe()

    progress(f"writing {out}")
    _write_outputs(out, ctx, compiled, report)
    return CompileResult(out, ctx.model, records, report)


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


def _verify_config(recipe: Recipe) -> VerifyConfig:
    unknown = set(recipe.verify) - {"atol", "rtol", "seed", "iterations"}
    if unknown:
        raise OptionError(f"unknown verify key(s) {sorted(unknown)} in recipe '{recipe.name}'",
                          where=recipe.source, fix="use atol, rtol, seed, iterations")
    return VerifyConfig(**recipe.verify)


def _final_verification(original: Model, ctx: PassContext, compiled: bytes, config: VerifyConfig,
                        records: list[PassRecord]) -> dict[str, Any]:
    """Compiled vs masked original (must match), and compiled vs unpruned original (reported).

    When nothing changed the graph after the last apply-plan, the compiled model *is* the masked
    original: comparing the two would check the model against itself. The exact result is then
    the exact passes' own checks, each against the graph before it.
    """
    specs = input_specs(ctx.model)
    masked = ctx.state.get("masked")
    reference = masked if masked is not None else original
    backend = verification_backend(reference, ctx.model)
    if masked is not None and not _changed_after_last_mask(records):
        result = {"against": "each exact pass, against the graph before it (nothing changed the graph after "
                             "the last apply-plan, so the compiled model is the masked original)",
                  "exact": _exact_pass_checks(records, config)}
    else:
        exact = compare_models(reference, compiled, specs, config, backend)
        if not exact.passed:
            raise VerificationError(
                f"the compiled model does not match the {'masked' if masked is not None else ''} original: "
                f"{exact.describe_worst()}",
                where=original.source, fix="run with --dump-dir to find the pass; --disable-pass NAME skips it")
        result = {"against": "masked original" if masked is not None else "original", "exact": exact.to_dict()}
    if masked is not None:
        # pruning changes the function on purpose: report how much, never fail on it
        result["agreement_with_unpruned"] = compare_models(original, compiled, specs, config, backend).to_dict()
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
                  records: list[PassRecord], verification: dict[str, Any], started: float, verify: VerifyConfig
                  ) -> dict[str, Any]:
    from sparsecc.environment import environment

    after = inspect_model(ctx.model)
    skipped = [{"pass": r.name, **vars(s)} for r in records if r.result for s in r.result.skipped]
    macs_before, macs_after = before["totals"]["macs"], after["totals"]["macs"]
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
        },
        "skipped": skipped,
        "environment": environment(),
    }


def _write_outputs(out: Path, ctx: PassContext, compiled: bytes, report: dict[str, Any]) -> None:
    from sparsecc.report import render_compile_markdown

    staging = Path(tempfile.mkdtemp(dir=out, prefix=".sparsecc-staging-"))
    try:
        write_bytes_atomic(staging / "model.onnx", compiled)
        plan_files = _write_plans(staging, ctx)
        names = ["model.onnx", *plan_files, "report.json", "report.md"]
        report["outputs"] = {name: str(out / name) for name in names}
        (staging / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        (staging / "report.md").write_text(render_compile_markdown(report))
        for stale in out.glob("plan.stage*.*"):  # from an earlier compile into the same folder
            stale.unlink()
        for name in names:
            os.replace(staging / name, out / name)
    except OSError as exc:
        raise OutputError(f"cannot write the outputs ({exc.strerror})", where=str(out),
                          fix="check free space and permissions") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
