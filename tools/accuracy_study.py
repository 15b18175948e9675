"""Accuracy beside speed, per pruning family: before and after fine-tuning, MACs and ORT latency.

Families (each variant pruned by sparsecc's own planning passes through ``sparsecc.finetuning``,
fine-tuned with the masks kept, exported, compiled, scored on ONNX Runtime):

- group-wise: keep 75%, 50%, 25% of the im2col rows (``groupwise-*``), compiled in zero-detect mode;
- filters: hybrid metric 1 and 2 vs input L1 and output L1, at several shares of filters removed
  (global ranking over coupled channel groups), compiled with the plan (filters removed physically);
- DEPrune (depthwise-separable models): DCP, DCP + BWT (``-B``), DCP + BWT + HSR (``-BH``) at the
  same depthwise and PW2 ratios (``plan-deprune``), fine-tuned, compiled in detect mode
  (``deprune-zeros``: zero PW2 filters, dead depthwise channels, depthwise lowering);
- 2:4: without permutation (fine-tuned, compiled in zero-detect mode; ONNX Runtime runs 2:4 dense)
  and with channel permutation (``24-only``; one-shot only: the permutation is a graph rewrite the
  PyTorch side does not replay, so it is not fine-tuned).

The dense reference is the zoo checkpoint, first fine-tuned on the data set when it is not the one the
checkpoint was trained on (``--dense-epochs``). Latencies are medians of interleaved batch-1 runs in one
process (``sparsecc.bench.time_interleaved``), speedup against the dense compiled model.

Run (in the background, it takes a while): ``python tools/accuracy_study.py --model vgg16-digits
--data mnist5k --epochs 2 --out docs/accuracy``. Writes ``study.json``, ``study.md`` and one
``<family>.png`` per family (matplotlib) into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FILTER_METRICS = ("hybrid1", "hybrid2", "input-l1", "output-l1")


def _recipe(name: str, passes: list):
    from sparsecc.recipe import parse_recipe

    return parse_recipe(json.dumps({"name": name, "passes": passes}), f"{name}.json")


DEPRUNE_METHODS = (("deprune", "dcp", "DCP"), ("deprune-b", "bwt", "DCP + BWT"),
                   ("deprune-bh", "bwt-hsr", "DCP + BWT + HSR"))


def variants(filter_ratios: list[float], dw_ratio: float = 0.8, pw_ratio: float = 0.5) -> list[dict]:
    found = []
    for label, method, what in DEPRUNE_METHODS:
        found.append({"family": "deprune", "label": label, "method": method,
                      "recipe": _recipe(label, [{"plan-deprune": {"method": method, "dw_ratio": dw_ratio,
                                                                  "pw_ratio": pw_ratio}}, "apply-plan"]),
                      "compile": "deprune-zeros",
                      "setting": f"{what}, {dw_ratio:.0%} of depthwise taps, {pw_ratio:.0%} of PW2 filters"})
    for keep in (0.75, 0.5, 0.25):
        found.append({"family": "group-wise", "label": f"groupwise-{int(keep * 100)}",
                      "recipe": f"groupwise-{int(keep * 100)}", "compile": "zeros", "setting": f"keep {keep:.0%}"})
    for ratio in filter_ratios:
        for metric in FILTER_METRICS:
            name = f"filter-{metric}-{int(ratio * 100)}"
            found.append({"family": "filters", "label": name, "metric": metric, "ratio": ratio,
                          "recipe": _recipe(name, [{"plan-filters": {"metric": metric, "ratio": ratio}}, "apply-plan"]),
                          "compile": "replay-filters", "setting": f"{ratio:.0%} filters removed"})
    found.append({"family": "2:4", "label": "2:4", "recipe": _recipe("2:4", ["plan-24", "apply-plan"]),
                  "compile": "zeros", "setting": "no permutation"})
    found.append({"family": "2:4", "label": "2:4 permuted (one-shot)", "recipe": None, "compile": "24-only",
                  "setting": "channel permutation, not fine-tuned"})
    return found


def torch_pruning_at(dense, example, target_ideal: float, tolerance: float = 0.03):
    """Torch-Pruning's global L1 channel pruning of ``dense`` at the MAC reduction ``target_ideal``.

    Bisects Torch-Pruning's pruning ratio until its own MAC count is within ``tolerance`` of
    the target (kept channels multiples of 8, the classifier left whole, as sparsecc does).
    Returns (pruned copy, ratio). Needs ``pip install torch-pruning``.
    """
    import torch
    import torch_pruning as tp

    base, _ = tp.utils.count_ops_and_params(dense, example)
    low, high, best = 0.0, 0.95, None
    for _ in range(12):
        ratio = (low + high) / 2
        model = copy.deepcopy(dense)
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, ignored_layers=[last], global_pruning=True,
                                           round_to=8)
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(model, example)
        ideal = base / macs
        if best is None or abs(ideal - target_ideal) < abs(best[2] - target_ideal):
            best = (model, ratio, ideal)
        if abs(ideal - target_ideal) <= tolerance * target_ideal:
            break
        low, high = (ratio, high) if ideal < target_ideal else (low, ratio)
    return best[0], best[1]


def main(argv: list[str] | None = None) -> int:
    import torch

    import sparsecc.finetuning as st
    from sparsecc import zoo
    from sparsecc.backends.ort import OrtBackend
    from sparsecc.bench import time_interleaved
    from sparsecc.compiler import compile_model
    from sparsecc.data import load_dataset
    from sparsecc.demo import replay_filters_recipe
    from sparsecc.evaluate import accuracy
    from sparsecc.plan import SparsityPlan
    from sparsecc.verify import input_specs, random_feeds

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16-digits")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per variant")
    parser.add_argument("--dense-epochs", type=int, default=3, help="epochs to adapt the dense model to --data")
    parser.add_argument("--filter-ratios", type=float, nargs="+", default=[0.4, 0.55, 0.7])
    parser.add_argument("--only", nargs="*",
                        help="families to run (group-wise, filters, 2:4, torch-pruning, deprune); all but deprune by "
                             "default; deprune needs a depthwise-separable model (mobilenetv2-digits)")
    parser.add_argument("--deprune-dw-ratio", type=float, default=0.8, help="share of depthwise taps pruned")
    parser.add_argument("--deprune-pw-ratio", type=float, default=0.5, help="share of PW2 filters removed")
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (AdamW, cosine)")
    parser.add_argument("--tp-match", nargs="*", default=["filter-hybrid2-40", "filter-hybrid2-70"],
                        help="sparsecc variants whose MAC reduction Torch-Pruning's baseline is matched to")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/accuracy"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)

    split = load_dataset(args.data)
    entry = zoo.get_entry(args.model)
    shapes = {spec.name: tuple(spec.shape) for spec in entry.inputs}
    example = torch.from_numpy(split.x_test[:1].copy())
    dense = zoo.build_model(args.model, pretrained=True)
    if args.data != "digits" and args.dense_epochs:
        say(f"adapting dense {args.model} to {args.data} ({args.dense_epochs} epochs)")
        dense = st.finetune(dense, split, plan=SparsityPlan(), epochs=args.dense_epochs, lr=3e-3,
                            log=say).module
    work = Path(tempfile.mkdtemp(prefix="sparsecc-study-"))
    replay = replay_filters_recipe()  # the demo's: apply the saved plan, remove its filters
    backend = OrtBackend(threads=args.threads, allow_spinning=False)
    st.export_pruned_onnx(dense, work / "dense.onnx", example)
    compiled = compile_model(work / "dense.onnx", "none", work / "dense", shapes=shapes)
    sessions = {"dense": backend.load(compiled.model_path)}
    feeds = {"dense": random_feeds(input_specs(compiled.model), seed=0)[0]}
    dense_top1 = accuracy(sessions["dense"], split.x_test, split.y_test)
    rows = [{"family": "dense", "label": "dense", "setting": "", "top1_one_shot": None, "top1": dense_top1,
             "macs": compiled.report["summary"]["macs_after"]}]
    say(f"dense top-1 {dense_top1:.4f} on {len(split.y_test)} test images")

    for variant in variants(args.filter_ratios, args.deprune_dw_ratio, args.deprune_pw_ratio):
        if (args.only and variant["family"] not in args.only) or (variant["family"] == "deprune" and
                                                                   "deprune" not in (args.only or [])):
            continue  # DEPrune only on request: it plans nothing on a model without depthwise-separable blocks
        label = variant["label"]
        row = {k: v for k, v in variant.items() if k not in ("recipe",)}
        folder = work / label.replace(" ", "_").replace(":", "")
        try:
            if variant["recipe"] is None:  # one-shot on the ONNX side only
                result = compile_model(work / "dense.onnx", variant["compile"], folder, shapes=shapes)
                row["top1_one_shot"] = None
            else:
                say(f"{label}: fine-tuning {args.epochs} epochs")
                tuned = st.finetune(copy.deepcopy(dense), split, variant["recipe"], epochs=args.epochs, lr=args.lr,
                                    log=say)
                row["top1_one_shot"] = tuned.top1_before_finetune
                row["top1_one_shot_bn"] = tuned.top1_one_shot_bn
                row["pruned_share"] = round(st.pruned_share(tuned.masks), 4)
                path = st.export_pruned_onnx(tuned.module, folder.with_suffix(".onnx"), example, masks=tuned.masks)
                tuned.plan.save(folder.with_suffix(".plan.json"))
                if variant["compile"] == "replay-filters":
                    result = compile_model(path, replay, folder, shapes=shapes, plan=folder.with_suffix(".plan.json"))
                else:
                    result = compile_model(path, variant["compile"], folder, shapes=shapes)
                if variant["family"] == "deprune":
                    row["compiled"] = _deprune_found(result.report)
        except Exception as exc:  # noqa: BLE001 - a study row that fails is reported, the others go on
            row.update(error=f"{type(exc).__name__}: {exc}")
            rows.append(row)
            say(f"{label}: FAILED {row['error']}")
            continue
        session = backend.load(result.model_path)
        row["top1"] = accuracy(session, split.x_test, split.y_test)
        if variant["recipe"] is None:
            row["top1_one_shot"] = row["top1"]
            row["top1"] = None
        row["macs"] = result.report["summary"]["macs_after"]
        sessions[label] = session
        feeds[label] = random_feeds(input_specs(result.model), seed=0)[0]
        rows.append(row)
        say(f"{label}: one-shot {row['top1_one_shot']}, fine-tuned {row['top1']}, MACs {row['macs']}")

    if not args.only or "torch-pruning" in args.only:
        rows += torch_pruning_rows(args, dense, split, example, shapes, work, rows, sessions, feeds, backend, say)

    say(f"timing {len(sessions)} models interleaved, {args.runs} rounds")
    timings = time_interleaved(sessions, feeds, warmup=5, runs=args.runs)
    base = timings["dense"].median_ms
    for row in rows:
        if row["label"] in timings:
            times = np.asarray(timings[row["label"]].times_ms)
            row.update(median_ms=round(float(np.median(times)), 4),
                       q25_ms=round(float(np.percentile(times, 25)), 4),
                       q75_ms=round(float(np.percentile(times, 75)), 4),
                       speedup=round(base / float(np.median(times)), 3),
                       ideal=round(rows[0]["macs"] / row["macs"], 3))
    import os

    study = {"model": args.model, "data": args.data, "n": int(len(split.y_test)), "epochs": args.epochs,
             "lr": args.lr,
             "dense_epochs": args.dense_epochs if args.data != "digits" else 0, "threads": args.threads,
             "runs": args.runs, "load_average": list(os.getloadavg()), "seconds": round(time.perf_counter() - started),
             "torch": torch.__version__, "rows": rows}
    (args.out / "study.json").write_text(json.dumps(study, indent=2) + "\n")
    (args.out / "study.md").write_text(render(study))
    plots(study, args.out)
    say(f"wrote {args.out}")
    return 0


def _deprune_found(report: dict) -> str:
    """What detect mode found and kept, from the compile report's pass notes."""
    notes = {p["name"]: " ".join(p.get("notes") or []) for p in report.get("passes", [])}
    checked = "deprune-model-check" in notes  # it never puts removed work back: the compiled graph is kept
    return "; ".join(x for x in (notes.get("remove-filters", "").split(";")[0],
                                 notes.get("deprune-dead-channels", ""),
                                 "compiled graph kept" if checked else "") if x)


