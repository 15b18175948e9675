"""The speed target's section of ``report.md``: target, achieved, predicted, ideal, the rounds, the tables."""

from __future__ import annotations

from typing import Any

__all__ = ["speed_target_lines", "speed_target_summary"]


def speed_target_summary(records: list) -> dict[str, Any]:
    """The speed target's line (target, achieved, predicted, ideal) and result for the compile summary, when a
    pass of ``records`` (:class:`~sparsecc.passmanager.PassRecord`) had one; empty otherwise."""
    for record in records:
        result = record.result.details.get("speed_target") if record.result else None
        if result:
            return {"speed_target": next((n for n in record.result.notes if n.startswith("speed target")), ""),
                    "speed_target_result": result["result"]}
    return {}


def speed_target_lines(report: dict[str, Any]) -> list[str]:
    """Markdown lines for a compile whose ``plan-filters`` had a speed target (none otherwise)."""
    record = next((p for p in report.get("passes", []) if (p.get("details") or {}).get("speed_target")), None)
    if record is None:
        return []
    speed = record["details"]["speed_target"]
    result = speed["result"]
    if result.get("already_met"):
        return ["", "## Speed target", "", result["summary"], "",
                f"Latency tables: {speed['layers_timed']} layers, {_timer(speed['timer'])}; the timed layers take "
                f"{speed['tables_dense_ms']} ms unpruned. No allocation was made: every channel group keeps all its "
                "channels."]
    lines = ["", "## Speed target", "", report["summary"].get("speed_target", ""), "",
             f"Latency tables: {speed['layers_timed']} layers, {_timer(speed['timer'])}; the timed layers take "
             f"{speed['tables_dense_ms']} ms unpruned. Rounds (the allocation for a budget, the pruned copy measured "
             "against the unpruned model, the budget corrected from it):", "",
             "| round | budget (share of the tables' time) | predicted | measured CPU [90% CI] | wall | ideal | MACs | "
             "load |", "|---|---|---|---|---|---|---|---|"]
    for row in speed["rounds"]:
        measured = row.get("measured")
        cpu = (f"{measured['cpu']['estimate']:.3f} [{measured['cpu']['low']:.3f}, {measured['cpu']['high']:.3f}]"
               if measured else "not measured")
        wall = f"{measured['wall']['estimate']:.3f}" if measured else "-"
        load = f"{measured['load']['before'][0]:.2f} -> {measured['load']['after'][0]:.2f}" if measured else "-"
        chosen = " (taken)" if row["round"] == result["round"] else ""
        lines.append(f"| {row['round']}{chosen} | {row['budget_share']:.3f} | {row['predicted_speedup']}x | {cpu} | "
                     f"{wall} | {row['ideal']}x | {row['macs']:,} | {load} |")
    lines += ["", "Channel groups (kept counts are multiples of the alignment: `round_to` and the step the group's "
                  "kernels were found to prefer):", "",
              "| group | channels | kept | step found | alignment |", "|---|---|---|---|---|"]
    kept = next(r for r in speed["rounds"] if r["round"] == result["round"])["kept"]
    for label, group in speed["groups"].items():
        lines.append(f"| {label} | {group['size']} | {kept.get(label, group['size'])} | {group['step_found']} | "
                     f"{group['alignment']} |")
    return lines


def _timer(timer: dict[str, Any]) -> str:
    if timer.get("timer") == "measured":
        return f"measured on {timer['backend']}, {timer['threads']} thread(s), {timer['pairs']} pairs per sample"
    return timer.get("what", timer.get("timer", "?"))
