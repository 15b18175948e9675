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


def _lowering_decisions(report: dict[str, Any]) -> list[str]:
    """Per-layer choices of the passes that lower by a cost model: what, why, from where, with what spread."""
    lines: list[str] = []
    for record in report["passes"]:
        layers = (record.get("details") or {}).get("layers") or {}
        rows = [[name, info["lowering"], info.get("timing", "-"),
                 ", ".join(f"{k} {v:.1%}" for k, v in info.get("spread", {}).items()) or "-", info.get("reason", ""),
                 "; ".join(f"{k}: {v}" for k, v in info.get("not_applicable", {}).items()) or "-"]
                for name, info in layers.items() if "lowering" in info]
        if not rows:
            continue
        details = record["details"]
        lines += ["", f"## Lowering decisions of `{record['name']}` (cost model: {details.get('cost_model')})", ""]
        cache = details.get("timing_cache") or report.get("timing_cache")
        if cache and details.get("cost_model") == "measured":
            lines += [f"Timing cache `{cache['path'] or 'in memory only'}`: {cache['hits']} timing(s) taken from it, "
                      f"{cache['misses']} measured. Spread is (median - min) / min of the runs; a choice whose "
                      "margin is inside it is measured again, then resolved as dense.", ""]
        lines += _markdown_lines(rows, ["layer", "lowering", "timing", "spread", "why", "did not apply"])
        check = details.get("model_check")
        if check:
            lines += ["", check["reason"] + "."]
    return lines


def _markdown_lines(rows: list[list[Any]], headers: list[str]) -> list[str]:
    return markdown_table(rows, headers).split("\n")


def format_bench(result: dict[str, Any]) -> str:
    rows = [[label, m["path"], f"{m['median_ms']:.3f}", f"{m['min_ms']:.3f}", human(m["macs"])]
            for label, m in result["models"].items()]
    text = text_table(rows, ["model", "path", "median ms", "min ms", "MACs"])
    backend = result["backend"]
    text += (f"\n\n{result['runs']} interleaved runs after {result['warmup']} warm-up, {result['clock']}; "
             f"backend {backend.get('backend')} ({backend.get('intra_op_num_threads', '?')} threads)")
    if "speedup" in result:
        text += (f"\nspeedup {result['speedup']:.3f}x (median baseline / median candidate); ideal "
                 f"{result['ideal']:.3f}x (MAC ratio); efficiency {result['efficiency']:.2f}")
    return text
