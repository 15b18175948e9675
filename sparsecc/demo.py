"""``sparsecc demo``: the main job on the embedded default (ONNX Runtime, CPU).

Takes a bundled trained model and shows what a user wants to see: the model pruned and
fine-tuned by sparsecc (the bundled ``*.ft.onnx`` checkpoints, made by ``sparsecc finetune``),
compiled in zero-detect mode, with its accuracy next to the dense model's and the speedup;
then every built-in recipe applied one-shot (no fine-tuning), labelled as such, with chance
level marked. Every variant is verified, scored on the bundled held-out split, and timed
interleaved in one process against the canonical dense model. Writes ``report.json``,
``report.md`` (column legend, links to each variant's compile report, the spread of every
timing) and ``tradeoff.png`` (accuracy vs latency; needs matplotlib, else skipped with a note).
Needs no torch and no GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sparsecc.errors import SparseccError
from sparsecc.evaluate import accuracy  # noqa: F401 - re-exported: the demo scores with it
from sparsecc.log import progress

DEFAULT_MODEL = "resnet18-digits"
DETECT_RECIPE = "zeros"  # zero-detect mode (also known as `detect`)
_DETECT_NAMES = ("zeros", "detect", "deprune-zeros")  # recipes that prune nothing: they exploit zeros already there
CHANCE_MARGIN = 0.05  # within 5 points of 1/classes counts as chance


def _compile(checkpoint: Path, recipe, out_dir: Path, shapes: dict, plan: Path | None = None):
    """The demo's one compile call (every variant goes through here)."""
    from sparsecc.compiler import compile_model

    return compile_model(checkpoint, recipe, out_dir, shapes=shapes, plan=plan, force=True)  # a re-run replaces


def replay_filters_recipe():
    """Removes the filters a bundled plan names, physically (the plan made while fine-tuning)."""
    from sparsecc.recipe import parse_recipe

    return parse_recipe('{"name": "replay-filters", "description": "apply the bundled plan, remove its filters", '
                        '"passes": ["apply-plan", "remove-filters"]}', "replay-filters.json")


def _variants(model_name: str, recipes: list[str], checkpoint: Path) -> list[dict[str, Any]]:
    """What to compile: fine-tuned checkpoints in detect mode first, then each recipe one-shot."""
    from sparsecc import zoo

    variants = [{"variant": "none", "recipe": "none", "kind": "dense", "compile_recipe": "none",
                 "checkpoint": checkpoint, "folder": "none"}] if "none" in recipes else []
    for entry in zoo.finetuned_checkpoints(model_name):
        facts = {k: entry[k] for k in ("schedule", "epochs", "data", "command") if k in entry}
        variants.append({"variant": f"{entry['recipe']} + fine-tune", "recipe": entry["recipe"],
                         "kind": "fine-tuned", "compile_recipe": DETECT_RECIPE, "checkpoint": entry["path"],
                         "folder": f"finetuned-{entry['recipe']}", "finetune": facts})
        if entry["recipe"].startswith("filter") and entry.get("plan_path"):
            # zero-detect mode skips the inputs of the zeroed filters; the plan removes the filters too
            variants.append({"variant": f"{entry['recipe']} + fine-tune, plan", "recipe": entry["recipe"],
                             "kind": "fine-tuned", "compile_recipe": replay_filters_recipe(), "plan": entry["plan_path"],
                             "checkpoint": entry["path"], "folder": f"finetuned-{entry['recipe']}-plan",
                             "finetune": facts})
    for name in recipes:
        if name != "none":
            kind = "detect" if name in _DETECT_NAMES else "one-shot"
            variants.append({"variant": name, "recipe": name, "kind": kind, "compile_recipe": name,
                             "checkpoint": checkpoint, "folder": name})
    return variants


