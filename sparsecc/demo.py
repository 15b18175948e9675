"""``sparsecc demo``: the main job on the embedded default (ONNX Runtime, CPU).

Takes a bundled trained model, compiles it with every built-in recipe,
verifies each result, measures accuracy on the bundled validation split,
times every variant interleaved in one process against the canonical model,
and writes ``report.json`` and ``report.md``. Needs no torch and no GPU.

Pruning recipes are one-shot here (no fine-tuning), so their accuracy drop is
what pruning alone costs; the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sparsecc.errors import SparseccError
from sparsecc.log import progress

DEFAULT_MODEL = "resnet18-digits"


def accuracy(session, inputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of a session on (inputs, labels), in batches the model accepts."""
    spec = session.inputs[0]
    batch = spec.shape[0] if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else 64
    correct = 0
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        if len(chunk) < batch and isinstance(spec.shape[0], int) and spec.shape[0] > 0:
            chunk = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], chunk.dtype)])
        logits = next(iter(session.run({spec.name: chunk}).values()))
        predicted = np.argmax(logits[: len(inputs[start:start + batch])], axis=-1)
        correct += int(np.sum(predicted == labels[start:start + batch]))
    return correct / len(inputs)


def run_demo(out_dir: str | Path = "sparsecc-demo", model_name: str | None = None,
             recipes: list[str] | None = None, runs: int = 20, warmup: int = 5, threads: int = 2) -> dict[str, Any]:
    """Compile, verify, score and time a bundled trained model with each recipe.

    Args:
        out_dir: Where to write. Defaults to "sparsecc-demo".
        model_name: A zoo model with a trained checkpoint. Defaults to "resnet18-digits"
            (or the first trained model if that one is absent).
        recipes: Recipe names. Defaults to every built-in recipe.
        runs: Timed interleaved rounds. Defaults to 20.
        warmup: Untimed rounds first. Defaults to 5.
        threads: ONNX Runtime intra-op threads. Defaults to 2.
    """
    from sparsecc import zoo
    from sparsecc.backends.ort import OrtBackend
    from sparsecc.bench import time_interleaved
    from sparsecc.compiler import compile_model, prepare_output_dir
    from sparsecc.environment import environment
    from sparsecc.recipe import builtin_recipes
    from sparsecc.verify import input_specs, random_feeds

    trained = [e.name for e in zoo.list_models() if e.checkpoint]
    model_name = model_name or (DEFAULT_MODEL if DEFAULT_MODEL in trained else trained[0])
    checkpoint = zoo.checkpoint_path(model_name)
    # checkpoints take any batch; compile and verify at the entry's own (batch 1) shape
    shapes = {spec.name: tuple(spec.shape) for spec in zoo.get_entry(model_name).inputs}
    inputs, labels = zoo.load_eval_data(model_name)
    recipe_names = recipes or list(builtin_recipes())
    out = Path(out_dir)
    prepare_output_dir(out, checkpoint)

    rows: list[dict[str, Any]] = []
    backend = OrtBackend(threads=threads, allow_spinning=False)  # many sessions interleaved: no spinning
    sessions, feeds = {}, {}
    for name in recipe_names:
        progress(f"compiling {model_name} with recipe '{name}'")
        row: dict[str, Any] = {"recipe": name}
        try:
            result = compile_model(checkpoint, name, out / name, shapes=shapes, force=True)
        except SparseccError as err:
            row.update(status="failed", error=err.format())
            rows.append(row)
            continue
        report = result.report
        session = backend.load(result.model_path)
        row.update(status="ok", model=str(result.model_path), macs=report["summary"]["macs_after"],
                   params=report["summary"]["params_after"], ideal=report["summary"]["ideal_speedup"],
                   verified_against=report["verification"]["against"],
                   worst_relative_error=report["verification"]["exact"]["worst_relative_error"],
                   skipped_layers=len(report["skipped"]),
                   accuracy=round(accuracy(session, inputs, labels), 4))
        sessions[name] = session
        feeds[name] = random_feeds(input_specs(result.model), seed=0)[0]
        rows.append(row)

    if sessions:
        progress(f"timing {len(sessions)} variants interleaved ({runs} rounds)")
        timings = time_interleaved(sessions, feeds, warmup, runs)
        baseline = timings.get("none") or next(iter(timings.values()))
        for row in rows:
            if row["recipe"] in timings:
                timing = timings[row["recipe"]]
                row.update(median_ms=round(timing.median_ms, 4), min_ms=round(timing.min_ms, 4),
                           speedup=round(baseline.median_ms / timing.median_ms, 3))
    reference = next((r for r in rows if r["recipe"] == "none" and r["status"] == "ok"), None)
    summary = {
        "model": model_name, "checkpoint": str(checkpoint), "eval_samples": int(len(labels)),
        "baseline_accuracy": reference["accuracy"] if reference else None,
        "timing": {"backend": backend.describe(), "runs": runs, "warmup": warmup,
                   "clock": "host wall-clock per session.run, all variants interleaved in one process",
                   "speedup": "median(recipe none) / median(recipe)"},
        "rows": rows, "environment": environment(),
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(render_demo_markdown(summary))
    return summary


def render_demo_markdown(summary: dict[str, Any]) -> str:
    from sparsecc.inspect import human
    from sparsecc.report import markdown_table

    rows = []
    for r in summary["rows"]:
        if r["status"] != "ok":
            rows.append([r["recipe"], "failed", "", "", "", "", "", r["error"].splitlines()[0]])
            continue
        rows.append([r["recipe"], human(r["macs"]), f"{r['ideal']}x", f"{r.get('speedup', '')}x",
                     f"{r.get('median_ms', '')}", f"{100 * r['accuracy']:.2f}%",
                     f"{r['worst_relative_error']:.2g} vs {r['verified_against']}", r["skipped_layers"]])
    timing = summary["timing"]
    env = summary["environment"]
    return "\n".join([
        f"# sparsecc demo: `{summary['model']}`", "",
        f"Trained checkpoint `{summary['checkpoint']}`, scored on {summary['eval_samples']} held-out samples.",
        "Pruning recipes are one-shot (no fine-tuning): their accuracy is what pruning alone costs.", "",
        markdown_table(rows, ["recipe", "MACs", "ideal", "speedup", "median ms", "accuracy",
                              "verification (worst rel. error)", "layers left dense"]),
        "",
        f"Timing: {timing['clock']}; {timing['runs']} rounds after {timing['warmup']} warm-up; "
        f"speedup = {timing['speedup']}; ONNX Runtime {timing['backend']['onnxruntime']}, "
        f"{timing['backend']['intra_op_num_threads']} intra-op threads. Ideal = MAC ratio.",
        f"Machine: {env.get('cpu')} ({env.get('cpu_count')} cores).", ""])