def torch_pruning_rows(args, dense, split, example, shapes, work, rows, sessions, feeds, backend, say) -> list:
    """The baseline a user would pick instead: Torch-Pruning at the MACs of sparsecc's variants."""
    import sparsecc.finetuning as st
    from sparsecc.compiler import compile_model
    from sparsecc.evaluate import accuracy
    from sparsecc.plan import SparsityPlan
    from sparsecc.verify import input_specs, random_feeds

    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        say("torch-pruning is not installed (pip install torch-pruning): no baseline rows")
        return []
    out = []
    dense_macs = rows[0]["macs"]
    for label in args.tp_match:
        target = next((r for r in rows if r["label"] == label and "macs" in r), None)
        if target is None:
            continue
        name = f"torch-pruning @ {label}"
        model, ratio = torch_pruning_at(dense, example, dense_macs / target["macs"])
        row = {"family": "torch-pruning", "label": name, "setting": f"global L1, ratio {ratio:.3f}, "
               f"MACs matched to {label}", "top1_one_shot": st.evaluate(model, split.x_test, split.y_test)}
        say(f"{name}: fine-tuning {args.epochs} epochs")
        tuned = st.finetune(model, split, plan=SparsityPlan(), epochs=args.epochs, lr=args.lr, log=say)
        path = st.export_pruned_onnx(tuned.module, work / f"tp-{label}.onnx", example)
        result = compile_model(path, "none", work / f"tp-{label}", shapes=shapes)
        session = backend.load(result.model_path)
        row.update(top1=accuracy(session, split.x_test, split.y_test), top1_one_shot_bn=tuned.top1_one_shot_bn,
                   macs=result.report["summary"]["macs_after"])
        sessions[name] = session
        feeds[name] = random_feeds(input_specs(result.model), seed=0)[0]
        out.append(row)
        say(f"{name}: one-shot {row['top1_one_shot']}, fine-tuned {row['top1']}, MACs {row['macs']}")
    return out


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def render(study: dict) -> str:
    n = study["n"]
    lines = [f"# Accuracy study: `{study['model']}` on `{study['data']}`", "",
             f"{n} test images (1 point = {n / 100:g} images); fine-tuning {study['epochs']} epochs per variant "
             f"(AdamW lr {study.get('lr', 1e-3):g}, cosine, masks kept, BatchNorm re-estimated); "
             f"dense adapted to the data for "
             f"{study['dense_epochs']} epochs. Latency: batch 1, ONNX Runtime CPU, {study['threads']} thread(s), "
             f"{study['runs']} interleaved rounds, median [q25-q75]; load average {study['load_average']}.", ""]
    dense = study["rows"][0]
    lines += [f"Dense: top-1 {_pct(dense['top1'])}%, {dense['macs']:,} MACs, {dense.get('median_ms')} ms.", ""]
    for family in ("group-wise", "filters", "2:4", "deprune", "torch-pruning"):
        rows = [r for r in study["rows"] if r["family"] == family]
        if not rows:
            continue
        lines += [f"## {family}", "", "| variant | setting | top-1 one-shot % | one-shot + BN re-estimated % | top-1 fine-tuned % | "
                                      "vs dense | MACs | ideal | speedup | median ms [q25-q75] |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['label']} | {r['setting']} | failed: {r['error']} | | | | | | | |")
                continue
            delta = "" if r["top1"] is None else f"{100 * (r['top1'] - dense['top1']):+.1f}"
            lines.append(f"| {r['label']} | {r['setting']} | {_pct(r['top1_one_shot'])} | {_pct(r.get('top1_one_shot_bn'))} | "
                         f"{_pct(r['top1'])} | "
                         f"{delta} | {r['macs']:,} | {r.get('ideal')}x | {r.get('speedup')}x | "
                         f"{r.get('median_ms')} [{r.get('q25_ms')}-{r.get('q75_ms')}] |")
        lines.append("")
        lines += [f"- {r['label']} in detect mode (`deprune-zeros`): {r['compiled']}"
                  for r in rows if r.get("compiled")]
        lines.append("") if any(r.get("compiled") for r in rows) else None
    lines += _orderings(study)
    return "\n".join(lines) + "\n"


