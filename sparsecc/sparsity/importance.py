"""Importance criteria as functions, in open registries (pure numpy): what to prune, by name.

As in Torch-Pruning, an importance is any function of what can be pruned that returns one score
per prunable unit, higher = more important. Two kinds, each a registry a recipe names from:

- **filter importance** (``plan-filters: {metric: NAME}``): ``fn(group: FilterGroup) -> scores``,
  one score per channel of a group of coupled channels. The metrics of
  :mod:`sparsecc.sparsity.filter_metrics` are registered under their names; with a global ranking,
  the 2:4-aware and hybrid ones also take their transformations over every group at once
  (:func:`~sparsecc.sparsity.filter_metrics.filter_scores_by_group`).
- **group-wise criterion** (``plan-groupwise: {criterion: NAME}``): ``fn(rows) -> scores`` where
  ``rows`` is ``|w|`` as [conv groups, groups per conv group, group length] (float64) and the
  scores are [conv groups, groups per conv group]; each row is scored on its own (the rows may
  come a slice at a time).

A criterion of one's own is a few lines in a module a recipe imports (``imports:``, see
:mod:`sparsecc.extensions`)::

    import numpy as np
    from sparsecc.sparsity.importance import register_filter_importance

    @register_filter_importance("max-abs")
    def max_abs(group):
        return np.max([np.abs(w).reshape(w.shape[0], -1).max(axis=1) for w in group.producers], axis=0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sparsecc.errors import OptionError
from sparsecc.sparsity import filter_metrics

__all__ = ["FilterGroup", "GroupCriterion", "filter_importance_names", "group_criterion", "group_criterion_names",
           "register_filter_importance", "register_group_criterion", "score_filter_groups"]


@dataclass(frozen=True)
class FilterGroup:
    """What a filter importance sees of one group of coupled channels.

    Attributes:
        producers: The constants whose output channels are the group's channels, channel axis
            first ([C, ...]); 1-D ones (bias, BatchNorm scale) carry no filter weights.
        consumers: The weights that read the channels, as [K_out, C, ...].
        prunable: One flag per producer: will 2:4 prune it? Defaults to none (its rows are a
            multiple of 4 long).
        k: Weight of the 2:4 term of the hybrid metrics. Defaults to 0.5.
        layout: Where 2:4's groups of 4 run: "input-channel" or "kernel-width". Defaults to
            "input-channel".
    """

    producers: Sequence[np.ndarray]
    consumers: Sequence[np.ndarray]
    prunable: Sequence[bool] | None = None
    k: float = 0.5
    layout: str = "input-channel"


FilterImportance = Callable[[FilterGroup], np.ndarray]
_FILTER_IMPORTANCES: dict[str, FilterImportance] = {}


def register_filter_importance(name: str, fn: FilterImportance | None = None):
    """Register ``fn(group) -> scores`` as the filter metric ``name`` (usable as a decorator)."""
    def register(function: FilterImportance) -> FilterImportance:
        known = _FILTER_IMPORTANCES.get(name)
        if known is not None and known is not function:
            raise ValueError(f"two filter importances are named {name!r}")
        _FILTER_IMPORTANCES[name] = function
        return function

    return register(fn) if fn is not None else register


def filter_importance_names() -> list[str]:
    return list(_FILTER_IMPORTANCES)


def score_filter_groups(metric: str, groups: Mapping[str, FilterGroup], scope: str = "global"
                        ) -> dict[str, np.ndarray]:
    """One score per channel of each group, by the registered importance ``metric``; dead filters score 0.

    With ``scope="global"`` the built-in 2:4-aware and hybrid metrics take their transformations
    (neutral scores, ranks, distance to the minimum) over every group together.

    Raises:
        OptionError: No importance is registered under ``metric``.
    """
    if metric not in _FILTER_IMPORTANCES:
        raise OptionError(f"unknown filter metric '{metric}'", where="metric option",
                          fix=f"use one of {', '.join(_FILTER_IMPORTANCES)}, or register one "
                              "(sparsecc.sparsity.importance.register_filter_importance) in a module the recipe "
                              "imports")
    if metric in filter_metrics.CROSS_GROUP and scope == "global":
        first = next(iter(groups.values()), FilterGroup([], []))
        return filter_metrics.filter_scores_by_group(
            metric, {label: (g.producers, g.consumers, g.prunable) for label, g in groups.items()},
            k=first.k, layout=first.layout, scope=scope)
    importance = _FILTER_IMPORTANCES[metric]
    return {label: filter_metrics.zero_dead_filters(np.asarray(importance(group), dtype=np.float64),
                                                    group.producers)
            for label, group in groups.items()}


def _builtin_filter_metric(name: str) -> FilterImportance:
    def importance(group: FilterGroup) -> np.ndarray:
        filter_metrics.check_layout(group.layout)
        return filter_metrics.METRICS[name](group.producers, group.consumers, k=group.k, layout=group.layout,
                                            prunable=group.prunable)

    importance.__name__ = name.replace("-", "_")
    return importance


for _name in filter_metrics.METRICS:
    register_filter_importance(_name, _builtin_filter_metric(_name))


@dataclass(frozen=True)
class GroupCriterion:
    """A registered group-wise criterion.

    Attributes:
        score: ``fn(rows) -> scores``, rows of ``|w|`` as [conv groups, groups, length] (float64).
        normalize: ``fn(scores, length) -> scores`` that makes layers with rows of different lengths
            comparable under one global threshold. Defaults to none (the scores already are).
    """

    score: Callable[[np.ndarray], np.ndarray]
    normalize: Callable[[np.ndarray, int], np.ndarray] | None = None


_GROUP_CRITERIA: dict[str, GroupCriterion] = {}


def register_group_criterion(name: str, score: Callable[[np.ndarray], np.ndarray] | None = None,
                             normalize: Callable[[np.ndarray, int], np.ndarray] | None = None):
    """Register ``score(rows) -> scores`` as the group-wise criterion ``name`` (usable as a decorator)."""
    def register(function):
        known = _GROUP_CRITERIA.get(name)
        if known is not None and known.score is not function:
            raise ValueError(f"two group-wise criteria are named {name!r}")
        _GROUP_CRITERIA[name] = GroupCriterion(function, normalize)
        return function

    return register(score) if score is not None else register


def group_criterion_names() -> list[str]:
    return list(_GROUP_CRITERIA)


def group_criterion(name: str) -> GroupCriterion:
    """The registered criterion ``name``.

    Raises:
        OptionError: None is registered under it.
    """
    if name not in _GROUP_CRITERIA:
        raise OptionError(f"unknown group-wise criterion '{name}'",
                          fix=f"use one of {group_criterion_names()}, or register one "
                              "(sparsecc.sparsity.importance.register_group_criterion) in a module the recipe imports")
    return _GROUP_CRITERIA[name]


# the built-in criteria: l1 (sum |w|), l2 (Euclidean norm), mean (mean |w|, DST's), zeros (1 for a
# row holding a non-zero); l1 and l2 compare across layers by the mean and the root mean square
register_group_criterion("l1", lambda rows: rows.sum(axis=2), lambda scores, length: scores / length)
register_group_criterion("l2", lambda rows: np.sqrt(np.sum(rows * rows, axis=2)),
                         lambda scores, length: scores / np.sqrt(length))
register_group_criterion("mean", lambda rows: rows.mean(axis=2))
register_group_criterion("zeros", lambda rows: np.any(rows != 0, axis=2).astype(np.float64))
