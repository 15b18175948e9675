"""Named passes, their registry, and the manager that runs them with instruments.

- :mod:`~sparsecc.passmanager.contract`: :class:`Pass` (name, role, exact, requires / run /
  ensures), :class:`PassContext` (typed fields passes hand on), :class:`PassResult`, :class:`Role`.
- :mod:`~sparsecc.passmanager.registry`: ``register_pass``, ``available_passes``, ``make_pass``.
- :mod:`~sparsecc.passmanager.manager`: :class:`PassManager`, itself a pass.
- :mod:`~sparsecc.passmanager.instruments`: verification (with tolerance resolution), dumps,
  trace and timing around each pass.

Passes that change the function on purpose (pruning) are not failed for it: their output
agreement is recorded for the report.
"""

from sparsecc.passmanager.contract import Pass, PassContext, PassResult, Role, Skipped, is_planner
from sparsecc.passmanager.instruments import (DumpInstrument, Instrument, TimingInstrument, TraceInstrument,
                                              VerifyInstrument, trace_lines)
from sparsecc.passmanager.manager import PassManager, PassRecord, PipelineResult, steps_of
from sparsecc.passmanager.registry import PASS_REGISTRY, available_passes, make_pass, register_pass

__all__ = [
    "DumpInstrument", "Instrument", "PASS_REGISTRY", "Pass", "PassContext", "PassManager", "PassRecord", "PassResult",
    "PipelineResult", "Role", "Skipped", "TimingInstrument", "TraceInstrument", "VerifyInstrument",
    "available_passes", "is_planner", "make_pass", "register_pass", "steps_of", "trace_lines",
]