def run_demo(out_dir: str | Path = "sparsecc-demo", model_name: str | None = None,
             recipes: list[str] | None = None, runs: int = 20, warmup: int = 5, threads: int = 2,
             finetuned: bool = True, force: bool = False) -> dict[str, Any]:
    """Compile, verify, score and time a bundled trained model, fine-tuned and one-shot.

    Args:
        out_dir: Where to write. Defaults to "sparsecc-demo".
        model_name: A zoo model with a trained checkpoint. Defaults to "resnet18-digits"
            (or the first trained model if that one is absent).
        recipes: One-shot recipe names. Defaults to every built-in recipe ("none", the dense
            reference, is always included).
        runs: Timed interleaved rounds. Defaults to 20.
        warmup: Untimed rounds first. Defaults to 5.
        threads: ONNX Runtime intra-op threads. Defaults to 2.
        finetuned: Include the bundled fine-tuned checkpoints of the model. Defaults to True.
        force: Write into a folder that is not empty (the outputs of an earlier demo there are replaced,
            its variant folders not made again removed). Defaults to False.

    The folder is written as every command writes (:mod:`sparsecc.outputs`): all of it, or nothing.
    """
    from sparsecc import zoo
    from sparsecc.outputs import OutputFolder
    from sparsecc.recipe import builtin_recipes

    trained = [e.name for e in zoo.list_models() if e.checkpoint]
    model_name = model_name or (DEFAULT_MODEL if DEFAULT_MODEL in trained else trained[0])
    checkpoint = zoo.checkpoint_path(model_name)
    entry = zoo.get_entry(model_name)
    # checkpoints take any batch; compile and verify at the entry's own (batch 1) shape
    shapes = {spec.name: tuple(spec.shape) for spec in entry.inputs}
    not_run: list[dict[str, str]] = []
    if recipes:
        recipe_names = list(recipes)
    else:
        recipe_names, not_run = _recipes_for(checkpoint, shapes, builtin_recipes())
    if "none" not in recipe_names:
        recipe_names.insert(0, "none")
    variants = _variants(model_name, recipe_names, checkpoint)
    if not finetuned:
        variants = [v for v in variants if v["kind"] != "fine-tuned"]
    with OutputFolder(out_dir, "demo", inputs=[checkpoint], force=force) as folder:
        summary = _run_variants(folder.staging, model_name, checkpoint, shapes, variants, not_run, runs, warmup,
                                threads)
        folder.commit()
    return summary


