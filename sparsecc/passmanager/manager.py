"""The pass manager: a pass that runs a list of passes, with instruments around each.

The manager runs its passes in order, skips the disabled ones, and records what each did; what
happens around each pass (verification, dumps, trace, timing, and whatever a caller adds) is done
by its instruments (:mod:`sparsecc.passmanager.instruments`). It is itself a :class:`Pass`, so a
pipeline can hold another (canonicalisation is one): the inner manager's passes then run as steps
of the outer one, with the outer instruments, numbered and recorded in one sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsecc.errors import OptionError, SparseccError
from sparsecc.log import logger
from sparsecc.passmanager.contract import Pass, PassContext, PassResult, Role
from sparsecc.passmanager.instruments import (DumpInstrument, Instrument, TimingInstrument, TraceInstrument,
                                              VerifyInstrument, earlier_passes)
from sparsecc.passmanager.registry import available_passes

_DEFAULT = object()  # "verify with the default settings" (None turns verification off)


@dataclass
class PassRecord:
    """What happened when the manager ran (or skipped) one pass."""

    name: str
    exact: bool
    status: str  # "ran", "disabled", "unchanged"
    seconds: float = 0.0
    result: PassResult | None = None
    verification: dict[str, Any] | None = None
    role: str = Role.REWRITE
    detects: bool = False  # the pass plans only from zeros already there (Pass.detects)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "exact": self.exact, "status": self.status,
                                "seconds": round(self.seconds, 4)}
        if self.result is not None:
            data.update(rewrites=self.result.rewrites, notes=self.result.notes, details=self.result.details,
                        skipped=[vars(s) for s in self.result.skipped])
        if self.verification is not None:
            data["verification"] = self.verification
        return data


@dataclass
class PipelineResult(PassResult):
    """A pipeline's result: modified if any pass modified the graph, and every pass's record."""

    records: list[PassRecord] = field(default_factory=list)


def steps_of(passes: list[Pass]) -> list[Pass]:
    """The passes a list of passes runs, pipelines among them expanded."""
    flat: list[Pass] = []
    for pass_ in passes:
        flat += pass_.steps() if isinstance(pass_, PassManager) else [pass_]
    return flat


class PassManager(Pass):
    """Runs passes in order, with instruments around each.

    Args:
        passes: The passes, in order (a PassManager among them runs its passes as steps of this one).
        disabled: Names of passes not to run. Defaults to none.
        dump_dir: Folder to write the graph after each pass (``NN-name.onnx``). Defaults to none.
        verify: Verification settings (:class:`VerifyInstrument`); None turns verification off.
            Defaults to VerifyConfig().
        session_files: Where the verified graphs are written for ONNX Runtime (see
            :class:`VerifyInstrument`). Defaults to a private one.
        instruments: Instruments of the caller, outermost first: they wrap verification, dumps,
            trace and timing. Defaults to none.

    The instruments are, outermost first: the caller's, verification, dumps, trace, timing.
    """

    name = "pipeline"
    role = Role.PIPELINE
    description = "Run passes in order"

    def __init__(self, passes: list[Pass], disabled: tuple[str, ...] | list[str] = (),
                 dump_dir: str | Path | None = None, verify: Any = _DEFAULT, session_files=None,
                 instruments: list[Instrument] | tuple[Instrument, ...] = ()):
        self.passes = list(passes)
        self.disabled = set(disabled)
        steps = self.steps()
        unknown = sorted(self.disabled - {p.name for p in steps} - set(available_passes()))
        if unknown:
            raise OptionError(f"--disable-pass names unknown pass(es) {unknown}",
                              fix=f"passes in this pipeline: {', '.join(p.name for p in steps)}")
        own: list[Instrument] = list(instruments)
        if verify is not None:
            own.append(VerifyInstrument(None if verify is _DEFAULT else verify, session_files))
        if dump_dir is not None:
            own.append(DumpInstrument(dump_dir))
        self.instruments = own + [TraceInstrument(), TimingInstrument()]
        self.records: list[PassRecord] = []

    @property
    def exact(self) -> bool:  # type: ignore[override]
        return all(p.exact for p in self.steps())

    def steps(self) -> list[Pass]:
        """The passes this pipeline runs, inner pipelines expanded."""
        return steps_of(self.passes)

    def _disabled(self) -> set[str]:
        names = set(self.disabled)
        for pass_ in self.passes:
            if isinstance(pass_, PassManager):
                names |= pass_._disabled()
        return names

    def run(self, ctx: PassContext) -> PipelineResult:
        """Run every step on ``ctx``; ``records`` (also ``self.records``) says what each did."""
        self.records = []
        disabled = self._disabled()
        for instrument in self.instruments:
            instrument.enter_pipeline(ctx)
        failed = True
        try:
            for index, pass_ in enumerate(self.steps()):
                if pass_.name in disabled:
                    record = PassRecord(pass_.name, pass_.exact, "disabled", role=pass_.role, detects=pass_.detects)
                    logger.debug("pass %s: disabled", pass_.name)
                else:
                    record = self._run_one(index, pass_, ctx)
                self.records.append(record)
                ctx.history.append(record)
            failed = False
        finally:
            for instrument in reversed(self.instruments):
                instrument.exit_pipeline(ctx, failed)
        ran = [r for r in self.records if r.result is not None]
        return PipelineResult(any(r.result.modified for r in ran), sum(r.result.rewrites for r in ran),
                              [s for r in ran for s in r.result.skipped], records=list(self.records))

    def _run_one(self, index: int, pass_: Pass, ctx: PassContext) -> PassRecord:
        for instrument in self.instruments:
            instrument.before_pass(index, pass_, ctx)
        try:
            pass_.requires(ctx)
            result = pass_.run(ctx)
            pass_.ensures(ctx)
            ctx.model.graph.cleanup().toposort()
        except SparseccError as err:
            err.what = f"pass '{pass_.name}' failed: {err.what} (passes run before it: {earlier_passes(ctx)})"
            raise
        record = PassRecord(pass_.name, pass_.exact, "ran" if result.modified else "unchanged", 0.0, result,
                            role=pass_.role, detects=pass_.detects)
        for instrument in reversed(self.instruments):
            instrument.after_pass(index, pass_, ctx, record)
        logger.debug("pass %s: %s, %d rewrite(s), %.3f s", pass_.name, record.status, result.rewrites,
                     record.seconds)
        return record