def _orderings(study: dict) -> list[str]:
    """The paper's claims, checked on these numbers (honestly, with image counts)."""
    n = study["n"]
    rows = {r["label"]: r for r in study["rows"] if "error" not in r}
    dense = study["rows"][0]["top1"]
    out = ["## Targets checked", ""]
    gw = rows.get("groupwise-50")
    if gw and gw["top1"] is not None:
        gap = 100 * (dense - gw["top1"])
        out.append(f"- group-wise 50% within 1 point of dense after fine-tuning: {'yes' if gap <= 1 else 'NO'} "
                   f"({gap:+.1f} points = {round(gap * n / 100)} of {n} images below dense)")
    ratios = sorted({r["ratio"] for r in rows.values() if r.get("ratio")})
    for ratio in ratios:
        at = {r["metric"]: r["top1"] for r in rows.values() if r.get("ratio") == ratio and r["top1"] is not None}
        if len(at) < len(FILTER_METRICS):
            continue
        best_l1 = max(at["input-l1"], at["output-l1"])
        for hybrid in ("hybrid1", "hybrid2"):
            diff = round((at[hybrid] - best_l1) * n)
            out.append(f"- {int(ratio * 100)}% filters removed: {hybrid} {100 * at[hybrid]:.1f}% vs best of input/"
                       f"output L1 {100 * best_l1:.1f}%: {'holds' if diff >= 0 else 'does NOT hold'} "
                       f"({diff:+d} images of {n})")
    dcp = rows.get("deprune")
    for label in ("deprune-b", "deprune-bh"):
        other = rows.get(label)
        if dcp and other and dcp.get("top1") is not None and other.get("top1") is not None:
            diff = round((other["top1"] - dcp["top1"]) * n)
            out.append(f"- {label} within 0.5 points ({n * 0.005:g} images) of DCP at the same ratio after "
                       f"fine-tuning: {'yes' if diff >= -n * 0.005 else 'NO'} ({100 * other['top1']:.1f}% vs "
                       f"{100 * dcp['top1']:.1f}%: {diff:+d} images of {n})")
    close = [r for r in rows.values() if r["family"] not in ("dense", "torch-pruning") and r.get("top1") is not None
             and dense - r["top1"] <= 0.01 and "speedup" in r]
    baseline = [r for r in rows.values() if r["family"] == "torch-pruning" and dense - r["top1"] <= 0.01
                and "speedup" in r]
    if close or baseline:
        ours = max(close, key=lambda r: r["speedup"], default=None)
        theirs = max(baseline, key=lambda r: r["speedup"], default=None)
        out.append(f"- within 1 point of dense: fastest sparsecc variant "
                   f"{ours['label'] + ' ' + str(ours['speedup']) + 'x' if ours else 'none'}; fastest Torch-Pruning "
                   f"{theirs['label'] + ' ' + str(theirs['speedup']) + 'x' if theirs else 'none'}")
    else:
        out.append("- within 1 point of dense: no pruned variant of either tool (after this much fine-tuning)")
    return out + [""]