def _run_variants(out: Path, model_name: str, checkpoint: Path, shapes: dict, variants: list[dict[str, Any]],
                  not_run: list[dict[str, str]], runs: int, warmup: int, threads: int) -> dict[str, Any]:
    """Compile, score and time every variant into ``out`` (the demo's staging folder); the reports."""
    from sparsecc import zoo
    from sparsecc.backends.ort import OrtBackend
    from sparsecc.environment import environment
    from sparsecc.measure import MeasureSettings, measure
    from sparsecc.measure.readout import readout
    from sparsecc.outputs import final_path
    from sparsecc.verify import input_specs, random_feeds

    entry = zoo.get_entry(model_name)
    inputs, labels = zoo.load_eval_data(model_name)
    classes = int(entry.output_shape[-1])
    chance = 1.0 / classes
    rows: list[dict[str, Any]] = []
    backend = OrtBackend(threads=threads, allow_spinning=False)  # many sessions interleaved: no spinning
    sessions, feeds = {}, {}
    for variant in variants:
        label = variant["variant"]
        recipe = variant["compile_recipe"]
        recipe_name = recipe if isinstance(recipe, str) else recipe.name
        progress(f"compiling {model_name} ({variant['kind']}: {label}) with recipe '{recipe_name}'")
        row: dict[str, Any] = {key: value for key, value in variant.items() if key not in ("checkpoint", "plan")}
        row.update(compile_recipe=recipe_name, input=str(variant["checkpoint"]))
        if variant.get("plan"):
            row["plan"] = str(variant["plan"])
        try:
            result = _compile(variant["checkpoint"], recipe, out / variant["folder"], shapes, variant.get("plan"))
        except SparseccError as err:
            row.update(status="failed", error=err.format())
            rows.append(row)
            continue
        report = result.report
        session = backend.load(result.model_path)
        top1 = accuracy(session, inputs, labels)
        row.update(status="ok", model=str(final_path(result.model_path)), report=f"{variant['folder']}/report.md",
                   macs=report["summary"]["macs_after"], params=report["summary"]["params_after"],
                   verified_against=report["verification"]["against"],
                   worst_relative_error=report["verification"]["exact"]["worst_relative_error"],
                   skipped_layers=len(report["skipped"]), top1=round(top1, 4),
                   correct=int(round(top1 * len(labels))), at_chance=bool(top1 < chance + CHANCE_MARGIN))
        sessions[label] = session
        feeds[label] = random_feeds(input_specs(result.model), seed=0)[0]
        rows.append(row)

    dense = next((r for r in rows if r["kind"] == "dense" and r["status"] == "ok"), None)
    if dense is not None:
        for row in rows:
            if row["status"] == "ok":
                # ideal speedup against the dense model (a fine-tuned variant's own compile report
                # compares with its own, already pruned, input)
                row["ideal"] = round(dense["macs"] / row["macs"], 4) if row["macs"] else None
                row["dense_top1"] = dense["top1"]
    load = None
    if sessions:
        progress(f"timing {len(sessions)} variants paired and interleaved ({runs} rounds)")
        base_label = dense["variant"] if dense is not None else next(iter(sessions))
        runners = {label: (lambda s=session, f=feeds[label]: s.run(f)) for label, session in sessions.items()}
        measured = measure(runners, base_label, None, threads, spinning=False,
                           settings=MeasureSettings.fixed(runs, warmup))
        load = measured.load.to_dict()
        for row in rows:
            if row["variant"] in measured.wall_ms:
                times = np.asarray(measured.wall_ms[row["variant"]])
                q25, q75 = np.percentile(times, [25, 75])
                row.update(median_ms=round(float(np.median(times)), 4), min_ms=round(float(times.min()), 4),
                           q25_ms=round(float(q25), 4), q75_ms=round(float(q75), 4),
                           cpu_median_ms=round(float(np.median(measured.cpu_ms[row["variant"]])), 4))
            if row["variant"] in measured.evidence:
                figures = readout(measured.evidence[row["variant"]], row.get("ideal"))
                row.update(speedup=round(figures["speedup"], 3), speedup_ci=figures["speedup_ci"],
                           cpu_speedup=round(figures["cpu_speedup"], 3), cpu_speedup_ci=figures["cpu_speedup_ci"],
                           timing_notes=[n for n in figures["notes"] if not n.startswith("The machine")])
            elif row["variant"] == base_label and row["variant"] in measured.wall_ms:
                row.update(speedup=1.0, speedup_ci=[1.0, 1.0], cpu_speedup=1.0, cpu_speedup_ci=[1.0, 1.0],
                           timing_notes=["the baseline every speedup is measured against"])
    summary = {
        "model": model_name, "checkpoint": str(checkpoint), "eval_samples": int(len(labels)),
        "classes": classes, "chance_top1": round(chance, 4),
        "baseline_accuracy": dense["top1"] if dense else None,
        "timing": {"backend": backend.describe(), "runs": runs, "warmup": warmup,
                   "clock": "host wall clock and process CPU time per session.run, all variants interleaved in one "
                            "process (spinning off)",
                   "speedup": "median over rounds of (dense, recipe none) / (variant), wall clock, with its 90% "
                              "bootstrap interval; CPU-time speedup the same by CPU time",
                   "spread": "q25-q75 of the timed runs", "load": load,
                   "noise": _noise_statement(load, rows, threads)},
        "rows": rows, "not_run": not_run, "environment": environment(),
    }
    summary["plot"] = _plot(summary, out / "tradeoff.png")
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(render_demo_markdown(summary))
    return summary


