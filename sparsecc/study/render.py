"""The study's results as text, Markdown and a plot (latency relative to dense vs share kept)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from sparsecc.study.analysis import break_even
from sparsecc.study.config import PATTERNS, Measurement, StudyResult
from sparsecc.tables import markdown_table, text_table


def _columns(measurements: list[Measurement]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for m in measurements:
        if m.pattern != "dense":
            seen[(m.device, f"{m.pattern}/{m.library}")] = None
    return list(seen)


def _rows(result: StudyResult) -> tuple[list[str], list[list[str]]]:
    columns = _columns(result.measurements)
    cells: dict[tuple[str, str, float], dict[str, Measurement]] = {}
    for m in result.measurements:
        cells.setdefault((m.model, m.layer, m.keep), {})[f"{m.device}:{m.pattern}/{m.library}"] = m
    multi_device = len({d for d, _ in columns}) > 1
    headers = ["model", "layer", "M x K x N", "kept", "dense ms med/min"]
    headers += [f"{label} [{d}]" if multi_device else label for d, label in columns]
    has_ort = any(label.endswith("/ort") for _, label in columns)
    if has_ort:
        headers.append("ORT dense ms med/min")
    rows = []
    for (model, layer, keep), found in cells.items():
        dense = found["cpu:dense/torch"]
        row = [model, layer, f"{dense.m}x{dense.k}x{dense.n}", f"{keep:.0%}",
               f"{dense.median_ms:.3f}/{dense.min_ms:.3f}"]
        row += [f"{found[f'{d}:{label}'].ratio:.2f}" if f"{d}:{label}" in found else "-" for d, label in columns]
        if has_ort:
            ort = found.get("cpu:dense/ort")
            row.append(f"{ort.median_ms:.3f}/{ort.min_ms:.3f}" if ort else "-")
        rows.append(row)
    return headers, rows


def _break_even_rows(result: StudyResult) -> tuple[list[str], list[list[str]]]:
    data = break_even(result.measurements)
    shapes = [f"{s['model']} {s['layer']}" for s in result.shapes]
    headers = ["variant", "overall"] + shapes
    rows = []
    for device, labels in data.items():
        for label, entry in labels.items():
            name = label if len(data) == 1 else f"{label} [{device}]"
            rows.append([name, _share(entry["overall"])] + [_share(entry["per_shape"].get(s)) for s in shapes])
    return headers, rows


def _share(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    if entry["pruned"] is None:
        return "never"
    prefix = "<=" if entry["how"].startswith("faster already") else ""
    return f"{prefix}{entry['pruned']:.0%}"


def _legend(result: StudyResult) -> str:
    env, cfg = result.environment, result.config
    lines = [
        "Cells: latency relative to dense (median of the variant / median of dense over the same interleaved "
        "rounds; < 1 is faster). */ort columns are relative to the dense model on ONNX Runtime, the others to "
        "torch.mm.",
        f"Timing: {result.clock['cpu']}. Threads: torch {env['torch_threads']} (OMP_WAIT_POLICY "
        f"{env['omp_wait_policy']}), ONNX Runtime {env['ort_threads']} (session.force_spinning_stop=1).",
        f"Patterns: element-wise (global magnitude), vector-wise (v={cfg['vector']} along K, equal count kept "
        f"per vector), block-wise ({cfg['block'][0]}x{cfg['block'][1]} blocks by L1), group-wise "
        f"(rows of W[K, N] by {cfg['criterion']}). Sparse libraries: {', '.join(_libraries(result))}.",
        f"Environment: {env['cpu']} ({env['cpu_count']} CPUs), torch {env['torch']}, onnxruntime "
        f"{env.get('onnxruntime')}, numpy {env.get('numpy')}, scipy {env['scipy']}; load average (1/5/15 min) "
        f"{env['load_average_start']} at the start, {env.get('load_average_end')} at the end.",
        "GPU: " + (result.gpu.get("device", "") if result.gpu.get("available") else result.gpu.get("reason", "")),
        f"Settings: shape set '{cfg['shapes']}', kept {', '.join(f'{k:.0%}' for k in cfg['keeps'])}, "
        f"group-wise on ONNX Runtime with lowering '{cfg['ort_lowering']}', seed {cfg['seed']} (random weights "
        "and inputs: latency does not depend on the values).",
    ]
    return "\n".join(lines)


def _libraries(result: StudyResult) -> list[str]:
    return sorted({m.library for m in result.measurements if m.pattern in PATTERNS[:3]})


def format_table(result: StudyResult) -> str:
    """The latency table, the break-even table and the settings, as plain text."""
    headers, rows = _rows(result)
    be_headers, be_rows = _break_even_rows(result)
    text = [text_table(rows, headers, rule=False), "", _legend(result), "",
            "Break-even: smallest share pruned at which the variant beats dense ('never' = not up to the "
            "most-pruned share measured; '<=' = already faster at the least-pruned share measured):",
            text_table(be_rows, be_headers, rule=False)]
    if result.skipped:
        text += ["", "Skipped:"] + [f"  {s['model']} {s['layer']} {s['pattern']} at {s['keep']:.0%}: {s['reason']}"
                                    for s in result.skipped]
    return "\n".join(text)


def render_markdown(result: StudyResult, plot: str | None = None) -> str:
    """A Markdown report: latency table, break-even table, every median/min, settings and environment."""
    headers, rows = _rows(result)
    be_headers, be_rows = _break_even_rows(result)
    detail = [[m.model, m.layer, f"{m.keep:.0%}", f"{m.pattern}/{m.library}", m.device, f"{m.median_ms:.3f}",
               f"{m.min_ms:.3f}", f"{m.ratio:.3f}", f"{m.ideal:.3f}", m.k_kept if m.k_kept is not None else "",
               m.note]
              for m in result.measurements]
    parts = ["# Pruning-pattern characterisation (sparsecc characterize)", "",
             "Reproduces the study of Liu et al., *Performance characterization and optimization of pruning "
             "patterns for sparse DNN inference* (sections 3 and 5, Figs 7-10) on this machine.", "",
             "## Latency relative to dense", "", markdown_table(rows, headers), "",
             _legend(result).replace("\n", "\n\n"),
             "", "## Break-even share pruned", "", markdown_table(be_rows, be_headers), ""]
    if plot:
        parts += [f"![latency relative to dense]({plot})", ""]
    parts += ["## Every measurement", "",
              markdown_table(detail, ["model", "layer", "kept", "variant", "device", "median ms", "min ms", "ratio",
                                      "ideal", "K'", "note"]), ""]
    if result.skipped:
        parts += ["## Skipped", ""] + [f"- {s['model']} {s['layer']} {s['pattern']} at {s['keep']:.0%}: "
                                       f"{s['reason']}" for s in result.skipped] + [""]
    return "\n".join(parts)


def plot_study(result: StudyResult, path: str) -> None:
    """Latency relative to dense vs % kept, one line per variant, one panel per model (like Figs 7-10).

    Each point is the geometric mean of the ratios of the model's layers at that share.
    """
    import io
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsecc.model import write_bytes_atomic

    models = list(dict.fromkeys(s["model"] for s in result.shapes))
    devices = list(dict.fromkeys(m.device for m in result.measurements))
    fig, axes = plt.subplots(len(devices), len(models), figsize=(max(4.2 * len(models), 9.0), 3.8 * len(devices) + 1.2),
                             squeeze=False, sharey=True)
    for row, device in enumerate(devices):
        for col, model in enumerate(models):
            ax = axes[row][col]
            series: dict[str, dict[float, list[float]]] = {}
            for m in result.measurements:
                if m.model == model and m.device == device and m.pattern != "dense":
                    series.setdefault(f"{m.pattern}/{m.library}", {}).setdefault(m.keep, []).append(m.ratio)
            for label, by_keep in series.items():
                keeps = sorted(by_keep, reverse=True)
                ratios = [math.exp(statistics.fmean(math.log(r) for r in by_keep[k])) for k in keeps]
                style = "-" if label.startswith("group-wise") else "--"
                ax.plot([100 * k for k in keeps], ratios, style, marker="o", label=label)
            keeps = sorted(result.config["keeps"], reverse=True)
            ax.plot([100 * k for k in keeps], keeps, ":", color="gray", label="ideal (MACs kept)")
            ax.axhline(1.0, color="black", linewidth=1, label="dense")
            ax.set_yscale("log")
            ax.set_xlim(100 * max(keeps) + 5, 100 * min(keeps) - 5)
            ax.set_title(f"{model} ({device})", fontsize=10)
            ax.set_xlabel("parameters kept (%)")
            if col == 0:
                ax.set_ylabel("latency / dense (log)")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    env = result.environment
    fig.suptitle(f"Pruning patterns vs dense GEMM: {env['cpu']}, {env['torch_threads']} threads", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    write_bytes_atomic(Path(path), buffer.getvalue())
