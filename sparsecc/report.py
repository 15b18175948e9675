"""Markdown renderings of compile, bench and demo results (JSON is the source of truth)."""

from __future__ import annotations

from typing import Any

from sparsecc.tables import human, markdown_table, text_table


_BACKEND_WORDS = {"onnxruntime": "ONNX Runtime (CPU)",
                  "ort-references": "ONNX Runtime (CPU), sparsecc-domain nodes through their numpy references",
                  "onnx-reference": "ONNX's reference evaluator, sparsecc-domain nodes through their numpy references"}


def render_compile_markdown(report: dict[str, Any]) -> str:
    summary = report["summary"]
    verification = report["verification"]
    exact = verification["exact"]
    lines = [
        f"# sparsecc compile report: `{report['input']}`", "",
        f"Recipe **{report['recipe']['name']}**: {report['recipe']['description']}", "",
        "| | before | after |", "|---|---|---|",
        f"| MACs | {human(summary['macs_before'])} | {human(summary['macs_after'])} |",
        f"| weight parameters | {human(summary['params_before'])} | {human(summary['params_after'])} |",
        "",
        f"Ideal speedup (MAC ratio): **{summary['ideal_speedup']}x**. Compile time {summary['compile_seconds']} s.",
        "",
        *[f"**Warning**: {w}\n" for w in summary.get("warnings", [])],
        "## Verification", "",
        f"Compiled model vs {verification['against']} on {_BACKEND_WORDS.get(exact.get('backend'), 'ONNX Runtime (CPU)')}, "
        f"seeded random inputs, "
        f"pass when max |diff| <= {verification['atol']:g} + {verification['rtol']:g} x max |output|"
        f"{' (tolerances of ' + verification['dtype'] + ')' if verification.get('dtype') else ''}: "
        f"**{'passed' if exact['passed'] else 'FAILED'}** (worst relative error {exact['worst_relative_error']:.3g}).",
    ]
    agreement = verification.get("agreement_with_unpruned")
    if agreement:
        lines += ["", f"Pruning changes the function on purpose: against the unpruned original the worst output "
                      f"differs by {agreement['worst_relative_error']:.3g} x its max |value|."]
    second = verification.get("second_shape") or {}
    if second.get("shapes"):
        lines += ["", f"The input model leaves input dimensions symbolic, so the compiled model was run again at "
                      f"{second['shapes']} (ONNX Runtime, default optimisations): "
                      f"**{'passed' if second.get('passed') else second['note']}**."]
    fields = report.get("model_fields") or {}
    if fields:
        lines += ["", f"Model-level fields carried over from the input: {', '.join(sorted(fields))}."]
    if report.get("specialized_input_shapes"):
        lines += ["", "A rewrite depends on the input sizes, so the compiled model takes exactly the shapes it was "
                      f"verified at: {report['specialized_input_shapes']}."]
    plans = [name for name in report.get("outputs", {}) if name.endswith(".json") and name.startswith("plan")]
    if len(plans) > 1:
        lines += ["", f"The recipe pruned in stages: `plan.json` applies to the input model, and "
                      f"{', '.join(f'`{p}`' for p in plans[1:])} to the graph of each later stage."]
    lines += ["", "## Passes", ""]
    rows = []
    for record in report["passes"]:
        check = record.get("verification")
        status = "-" if not check else ("passed" if check["passed"] else "differs (expected)")
        rows.append([record["name"], "yes" if record["exact"] else "no", record["status"],
                     record.get("rewrites", 0), f"{record['seconds']:.3f}", status])
    lines += _markdown_lines(rows, ["pass", "exact", "status", "rewrites", "seconds", "verification"])
    if report.get("shape_changes"):
        lines += ["", "## Shape changes", "",
                  "Every weight layer whose weight shape changed, and why:", ""]
        lines += _markdown_lines([[c["layer"], c["change"], "x".join(map(str, c["before"])) if c["before"] else "-",
                             "x".join(map(str, c["after"])) if c["after"] else "-", c["why"]]
                            for c in report["shape_changes"]], ["layer", "change", "before", "after", "why"])
    lines += _lowering_decisions(report)
    if report["skipped"]:
        lines += ["", "## Left as they were", ""]
        lines += _markdown_lines([[s["pass"], s["layer"], s["reason"]] for s in report["skipped"]],
                           ["pass", "layer", "reason"])
    lines += ["", "## Weight layers after compilation", ""]
    lines += _markdown_lines([[r["node"], r["kind"], "x".join(map(str, r["weight_shape"])), human(r["macs"] or 0),
                         f"{100 * r['sparsity']:.1f}%", r["pattern"]] for r in report["after"]["layers"]],
                       ["layer", "kind", "weight", "MACs", "zeros", "pattern"])
    env = report["environment"]
    lines += ["", f"Environment: {env.get('cpu')} ({env.get('cpu_count')} cores), onnxruntime "
                  f"{env.get('onnxruntime')}, onnx {env.get('onnx')}, numpy {env.get('numpy')}.", ""]
    return "\n".join(lines)