def _noise_statement(load: dict[str, Any] | None, rows: list[dict[str, Any]], threads: int) -> str:
    """How far to trust the speed column: the load, and the variants whose figure is noise."""
    from sparsecc.measure import too_busy
    from sparsecc.measure.readout import SAME_WORK_TOLERANCE, same_work

    if load is None:
        return "nothing was timed"
    level = load["level"]
    words = [f"Load average {load['before'][0]:.2f} -> {load['after'][0]:.2f} on {load['cores']} cores ({level}), "
             f"{threads} thread{'s' if threads != 1 else ''}."]
    busy = too_busy(threads, load["per_core"])
    if busy:
        words.append(f"The machine was too busy to trust any speed figure below ({busy}): run the demo again on a "
                     "quieter machine" + (" or with --threads 1." if threads != 1 else "."))
    elif level != "quiet":
        words.append("The machine was loaded: wall-clock speedups include waiting for a core; the CPU-time "
                     "speedups (work done) are the figures to trust.")
    timed = [r for r in rows if r.get("speedup_ci") and r["kind"] != "dense"]
    same = [r for r in timed if same_work(r.get("ideal"))]
    if same:
        words.append(f"Same work as dense (ideal within {SAME_WORK_TOLERANCE:.0%} of 1x), so any speed figure away "
                     f"from 1 is noise: {', '.join(r['variant'] for r in same)}.")
        words.extend(sentence for r in same for sentence in _same_work_findings(r))
    measures = (("wall clock", "wall-clock", "speedup_ci"), ("CPU time", "CPU-time", "cpu_speedup_ci"))
    for measure, adjective, key in measures:
        level_with = [r["variant"] for r in timed if _includes_one(r.get(key))]
        if level_with:
            words.append(f"No measurable difference from dense by {measure} (the 90% {adjective} interval includes "
                         f"1): {', '.join(level_with)}.")
    return " ".join(words)


def _includes_one(interval: list[float] | None) -> bool:
    return interval is not None and interval[0] <= 1.0 <= interval[1]


def _same_work_findings(row: dict[str, Any]) -> list[str]:
    """What a variant doing dense's work measured away from 1, named as noise; a CPU-time gap as disturbance."""
    from sparsecc.measure.readout import SAME_WORK_TOLERANCE

    # the work differs from dense's by under the tolerance, so a figure further from 1 than that is not the work
    away = [(measure, key) for measure, key in (("wall clock", "speedup"), ("CPU time", "cpu_speedup"))
            if row.get(key) is not None and row.get(key + "_ci") and abs(row[key] - 1.0) >= SAME_WORK_TOLERANCE]
    if not away:
        return []
    figures = " and ".join(f"{measure} {_figure(row, key)}" for measure, key in away)
    findings = [f"{row['variant']} measured {figures}: noise, not a speedup."]
    if ("CPU time", "cpu_speedup") in away and not _includes_one(row["cpu_speedup_ci"]):
        findings.append(f"The CPU-time interval of {row['variant']} excludes 1 although the work is the same: a sign "
                        "the measurement was disturbed (other jobs, CPU frequency changes); run the demo again on a "
                        "quieter machine.")
    return findings


def _figure(row: dict[str, Any], key: str) -> str:
    low, high = row[key + "_ci"]
    return f"{row[key]:.2f}x [{low:.2f}, {high:.2f}]"


# passes that make a graph for TensorRT: its plugin nodes do not run on ONNX Runtime, where the demo times
TENSORRT_PASSES = ("lower-tensorrt", "to-fp16")


