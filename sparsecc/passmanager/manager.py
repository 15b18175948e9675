"""Named passes, their registry, and the manager that runs and verifies them.

A pass is a small class with a ``name``, a flag saying whether it is exact
(the graph after it computes the same function as the graph before it), and
``requires`` / ``run`` / ``ensures``. The manager runs a list of passes in
order, skips the disabled ones, dumps the graph after each pass on request,
and verifies every exact pass that modified the graph numerically against the
graph before it. Passes that change the function on purpose (pruning) are not
failed for it: their output agreement is recorded for the report.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sparsecc.errors import OptionError, SparseccError, VerificationError
from sparsecc.log import logger
from sparsecc.model import Model
from sparsecc.onnx_files import SessionFiles, release_to_files
from sparsecc.verify import VerifyConfig, compare_models, input_specs, verification_backend


@dataclass
class Skipped:
    """A layer a pass left as it was, and why (always reported, never silent)."""

    layer: str
    reason: str


@dataclass
class PassResult:
    """What a pass did. ``modified`` must be honest: False means the graph is unchanged."""

    modified: bool
    rewrites: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """What passes share: the model being compiled and the sparsity plan.

    Attributes:
        model: The model; passes edit ``model.graph`` in place.
        plan: The sparsity plan (see :mod:`sparsecc.plan`), or None before planning.
        trace: Record why rewrite rules did not fire. Defaults to False.
        cost_model: Overrides the cost model of passes that choose by one ("measured" or "analytic").
            Defaults to none (each pass's own option).
        timing_cache: The :class:`~sparsecc.lowering.TimingCache` measured choices go through.
            Defaults to none (measurements are kept for this run only).
        state: Free-form data one pass leaves for a later one.
    """

    model: Model
    plan: Any = None
    trace: bool = False
    cost_model: str | None = None
    timing_cache: Any = None
    state: dict[str, Any] = field(default_factory=dict)


class Pass:
    """Base class of all passes.

    Subclasses set ``name``, ``exact``, ``description`` (and ``specializes_shapes`` where it
    applies), take their options as
    keyword arguments in ``__init__``, and implement :meth:`run`.
    """

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    description: ClassVar[str] = ""
    # True for rewrites whose result holds only at the shapes they were compiled at (e.g. slices
    # computed from spatial sizes): the compiler then fixes dynamic input dims in the output.
    specializes_shapes: ClassVar[bool] = False

    def requires(self, ctx: PassContext) -> None:
        """Check preconditions; raise a SparseccError naming what is missing."""

    def run(self, ctx: PassContext) -> PassResult:
        raise NotImplementedError(f"pass {self.name!r} does not implement run()")

    def ensures(self, ctx: PassContext) -> None:
        """Check postconditions; raise an error if the pass broke its promise."""

    def options(self) -> dict[str, Any]:
        """The options this instance was built with (for reports)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


PASS_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to recipes by its name."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in PASS_REGISTRY and PASS_REGISTRY[cls.name] is not cls:
        raise TypeError(f"two passes are named {cls.name!r}")
    PASS_REGISTRY[cls.name] = cls
    return cls


def available_passes() -> dict[str, type[Pass]]:
    """Every registered pass (imports every module of :mod:`sparsecc.passes`)."""
    import sparsecc.passes as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"sparsecc.passes.{module.name}")
    return dict(sorted(PASS_REGISTRY.items()))


def make_pass(name: str, **options: Any) -> Pass:
    """Build a registered pass by name, with its options."""
    passes = available_passes()
    if name not in passes:
        raise OptionError(f"there is no pass named '{name}'",
                          fix=f"known passes: {', '.join(passes)} (sparsecc compile --list-passes)")
    try:
        return passes[name](**options)
    except TypeError as exc:
        raise OptionError(f"bad options for pass '{name}': {exc}", fix="see sparsecc compile --list-passes") from None


@dataclass
class PassRecord:
    """What happened when the manager ran (or skipped) one pass."""

    name: str
    exact: bool
    status: str  # "ran", "disabled", "unchanged"
    seconds: float = 0.0
    result: PassResult | None = None
    verification: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "exact": self.exact, "status": self.status,
                                "seconds": round(self.seconds, 4)}
        if self.result is not None:
            data.update(rewrites=self.result.rewrites, notes=self.result.notes, details=self.result.details,
                        skipped=[vars(s) for s in self.result.skipped])
        if self.verification is not None:
            data["verification"] = self.verification
        return data


def trace_lines(record: PassRecord) -> list[str]:
    """Why each rule of a pass did not fire, per layer: the layers it left as they were, and the
    lowerings that did not apply to a layer (``details["layers"][layer]["not_applicable"]``)."""
    if record.result is None:
        return []
    lines = [f"{record.name}: {s.layer}: not rewritten: {s.reason}" for s in record.result.skipped]
    for layer, info in (record.result.details.get("layers") or {}).items():
        if isinstance(info, dict):
            lines += [f"{record.name}: {layer}: {rule} did not fire: {why}"
                      for rule, why in (info.get("not_applicable") or {}).items()]
    return lines


