"""Why each weight layer's shape changed during a compile, for the report.

Compares the weight layers of the canonical input with those of the compiled
model and explains every difference from what the passes recorded: filters a
filter plan removed, input channels removed with the filters of the layer
making them, unused input channels folded into a producer, a layer lowered
to Gather + smaller GEMM (it then no longer appears as one weight layer).
"""

from __future__ import annotations

from typing import Any


def explain_shape_changes(before: dict[str, Any], after: dict[str, Any], records: list,
                          applied_plans: list) -> list[dict[str, Any]]:
    """One entry per weight layer whose weight shape changed, vanished or appeared, with the cause."""
    old = {row["node"]: row for row in before["layers"]}
    new = {row["node"]: row for row in after["layers"]}
    by_layer = _recorded_per_layer(records)
    planned = {entry.layer: entry for plan in applied_plans or [] for entry in plan.entries.values()}
    changes = []
    for node, row in old.items():
        shape = row["weight_shape"]
        later = new.get(node)
        if later is not None and later["weight_shape"] == shape:
            continue
        causes = _plan_causes(planned.get(node)) + by_layer.get(node, [])
        if later is None:
            what = "replaced"
            causes = causes or [f"rewritten by {', '.join(_modifying(records)) or 'a pass'}"]
        else:
            what = "reshaped"
            causes = causes or [f"changed by {', '.join(_modifying(records)) or 'a pass'}"]
        changes.append({"layer": node, "change": what, "before": list(shape),
                        "after": list(later["weight_shape"]) if later else None, "why": "; ".join(causes)})
    for node, row in new.items():
        if node not in old:
            causes = by_layer.get(node, []) or [f"made by {', '.join(_modifying(records)) or 'a pass'}"]
            changes.append({"layer": node, "change": "new", "before": None, "after": list(row["weight_shape"]),
                            "why": "; ".join(causes)})
    return changes


def _plan_causes(entry) -> list[str]:
    if entry is None:
        return []
    details = entry.details or {}
    causes = []
    if details.get("removed_filters"):
        causes.append(f"{details['removed_filters']} filter(s) removed (output channels; {entry.pattern} plan by "
                      f"{entry.criterion})")
    if details.get("removed_input_channels"):
        causes.append(f"{details['removed_input_channels']} input channel(s) removed with the filters of the "
                      f"layer making them (channel group(s) {', '.join(map(str, sorted(set(details.get('groups', [])))))})")
    return causes


def _recorded_per_layer(records: list) -> dict[str, list[str]]:
    """What passes recorded per layer (a fold into a producer, a lowering), by layer name."""
    found: dict[str, list[str]] = {}
    for record in records:
        if record.status != "ran" or record.result is None:
            continue
        layers = (record.result.details or {}).get("layers")
        if not isinstance(layers, dict):
            continue
        for node, info in layers.items():
            if not isinstance(info, dict):
                continue
            if isinstance(info.get("fold"), str) and not info["fold"].startswith("not folded"):
                found.setdefault(node, []).append(f"{record.name}: {info['fold']}")
            lowering = info.get("lowering")
            if lowering and lowering != "dense":
                found.setdefault(node, []).append(f"{record.name}: lowered to '{lowering}' ({_lowered_to(lowering)})")
    return found


def _lowered_to(lowering: str) -> str:
    """What a lowering runs the layer as: a plugin node for the TensorRT lowerings, else Gather + smaller GEMM."""
    from sparsecc.lowering import get_lowering

    registered = get_lowering(lowering)
    if registered is not None and registered.family == "tensorrt":
        return registered.description
    return "Gather + smaller GEMM"


def _modifying(records: list) -> list[str]:
    return [r.name for r in records if r.status == "ran"]