def _recipes_for(checkpoint: Path, shapes: dict, recipes: dict) -> tuple[list[str], list[dict[str, str]]]:
    """The built-in recipes the demo runs on this model, and those it leaves out with the reason.

    Left out: recipes that compile for TensorRT (the demo runs ONNX Runtime), and DEPrune's recipes on a
    model without depthwise convolutions (they prune depthwise-separable blocks only).
    """
    from sparsecc.layers import find_weight_layers
    from sparsecc.model import load_model

    kinds = {layer.kind for layer in find_weight_layers(load_model(checkpoint, shapes))[0]}
    chosen, left_out = [], []
    for name, recipe in recipes.items():
        passes = {pass_name for pass_name, _ in recipe.passes}
        if passes & set(TENSORRT_PASSES):
            left_out.append({"recipe": name, "why": "compiles for TensorRT (plugin nodes, FP16): build it with "
                                                    "`sparsecc build` on a machine with TensorRT and a GPU"})
        elif any(p.startswith("deprune") or p == "plan-deprune" for p in passes) and "depthwise" not in kinds:
            left_out.append({"recipe": name, "why": "DEPrune prunes depthwise-separable blocks; this model has "
                                                    "no depthwise convolution (try `--model mobilenetv2-digits`)"})
        else:
            chosen.append(name)
    return chosen, left_out