def _speedups(info: dict[str, Any]) -> str:
    """A layer's timed speedups against its baseline, and the analytic estimates where they were used."""
    timed = next((v for k, v in info.items() if k.startswith("speedup_vs_")), {})
    parts = [f"{name}: {text}" for name, text in timed.items()]
    parts += [f"{name}: estimated {value}x" for name, value in info.get("estimated_speedup", {}).items()]
    return "; ".join(parts) or "-"


def _lowering_decisions(report: dict[str, Any]) -> list[str]:
    """Per-layer choices of the passes that lower by a cost model: what, why, from what evidence, decided by what."""
    lines: list[str] = []
    for record in report["passes"]:
        layers = (record.get("details") or {}).get("layers") or {}
        rows = [[name, info["lowering"], info.get("timing", "-"), _speedups(info), info.get("decided_by", "-"),
                 info.get("reason", ""),
                 "; ".join(f"{k}: {v}" for k, v in info.get("not_applicable", {}).items()) or "-"]
                for name, info in layers.items() if "lowering" in info]
        if not rows:
            continue
        details = record["details"]
        lines += ["", f"## Lowering decisions of `{record['name']}` (cost model: {details.get('cost_model')})", ""]
        cache = details.get("timing_cache") or report.get("timing_cache")
        if cache and details.get("cost_model") == "measured":
            lines += [f"Timing cache `{cache['path'] or 'in memory only'}`: {cache['hits']} timing(s) taken from it, "
                      f"{cache['misses']} measured. Each candidate is timed against the layer's baseline in paired "
                      "runs (CPU time and wall clock, ONNX Runtime spinning off); a speedup is shown with its "
                      "90% interval, the pairs and the load. Where the interval straddles the needed speedup, or "
                      "the machine was too busy, the analytic model decides and the row says so.", ""]
        lines += _markdown_lines(rows, ["layer", "lowering", "timing", "speedup vs baseline", "decided by", "why",
                                        "did not apply"])
        lines += _decided_by_summary(layers)
        check = details.get("model_check")
        if check:
            lines += ["", check["reason"] + "."]
    check = next((r.get("details") for r in report["passes"] if r["name"] == "deprune-model-check"), None)
    if check and check.get("reason"):
        lines += ["", "## Whole model", "", check["reason"] + "."]
    return lines


def _decided_by_summary(layers: dict[str, Any]) -> list[str]:
    """One line: how many choices timing made, and how many the analytic model made because timing could not."""
    counts: dict[str, int] = {}
    for info in layers.values():
        if "decided_by" in info:
            counts[info["decided_by"]] = counts.get(info["decided_by"], 0) + 1
    fell_back = sum(n for by, n in counts.items() if "inconclusive" in by)
    busy = sum("too busy" in info.get("reason", "") for info in layers.values())
    if not counts:
        return []
    line = "Decided by: " + ", ".join(f"{by} {n}" for by, n in sorted(counts.items())) + "."
    if fell_back:
        line += (f" {fell_back} timing(s) were inconclusive (the interval straddled the needed speedup"
                 + (f", or the machine was too busy to trust them: {busy}" if busy else "") +
                 "), so the analytic model decided those layers, never an undo.")
    return ["", line]


def _markdown_lines(rows: list[list[Any]], headers: list[str]) -> list[str]:
    return markdown_table(rows, headers).split("\n")


def format_bench(result: dict[str, Any]) -> str:
    from sparsecc.measure.readout import speedup_text

    rows = [[label, m["path"], f"{m['median_ms']:.3f}", f"{m['min_ms']:.3f}", f"{m['cpu_median_ms']:.3f}",
             human(m["macs"])] for label, m in result["models"].items()]
    text = text_table(rows, ["model", "path", "median ms", "min ms", "CPU ms", "MACs"])
    backend = result["backend"]
    load = result["load"]
    text += (f"\n\n{result['runs']} paired rounds after {result['warmup']} warm-up; {result['clock']}; "
             f"backend {backend.get('backend')} ({backend.get('intra_op_num_threads', '?')} threads, spinning off); "
             f"load {load['before'][0]:.2f} -> {load['after'][0]:.2f} on {load['cores']} cores ({load['level']})")
    if "speedup" in result:
        text += (f"\nspeedup {speedup_text(result)}, {result['confidence']:.0%} intervals; ideal "
                 f"{result['ideal']:.3f}x (MAC ratio); efficiency {result['efficiency']:.2f}")
        text += "".join(f"\nNote: {note}" for note in result["notes"])
    return text