class PassManager:
    """Runs passes in order, verifying each exact pass that changed the graph.

    Args:
        passes: The passes, in order.
        disabled: Names of passes not to run. Defaults to none.
        dump_dir: Folder to write the graph after each pass (``NN-name.onnx``). Defaults to none.
        verify: Verification settings; None turns verification off. Defaults to VerifyConfig().
        session_files: Where the graphs checked are written for ONNX Runtime; the caller's, to
            share weights already written with its own checks. Defaults to a private one.
    """

    def __init__(self, passes: list[Pass], disabled: tuple[str, ...] | list[str] = (),
                 dump_dir: str | Path | None = None, verify: VerifyConfig | None = VerifyConfig(),
                 session_files: SessionFiles | None = None):
        names = {p.name for p in passes}
        unknown = sorted(set(disabled) - names - set(available_passes()))
        if unknown:
            raise OptionError(f"--disable-pass names unknown pass(es) {unknown}",
                              fix=f"passes in this pipeline: {', '.join(p.name for p in passes)}")
        self.passes = passes
        self.disabled = set(disabled)
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.verify = verify
        # the graph a verified pass left, on disk for ONNX Runtime: the next pass's reference
        self._shared_files = session_files
        self._files: SessionFiles | None = session_files
        self._verified_file: Path | None = None

    def run(self, ctx: PassContext, start: int = 0, stop: int | None = None) -> list[PassRecord]:
        """Run ``passes[start:stop]`` (all by default); returns their records.

        Running in stages (e.g. canonicalise, inspect, then prune) keeps the numbering of
        dumps and the history that error messages cite, as long as the stages run in order.
        """
        if start == 0:
            self._forget_verified()
            self._records: list[PassRecord] = []
        ctx.state["history"] = self._records  # what earlier passes did, for a later pass's messages
        first = len(self._records)
        stop = len(self.passes) if stop is None else stop
        try:
            for index in range(start, stop):
                pass_ = self.passes[index]
                if pass_.name in self.disabled:
                    self._records.append(PassRecord(pass_.name, pass_.exact, "disabled"))
                    logger.debug("pass %s: disabled", pass_.name)
                    continue
                self._records.append(self._run_one(index, pass_, ctx, self._records))
        except BaseException:
            self.close()
            raise
        if stop >= len(self.passes):
            self.close()
        return self._records[first:]

    def close(self) -> None:
        """Delete the temporary model files kept between passes."""
        if self._files is not None and self._files is not self._shared_files:
            self._files.close()
        elif self._files is not None:
            self._files.release(self._verified_file)
        self._files, self._verified_file = self._shared_files, None

    def _forget_verified(self) -> None:
        if self._files is not None:
            self._files.release(self._verified_file)
        self._verified_file = None

    def _run_one(self, index: int, pass_: Pass, ctx: PassContext, earlier: list[PassRecord]) -> PassRecord:
        before = ctx.model.copy() if self.verify is not None else None
        if before is not None:
            # kept only to be compared against: weights already in a file are mapped from it, so
            # those the pass replaces do not stay in memory twice
            release_to_files(before.graph)
        start = time.perf_counter()
        try:
            pass_.requires(ctx)
            result = pass_.run(ctx)
            pass_.ensures(ctx)
            ctx.model.graph.cleanup().toposort()
        except SparseccError as err:
            ran = ", ".join(r.name for r in earlier if r.status != "disabled") or "none"
            err.what = f"pass '{pass_.name}' failed: {err.what} (passes run before it: {ran})"
            raise
        seconds = time.perf_counter() - start
        record = PassRecord(pass_.name, pass_.exact, "ran" if result.modified else "unchanged", seconds, result)
        logger.debug("pass %s: %s, %d rewrite(s), %.3f s", pass_.name, record.status, result.rewrites, seconds)
        if ctx.trace:
            for line in trace_lines(record):
                logger.info("trace: %s", line)
        if self.dump_dir is not None:
            ctx.model.save(self.dump_dir / f"{index:02d}-{pass_.name}.onnx")
        if result.modified and before is not None:
            record.verification = self._verify(pass_, before, ctx.model, earlier)
        elif result.modified:
            self._forget_verified()
        return record

    def _verify(self, pass_: Pass, before: Model, after: Model, earlier: list[PassRecord]) -> dict[str, Any]:
        from sparsecc.verify_options import raise_if_too_tight

        specs = input_specs(after)
        # the graph a verified pass left is the graph the next pass starts from: written once, to a
        # file with external data that ONNX Runtime loads without a serialised copy of the weights
        self._files = self._files or SessionFiles()
        before_file = self._verified_file or self._files.write(before.graph)
        after_file = self._files.write(after.graph)
        try:
            # a graph with sparsecc-domain nodes runs them through their numpy references
            outcome = compare_models(before_file, after_file, specs, self.verify.for_model(before),
                                     verification_backend(before, after), files=self._files)
        finally:
            self._files.release(before_file)
            self._verified_file = after_file
        data = outcome.to_dict()
        data["mode"] = "exact" if pass_.exact else "agreement"
        if pass_.exact and not outcome.passed:
            ran = ", ".join(r.name for r in earlier if r.status != "disabled") or "none"
            raise_if_too_tight(outcome, f"pass '{pass_.name}'", where=f"after passes: {ran}")
            raise VerificationError(
                f"pass '{pass_.name}' claims to be exact but changed the outputs: {outcome.describe_worst()}",
                where=f"after passes: {ran}",
                fix=f"this is a bug in the pass; --disable-pass {pass_.name} works around it, "
                    "and --dump-dir shows the graphs before and after",
            )
        return data
