"""Instruments: what the pass manager does around each pass, one object per concern.

As in TVM's pass infrastructure, an instrument hooks the start and end of a pipeline and the
moments before and after each pass. The manager calls ``before_pass`` hooks in the order the
instruments are given and ``after_pass`` hooks in the reverse order, so an instrument listed
first wraps the ones after it (the verifier copies the graph before the timer starts, and
compares after it stops). ``exit_pipeline`` always runs, also when a pass failed, to free what
an instrument holds.

- :class:`TimingInstrument`: seconds each pass took (``PassRecord.seconds``).
- :class:`TraceInstrument`: with ``ctx.trace``, logs why each rewrite did not fire on each layer.
- :class:`DumpInstrument`: writes the graph after each pass (``NN-name.onnx``).
- :class:`VerifyInstrument`: checks every pass that changed the graph against the graph before it,
  at tolerances resolved from the graph being checked; fails an exact pass that changed the
  outputs, records the agreement of a pass that prunes on purpose.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsecc.errors import VerificationError
from sparsecc.log import logger

if TYPE_CHECKING:
    from sparsecc.model import Model
    from sparsecc.session_files import SessionFiles
    from sparsecc.passmanager.contract import Pass, PassContext
    from sparsecc.passmanager.manager import PassRecord
    from sparsecc.verify import VerifyConfig


class Instrument:
    """Base class: every hook does nothing."""

    def enter_pipeline(self, ctx: PassContext) -> None:
        """A pipeline starts on ``ctx``."""

    def before_pass(self, index: int, pass_: Pass, ctx: PassContext) -> None:
        """Pass number ``index`` of the pipeline is about to run (disabled passes get no call)."""

    def after_pass(self, index: int, pass_: Pass, ctx: PassContext, record: PassRecord) -> None:
        """Pass number ``index`` ran; ``record`` says what it did (``record.result`` is set)."""

    def exit_pipeline(self, ctx: PassContext, failed: bool) -> None:
        """The pipeline ended (``failed``: by an exception); free what the instrument holds."""


def earlier_passes(ctx: PassContext) -> str:
    """The passes run on ``ctx`` so far, for messages ("none" before the first)."""
    return ", ".join(r.name for r in ctx.history if r.status != "disabled") or "none"


class TimingInstrument(Instrument):
    """Records the seconds each pass took (its requires, run and ensures, and the graph cleanup)."""

    def __init__(self) -> None:
        self._started = 0.0

    def before_pass(self, index, pass_, ctx) -> None:
        self._started = time.perf_counter()

    def after_pass(self, index, pass_, ctx, record) -> None:
        record.seconds = time.perf_counter() - self._started


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


class TraceInstrument(Instrument):
    """With ``ctx.trace``, logs after each pass why each rewrite did not fire on each layer."""

    def after_pass(self, index, pass_, ctx, record) -> None:
        if ctx.trace:
            for line in trace_lines(record):
                logger.info("trace: %s", line)


class DumpInstrument(Instrument):
    """Writes the graph after each pass to ``folder/NN-name.onnx`` (NN: the pass's place in the pipeline)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def after_pass(self, index, pass_, ctx, record) -> None:
        ctx.model.save(self.folder / f"{index:02d}-{pass_.name}.onnx")


class VerifyInstrument(Instrument):
    """Checks each pass that changed the graph against the graph before it, on ONNX Runtime.

    Tolerances not given in ``config`` are resolved for each check from the float type of the
    graph before the pass (so passes after ``to-fp16`` are checked at FP16's).

    Args:
        config: Seed, iterations and the tolerances given. Defaults to VerifyConfig().
        session_files: Where the graphs checked are written for ONNX Runtime; the caller's, to
            share weights already written with its own checks. Defaults to a private one.
    """

    def __init__(self, config: VerifyConfig | None = None, session_files: SessionFiles | None = None):
        from sparsecc.verify import VerifyConfig

        self.config = config if config is not None else VerifyConfig()
        # the graph a verified pass left, on disk for ONNX Runtime: the next pass's reference
        self._shared_files = session_files
        self._files: SessionFiles | None = session_files
        self._verified_file: Path | None = None
        self._before: Model | None = None

    def enter_pipeline(self, ctx) -> None:
        self._forget_verified()

    def before_pass(self, index, pass_, ctx) -> None:
        from sparsecc.session_files import release_to_files

        self._before = ctx.model.copy()
        # kept only to be compared against: weights already in a file are mapped from it, so
        # those the pass replaces do not stay in memory twice
        release_to_files(self._before.graph)

    def after_pass(self, index, pass_, ctx, record) -> None:
        before, self._before = self._before, None
        if record.result.modified:
            record.verification = self._verify(pass_, before, ctx)

    def exit_pipeline(self, ctx, failed: bool) -> None:
        """Delete the temporary model files kept between passes."""
        self._before = None
        if self._files is not None and self._files is not self._shared_files:
            self._files.close()
        elif self._files is not None:
            self._files.release(self._verified_file)
        self._files, self._verified_file = self._shared_files, None

    def _forget_verified(self) -> None:
        if self._files is not None:
            self._files.release(self._verified_file)
        self._verified_file = None

    def _verify(self, pass_: Pass, before: Model, ctx: PassContext) -> dict[str, Any]:
        from sparsecc.session_files import SessionFiles
        from sparsecc.verify import compare_models, input_specs, verification_backend
        from sparsecc.verify_options import raise_if_too_tight

        after = ctx.model
        specs = input_specs(after)
        # the graph a verified pass left is the graph the next pass starts from: written once, to a
        # file with external data that ONNX Runtime loads without a serialised copy of the weights
        self._files = self._files or SessionFiles()
        before_file = self._verified_file or self._files.write(before.graph)
        after_file = self._files.write(after.graph)
        try:
            # a graph with sparsecc-domain nodes runs them through their numpy references
            outcome = compare_models(before_file, after_file, specs, self.config.for_model(before),
                                     verification_backend(before, after), files=self._files)
        finally:
            self._files.release(before_file)
            self._verified_file = after_file
        data = outcome.to_dict()
        data["mode"] = "exact" if pass_.exact else "agreement"
        if pass_.exact and not outcome.passed:
            ran = earlier_passes(ctx)
            raise_if_too_tight(outcome, f"pass '{pass_.name}'", where=f"after passes: {ran}")
            raise VerificationError(
                f"pass '{pass_.name}' claims to be exact but changed the outputs: {outcome.describe_worst()}",
                where=f"after passes: {ran}",
                fix=f"this is a bug in the pass; --disable-pass {pass_.name} works around it, "
                    "and --dump-dir shows the graphs before and after",
            )
        return data