def plots(study: dict, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return
    from sparsecc.plot_labels import annotate_points

    dense = study["rows"][0]
    for family in ("group-wise", "filters", "2:4", "deprune", "torch-pruning"):
        rows = [r for r in study["rows"] if r["family"] == family and "error" not in r and "median_ms" in r]
        if not rows:
            continue
        figure, axes = plt.subplots(figsize=(7, 4.5))
        labelled = []  # (latency, top-1, label) of every point drawn
        for r in rows:
            for key, marker, color in (("top1_one_shot", "x", "tab:gray"), ("top1", "o", "tab:green")):
                if r.get(key) is not None:
                    axes.plot(r["median_ms"], 100 * r[key], marker, color=color)
                    labelled.append((r["median_ms"], 100 * r[key], r["label"]))
        axes.plot(dense["median_ms"], 100 * dense["top1"], "s", color="black", label="dense")
        axes.plot([], [], "x", color="tab:gray", label="one-shot")
        axes.plot([], [], "o", color="tab:green", label="fine-tuned")
        axes.axhline(10, color="tab:red", linestyle=":", label="chance")
        axes.set_xlabel("median latency, ms (batch 1, ONNX Runtime CPU)")
        axes.set_ylabel(f"top-1 % ({study['n']} test images)")
        axes.set_title(f"{family}: {study['model']} on {study['data']}")
        axes.legend(fontsize=8)
        figure.tight_layout()
        if labelled:  # labels of points close together do not overlap
            xs, ys, texts = zip(*labelled)
            annotate_points(axes, xs, ys, texts, fontsize=6)
        figure.savefig(out / f"{family.replace(':', '')}.png", dpi=110)
        plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