def _plot(summary: dict[str, Any], path: Path) -> dict[str, Any]:
    """Accuracy vs median latency, one point per variant; skipped with a note without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"file": None, "note": "matplotlib is not installed: no tradeoff.png "
                                      "(pip install 'sparsecc[plots]')"}
    from sparsecc.plot_labels import annotate_points

    rows = [r for r in summary["rows"] if r["status"] == "ok" and "median_ms" in r]
    styles = {"dense": ("black", "s"), "fine-tuned": ("tab:green", "o"), "one-shot": ("tab:gray", "x"),
              "detect": ("tab:blue", "+")}
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for kind, (color, marker) in styles.items():
        chosen = [r for r in rows if r["kind"] == kind]
        if not chosen:
            continue
        axes.errorbar([r["median_ms"] for r in chosen], [100 * r["top1"] for r in chosen],
                      xerr=[[r["median_ms"] - r["q25_ms"] for r in chosen], [r["q75_ms"] - r["median_ms"] for r in chosen]],
                      fmt=marker, color=color, label=kind, capsize=3)
    axes.axhline(100 * summary["chance_top1"], color="tab:red", linestyle=":", label="chance")
    axes.set_xlabel("median latency, ms (batch 1, ONNX Runtime CPU; bars: q25-q75)")
    axes.set_ylabel(f"top-1, % ({summary['eval_samples']} held-out images)")
    axes.set_title(f"sparsecc demo: {summary['model']}, accuracy vs latency")
    axes.legend(fontsize=8)
    figure.tight_layout()
    plotted = [r for r in rows if r["kind"] in styles]
    # variants close in latency and accuracy would print their names over each other at one offset
    annotate_points(axes, [r["median_ms"] for r in plotted], [100 * r["top1"] for r in plotted],
                    [r["variant"] for r in plotted], fontsize=7)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return {"file": path.name, "note": None}


LEGEND = [
    ("variant", "what was compiled: `RECIPE + fine-tune` is a bundled checkpoint pruned by RECIPE and "
                "fine-tuned by `sparsecc finetune`, compiled in zero-detect mode (recipe `zeros`); "
                "`, plan` compiles it with the bundled plan instead, removing the filters physically; a bare "
                "recipe name is that recipe applied one-shot to the trained dense model"),
    ("kind", "dense; fine-tuned; one-shot (pruned with no training after: what pruning alone costs); detect "
             "(zero-detect mode on the dense model: nothing to find, nothing pruned)"),
    ("top-1", "accuracy on the held-out split (correct/images); **at chance** = within 5 points of 1/classes"),
    ("vs dense", "top-1 minus the dense model's, in points"),
    ("MACs", "multiply-accumulates of the compiled model at batch 1"),
    ("ideal", "MACs of the dense model / MACs of this one (the speedup if time followed MACs)"),
    ("speedup [90% CI]", "dense / this variant, wall clock, paired run by run (median of the pair ratios) with its "
                         "90% bootstrap interval; an interval that includes 1 is no measurable difference"),
    ("CPU speedup", "the same by CPU time of the process (work done; steadier than wall clock on a busy machine)"),
    ("median ms [q25-q75]", "median latency per batch-1 run and the spread of the timed runs"),
    ("verified", "worst relative error of the compiled model against the masked model it must equal"),
    ("left dense", "layers a pass left as they were (reasons in the linked report)"),
]


def _with_interval(row: dict[str, Any], key: str) -> str:
    if key not in row:
        return "?"
    low, high = row.get(key + "_ci", [None, None])
    return f"{row[key]}x" if low is None else f"{row[key]:.2f}x [{low:.2f}, {high:.2f}]"


def render_demo_markdown(summary: dict[str, Any]) -> str:
    from sparsecc.tables import human, markdown_table

    n = summary["eval_samples"]
    rows = []
    for r in summary["rows"]:
        if r["status"] != "ok":
            rows.append([r["variant"], r["kind"], "failed", "", "", "", "", "", "", r["error"].splitlines()[0], ""])
            continue
        top1 = f"{100 * r['top1']:.2f}% ({r['correct']}/{n})" + (" **at chance**" if r["at_chance"] else "")
        delta = f"{100 * (r['top1'] - r['dense_top1']):+.2f}" if r.get("dense_top1") is not None else ""
        timing = f"{r.get('median_ms', '')} [{r.get('q25_ms', '')}-{r.get('q75_ms', '')}]"
        rows.append([f"[{r['variant']}]({r['report']})", r["kind"], top1, delta, human(r["macs"]),
                     f"{r.get('ideal', '')}x", _with_interval(r, "speedup"), _with_interval(r, "cpu_speedup"), timing,
                     f"{r['worst_relative_error']:.2g}", r["skipped_layers"]])
    timing = summary["timing"]
    env = summary["environment"]
    best = [r for r in summary["rows"] if r["status"] == "ok" and r["kind"] == "fine-tuned"]
    headline = []
    for r in best:
        headline.append(f"- **{r['variant']}**: top-1 {100 * r['top1']:.2f}% vs dense "
                        f"{100 * r['dense_top1']:.2f}% ({n} images), {_with_interval(r, 'speedup')} measured "
                        f"speedup, {_with_interval(r, 'cpu_speedup')} by CPU time ({r.get('ideal', '?')}x ideal).")
    plot = summary.get("plot") or {}
    return "\n".join([
        f"# sparsecc demo: `{summary['model']}`", "",
        f"Trained checkpoint `{summary['checkpoint']}`, scored on {n} held-out images "
        f"({summary['classes']} classes: chance is {100 * summary['chance_top1']:.0f}%).", "",
        *(["Pruned and fine-tuned by sparsecc, compiled in zero-detect mode (`, plan`: with the plan made while "
           "fine-tuning, which removes the filters physically):", "", *headline, ""] if headline else
          ["No fine-tuned checkpoint is bundled for this model: only one-shot rows below.", ""]),
        "One-shot rows prune the trained model with no training after; their accuracy is what pruning alone "
        "costs, and it often falls to chance on a model this small. Fine-tuning is what brings it back.", "",
        markdown_table(rows, ["variant", "kind", "top-1", "vs dense", "MACs", "ideal", "speedup [90% CI]",
                              "CPU speedup", "median ms [q25-q75]", "verified", "left dense"]),
        "",
        f"**Timing noise**: {timing.get('noise', '')}",
        "",
        *([f"![accuracy vs latency]({plot['file']})", ""] if plot.get("file") else [f"_{plot.get('note')}_", ""]),
        *(["Recipes not run on this model:", "", *[f"- `{r['recipe']}`: {r['why']}" for r in summary["not_run"]],
           ""] if summary.get("not_run") else []),
        "Columns:", "", *[f"- **{name}**: {text}" for name, text in LEGEND], "",
        f"Timing: {timing['clock']}; {timing['runs']} rounds after {timing['warmup']} warm-up; "
        f"speedup = {timing['speedup']}; spread = {timing['spread']}; ONNX Runtime "
        f"{timing['backend']['onnxruntime']}, {timing['backend']['intra_op_num_threads']} intra-op threads.",
        f"Machine: {env.get('cpu')} ({env.get('cpu_count')} cores).", ""])
