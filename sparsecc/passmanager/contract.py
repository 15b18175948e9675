"""The pass contract: what a pass declares, what it is given, and what it returns.

A pass is a small class with a ``name``, a ``role``, a flag saying whether it is exact (the graph
after it computes the same function as the graph before it), and ``requires`` / ``run`` /
``ensures``. Passes hand on what they produce through the typed fields of :class:`PassContext`
(the plan, the masked original, the plans as applied), never through free-form keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from sparsecc.lowering.timing_cache import TimingCache
    from sparsecc.model import Model
    from sparsecc.passmanager.manager import PassRecord
    from sparsecc.plan import SparsityPlan


class Role:
    """What a pass does to the compile, which is what every "is it a planner?" question reads.

    - ``PLAN``: analysis that writes the sparsity plan; the graph is not changed.
    - ``APPLY``: applies the plan (zeroes what it prunes): the masked original.
    - ``REWRITE``: an edit of the graph that keeps its ops' meaning (canonicalisation, filter removal,
      channel permutation).
    - ``LOWER``: runs layers as other nodes (Gather + smaller GEMM, DR sub-GEMMs, plugin nodes, FP16).
    - ``CHECK``: measures or checks the graph (and may put a faster equivalent back).
    - ``PIPELINE``: a pass made of passes (:class:`~sparsecc.passmanager.PassManager`).
    """

    PLAN = "plan"
    APPLY = "apply"
    REWRITE = "rewrite"
    LOWER = "lower"
    CHECK = "check"
    PIPELINE = "pipeline"
    ALL = (PLAN, APPLY, REWRITE, LOWER, CHECK, PIPELINE)


@dataclass
class Skipped:
    """A layer a pass left as it was, and why (always reported, never silent)."""

    layer: str
    reason: str


@dataclass
class PassResult:
    """What a pass did. ``modified`` must be honest: False means the graph is unchanged.

    ``empty_plan_reason``, from a planner: why the empty plan it made is the answer rather than a failure
    (a speed target the model already meets), so ``apply-plan`` compiles the model as it is. Defaults to none.
    """

    modified: bool
    rewrites: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    empty_plan_reason: str = ""


@dataclass
class PassContext:
    """What passes share: the model being compiled, the sparsity plan, and what earlier passes left.

    Attributes:
        model: The model; passes edit ``model.graph`` in place.
        plan: The sparsity plan (see :mod:`sparsecc.plan`), or None before planning.
        trace: Record why rewrite rules did not fire. Defaults to False.
        cost_model: Overrides the cost model of passes that choose by one ("measured" or "analytic").
            Defaults to none (each pass's own option).
        timing_cache: The :class:`~sparsecc.lowering.TimingCache` measured choices go through.
            Defaults to none (measurements are kept for this run only).
        masked: The masked original (the model right after the last ``apply-plan``): what later exact
            rewrites must match, and what a whole-model check may put back. Defaults to none.
        applied_plans: The plan as each ``apply-plan`` applied it (later rewrites may drop entries of
            ``plan``), for ``plan.json`` and the report. Defaults to none.
        history: The record of every pass run (or disabled) on this context so far, in order.
    """

    model: Model
    plan: SparsityPlan | None = None
    trace: bool = False
    cost_model: str | None = None
    timing_cache: TimingCache | None = None
    masked: Model | None = None
    applied_plans: list[SparsityPlan] = field(default_factory=list)
    history: list[PassRecord] = field(default_factory=list)

    def details_of(self, name: str) -> dict[str, Any]:
        """The details of the last run of pass ``name`` (empty when it did not run)."""
        for record in reversed(self.history):
            if record.name == name and record.result is not None:
                return record.result.details
        return {}


class Pass:
    """Base class of all passes.

    Subclasses set ``name``, ``role``, ``exact``, ``description`` (and ``specializes_shapes`` or
    ``detects`` where they apply), take their options as keyword arguments in ``__init__``, and
    implement :meth:`run`.
    """

    name: ClassVar[str] = ""
    role: ClassVar[str] = Role.REWRITE
    exact: ClassVar[bool] = True
    description: ClassVar[str] = ""
    # True for rewrites whose result holds only at the shapes they were compiled at (e.g. slices
    # computed from spatial sizes): the compiler then fixes dynamic input dims in the output.
    specializes_shapes: ClassVar[bool] = False
    # True for planners that only read zeros already in the weights: an empty plan from them is a
    # dense model, not a failure, and a fine-tuning loop has nothing to prune by them.
    detects: ClassVar[bool] = False

    def requires(self, ctx: PassContext) -> None:
        """Check preconditions; raise a SparseccError naming what is missing."""

    def run(self, ctx: PassContext) -> PassResult:
        raise NotImplementedError(f"pass {self.name!r} does not implement run()")

    def ensures(self, ctx: PassContext) -> None:
        """Check postconditions; raise an error if the pass broke its promise."""

    def options(self) -> dict[str, Any]:
        """The options this instance was built with (for reports)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    @classmethod
    def options_at(cls, options: dict[str, Any], fraction: float) -> dict[str, Any]:
        """A planner's options that prune ``fraction`` of what ``options`` prune (gradual schedules).

        Raises:
            OptionError: The pass cannot plan part of its pruning. Defaults to raising for every
                pass that does not say how.
        """
        from sparsecc.errors import OptionError

        raise OptionError(f"pass '{cls.name}' cannot plan a share of its pruning (a gradual schedule)",
                          fix="use --schedule one-shot")


def is_planner(pass_or_record) -> bool:
    """Does this pass (or pass class, or record of one) plan pruning, i.e. is its role ``plan``?"""
    return getattr(pass_or_record, "role", None) == Role.PLAN
