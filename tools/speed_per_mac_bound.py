"""Bound: how much faster than Torch-Pruning can any channel allocation run at equal MACs, on ONNX Runtime CPU?

At equal MACs, an allocation is faster only where its layers take less time per MAC. This tool measures
how far that can go on the ResNet-50-style model of ``speed_target_models.py`` (224x224, batch 1;
exported, BatchNorm folded and canonicalised as ``bench_speed_target.py`` does):

1. The latency tables of every prunable layer, measured through :mod:`sparsecc.latency` as
   ``plan_to_target`` builds them (ONNX Runtime CPU, one thread, through ``--timing-cache``).
2. The fastest allocation the tables know at a MAC count: every channel of a group is worth the MACs
   one channel of that group carries in the dense model (summed over the layers it feeds or is made
   by), value "sum", so the knapsack keeps the most MACs within a latency budget (= the least latency
   at given MACs, to first order). Alignment and ``min_keep`` as sparsecc's (lcm(round_to 8, step
   found), 0.1). The budget is bisected until the pruned model's MACs equal Torch-Pruning global's at
   the target (dense MACs / target) within 0.5%.
3. Torch-Pruning global at the target, and sparsecc's default allocation (L2 scores, value "log") at
   Torch-Pruning's MACs, built as ``bench_speed_target.py`` builds them.
4. Every variant timed in one process, interleaved and paired (``sparsecc.measure``, one thread, CPU
   time decides, 3 replications), against the dense model and directly against Torch-Pruning global;
   the tables' prediction of each variant beside its measurement.
5. The spread of latency per MAC over the dense model's layers (ms per GMAC, from the tables) and,
   per group, the latency its removal saves per MAC it removes: if both are narrow, no allocation can
   be much faster than another at equal MACs.

Writes ``bound.json`` and ``bound.md`` into ``--out``. ``--timer analytic --pairs 0`` is a dry run
(analytic tables, nothing timed). Run time on a quiet 2-core machine: about 6 minutes with an empty
timing cache, 2 with a full one.

Usage: python tools/speed_per_mac_bound.py [--target 2] [--pairs 40] [--replications 3]
       [--out docs/speed-target/bound] [--timing-cache FILE] [--timer measured|analytic]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed_target import (Variants, add_sparsecc_at_macs, add_torch_at_target, bisect,  # noqa: E402
                                canonical_model, onnx_macs, say, sparsecc_recipe)

MODEL = "resnet50"
FASTEST = "fastest-tp-macs"
TP = "tp-global-target"
DEFAULT = "sparsecc-tp-macs"


@dataclass
class Tables:
    """The dense model's prunable layers, their measured tables, and the groups that may be pruned."""

    model: object
    candidates: dict
    layers: list
    tables: dict
    costs: list
    steps: dict


def measure_tables(variants: Variants, cache, timer_name: str) -> Tables:
    """The latency tables of the canonical dense model, as ``plan_to_target`` builds them."""
    from sparsecc.dependency import build_channel_groups
    from sparsecc.latency.network import layer_costs, prunable_layers
    from sparsecc.latency.sampling import build_tables
    from sparsecc.latency.target import group_steps
    from sparsecc.latency.timers import make_timer
    from sparsecc.passes.filter_prune import PlanFilters
    from sparsecc.passmanager import PassContext

    model = canonical_model(variants.dense_path)
    options = sparsecc_recipe({"target_speedup": 2.0}).passes[0][1]  # the candidates sparsecc's run prunes
    candidates, _ = PlanFilters(**options)._candidates(PassContext(model), build_channel_groups(model))
    layers = prunable_layers(model, candidates)
    tables = build_tables(layers, make_timer(timer_name, cache=cache), say)
    cache.save()
    return Tables(model, candidates, layers, tables, layer_costs(layers, tables), group_steps(layers, tables))


def channel_macs(tables: Tables, kept: dict[str, int] | None = None) -> dict[str, float]:
    """Per group, the MACs one of its channels carries (every layer, both sides) with the groups at ``kept``
    (the MACs' gradient there). Defaults to the dense model."""
    kept = kept or {label: group.size for label, group in tables.candidates.items()}
    macs = {label: 0.0 for label in tables.candidates}
    for layer, cost in zip(tables.layers, tables.costs):
        geometry, (c_in, c_out) = layer.geometry, cost.dims(kept)
        for term in layer.outputs:
            macs[term.group] += term.stride * geometry.macs(int(c_in), 1)
        if not geometry.depthwise:
            for term in layer.inputs:
                macs[term.group] += term.stride * geometry.macs(1, int(c_out))
    return macs


def fastest_at_macs(tables: Tables, goal_macs: int, round_to: int = 8, min_keep: float = 0.1) -> dict:
    """The allocation keeping the most MACs per unit of latency at ``goal_macs``: first with every channel
    worth its dense MACs, then with the MACs' gradient at that answer (a product of two pruned sides
    loses less than the sum of their dense shares); the faster by the tables of the two."""
    first = _most_macs(tables, channel_macs(tables), goal_macs, round_to, min_keep)
    second = _most_macs(tables, channel_macs(tables, first["kept"]), goal_macs, round_to, min_keep)
    second["other"] = {k: first[k] for k in ("share", "macs", "miss", "predicted_seconds")}
    first["other"] = {k: second[k] for k in ("share", "macs", "miss", "predicted_seconds")}
    chosen = min((first, second), key=lambda f: (abs(f["miss"]) > 0.005, f["predicted_seconds"]))
    chosen["scores_from"] = "dense MACs" if chosen is first else "MACs' gradient at the first answer"
    return chosen


def _most_macs(tables: Tables, per_channel: dict[str, float], goal_macs: int, round_to: int, min_keep: float
               ) -> dict:
    """The allocation with channels worth ``per_channel`` MACs, its budget bisected to ``goal_macs`` (0.5%)."""
    from sparsecc.latency.allocate import allocate, network_seconds
    from sparsecc.latency.target import _kept_channels, _macs, _options, pruned_copy

    scores = {label: np.full(group.size, per_channel[label]) for label, group in tables.candidates.items()}
    options, described = _options(tables.candidates, scores, tables.steps, round_to, min_keep, "sum")
    dense_seconds = network_seconds(tables.costs, {g.id: g.size for g in options})
    tried: dict[float, tuple] = {}

    def macs_at(share: float) -> int:
        allocation = allocate(options, tables.costs, share * dense_seconds)
        pruned = pruned_copy(tables.model, tables.candidates, _kept_channels(scores, allocation.kept))
        tried[share] = (allocation, pruned, _macs(pruned))
        return tried[share][2]

    least = allocate(options, tables.costs, 0.0).least_seconds / dense_seconds
    share, macs = bisect(macs_at, goal_macs, least, 1.0, 30, 0.005)
    allocation, pruned, _ = tried[share]
    return {"share": share, "macs": macs, "miss": macs / goal_macs - 1.0, "kept": allocation.kept,
            "model": pruned, "channel_macs": per_channel, "groups": described,
            "predicted_seconds": allocation.seconds, "dense_seconds": dense_seconds}


def layer_channels(path: Path) -> list[tuple[int, int]]:
    """(input channels, output channels) of every weight layer of an ONNX file, in graph order."""
    from sparsecc.layers import find_weight_layers
    from sparsecc.model import load_model

    found = []
    for layer in find_weight_layers(load_model(path))[0]:
        if layer.op == "Conv":
            found.append((layer.weight_shape[1] * layer.group, layer.weight_shape[0]))
        else:
            found.append((layer.k, layer.params // layer.k))
    return found


def predicted_seconds(tables: Tables, path: Path) -> float:
    """The tables' latency of a variant's prunable layers, read at its channel counts (layers in graph order)."""
    from sparsecc.layers import find_weight_layers

    names = [layer.node for layer in find_weight_layers(tables.model)[0]]
    channels = layer_channels(path)
    if len(channels) != len(names):
        raise ValueError(f"{path}: {len(channels)} weight layers, the dense model has {len(names)}")
    return float(sum(tables.tables[name].seconds(c_in, c_out) for name, (c_in, c_out) in zip(names, channels)
                     if name in tables.tables))


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9)) -> dict:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order]) / weights.sum()
    return {f"q{round(q * 100)}": float(values[order][np.searchsorted(cumulative, q)]) for q in quantiles}


def per_mac_spread(tables: Tables, fastest: dict) -> dict:
    """Latency per MAC of every dense layer (ms/GMAC), and per group the latency saved per MAC removed."""
    from sparsecc.latency.allocate import network_seconds

    rows = []
    for layer in tables.layers:
        g = layer.geometry
        macs = g.macs(g.full_in, g.full_out)
        kernel = "x".join(map(str, g.weight_shape[2:])) if g.op == "Conv" else g.op
        rows.append({"layer": layer.name, "kind": f"{kernel} s{max(g.strides() or (1,))}", "in": g.full_in,
                     "out": g.full_out, "gmacs": macs / 1e9, "ms": tables.tables[layer.name].full_seconds * 1e3,
                     "ms_per_gmac": tables.tables[layer.name].full_seconds * 1e3 / (macs / 1e9)})
    dense = {label: group.size for label, group in tables.candidates.items()}
    per_channel = channel_macs(tables)
    dense_seconds = network_seconds(tables.costs, dense)
    groups = []
    for label, group in tables.candidates.items():
        alignment = fastest["groups"][label]["alignment"]
        half = max(alignment, int(round(group.size / 2 / alignment)) * alignment)
        saved = dense_seconds - network_seconds(tables.costs, {**dense, label: half})
        removed = per_channel[label] * (group.size - half)
        groups.append({"group": label, "size": group.size, "half": half, "gmacs_removed": removed / 1e9,
                       "ms_saved": saved * 1e3, "ms_per_gmac": saved * 1e3 / (removed / 1e9)})
    return {"layers": rows, "layer_summary": _summary(rows, "gmacs"), "groups": groups,
            "group_summary": _summary(groups, "gmacs_removed")}


def _summary(rows: list[dict], weight: str) -> dict:
    values = np.array([r["ms_per_gmac"] for r in rows])
    weights = np.array([r[weight] for r in rows])
    return {"count": len(rows), "min": float(values.min()), "median": float(np.median(values)),
            "max": float(values.max()), "mac_weighted": weighted_quantiles(values, weights),
            "mac_weighted_mean": float(np.average(values, weights=weights))}


def timings(variants: Variants, pairs: int, replications: int) -> dict:
    """Every variant against dense and against Torch-Pruning global: one process, interleaved, paired."""
    from sparsecc.measure import MeasureSettings, measure_models
    from sparsecc.measure.stats import grouped_ratio_interval

    result = measure_models(variants.folded, "dense", threads=1, settings=MeasureSettings.fixed(pairs),
                            one_at_a_time=False, replications=replications)

    def against(baseline: str, label: str, clock: str) -> dict:
        times = getattr(result, f"{clock}_ms")
        parts = zip(np.array_split(np.asarray(times[baseline]), replications),
                    np.array_split(np.asarray(times[label]), replications))
        return grouped_ratio_interval(list(parts)).to_dict()

    return {"vs_dense": {label: {"cpu": e.cpu.to_dict(), "wall": e.wall.to_dict(), "cpu_ms": e.cpu_ms[1]}
                         for label, e in result.evidence.items()},
            "vs_tp_global": {label: {"cpu": against(TP, label, "cpu"), "wall": against(TP, label, "wall")}
                             for label in variants.folded if label not in ("dense", TP)},
            "load": result.load.to_dict(), "pairs": pairs, "replications": replications,
            "dense_cpu_ms": float(np.median(result.cpu_ms["dense"]))}


def differences(tables: Tables, fastest: dict, default_kept: dict) -> list[dict]:
    """Per group, what the fastest allocation keeps against sparsecc's default one, largest gaps first."""
    per_channel = channel_macs(tables)
    rows = [{"group": label, "size": group.size, "fastest": int(fastest["kept"][label]),
             "default": int(default_kept[label]), "channel_gmacs": per_channel[label] / 1e9}
            for label, group in tables.candidates.items()]
    return sorted(rows, key=lambda r: -abs(r["fastest"] - r["default"]) / r["size"])


def run(args, command: str, work: Path) -> dict:
    from sparsecc.lowering import open_timing_cache

    cache_path = args.timing_cache or str(args.out / "timing-cache.json")
    variants = Variants(MODEL, work, cache_path)
    say(f"dense {variants.dense_macs:,} MACs; latency tables ({args.timer})")
    tables = measure_tables(variants, open_timing_cache(cache_path), args.timer)
    add_torch_at_target(variants, TP, args.target)
    tp_macs = variants.rows[TP]["macs"]
    say(f"Torch-Pruning global at MACs / {args.target:g}: {tp_macs:,} MACs; the fastest allocation at those MACs")
    fastest = fastest_at_macs(tables, tp_macs)
    fastest["model"].save(work / f"{FASTEST}.onnx")
    variants.folded[FASTEST] = variants._fold(work / f"{FASTEST}.onnx", FASTEST)
    variants.rows[FASTEST] = {"what": "most MACs per unit of latency (tables' knapsack, value sum, channels worth "
                                      f"their {fastest['scores_from']}), budget {fastest['share']:.4f} of dense",
                              "macs": onnx_macs(variants.folded[FASTEST])}
    say(f"fastest: {variants.rows[FASTEST]['macs']:,} MACs ({fastest['miss']:+.2%}); sparsecc's default there")
    default = add_sparsecc_at_macs(variants, DEFAULT, tp_macs, args.target)
    default_kept = variants.allocation(default["tables_target"])["kept"]
    dense_predicted = predicted_seconds(tables, variants.folded["dense"])
    if not math.isclose(dense_predicted, fastest["dense_seconds"], rel_tol=1e-9):  # layers read in another order
        raise RuntimeError(f"the folded dense model reads {dense_predicted} s from the tables, not "
                           f"{fastest['dense_seconds']} s: its weight layers do not line up with the tables'")
    for label, row in variants.rows.items():
        row["predicted_ms"] = predicted_seconds(tables, variants.folded[label]) * 1e3
        row["predicted_speedup"] = dense_predicted * 1e3 / row["predicted_ms"]
    report = {"command": command, "model": MODEL, "target": args.target, "timer": args.timer,
              "rows": variants.rows, "spread": per_mac_spread(tables, fastest),
              "fastest_vs_default": differences(tables, fastest, default_kept),
              "fastest": {k: fastest[k] for k in ("share", "miss", "scores_from", "other", "kept")}}
    if args.pairs:
        say(f"timing {len(variants.folded)} models interleaved, 1 thread, {args.pairs} pairs x {args.replications}")
        report["timings"] = timings(variants, args.pairs, args.replications)
    return report


def render(report: dict) -> str:
    env, rows = report["environment"], report["rows"]
    lines = ["# Bound: the fastest channel allocation at Torch-Pruning's MACs, ONNX Runtime CPU", "",
             f"CPU {env['cpu']}, {env.get('cpu_count')} cores, onnxruntime {env.get('onnxruntime')}, torch-pruning "
             f"{report['torch_pruning']}; {report['model']}-style 224x224 batch 1; tables: {report['timer']}; run "
             f"took {report['seconds']} s. Speedups are paired medians (interleaved rounds, one thread, CPU time) "
             "with 90% bootstrap intervals over the replications; load = 1-minute load average before -> after.", "",
             f"Command: `{report['command']}`", "",
             "| variant | what | MACs | ideal | tables' prediction | speedup CPU [90% CI] "
             "| vs TP global CPU [90% CI] |", "|---|---|---|---|---|---|---|"]
    timing = report.get("timings")
    for label, row in rows.items():
        if label == "dense":
            continue
        measured = _interval(timing["vs_dense"][label]["cpu"]) if timing else "-"
        head = _interval(timing["vs_tp_global"][label]["cpu"]) if timing and label != TP else "-"
        lines.append(f"| {label} | {row['what']} | {row['macs']:,} | {rows['dense']['macs'] / row['macs']:.3f}x | "
                     f"{row['predicted_speedup']:.3f}x | {measured} | {head} |")
    if timing:
        load = timing["load"]
        lines += ["", f"{timing['pairs']} pairs x {timing['replications']} replications; load "
                      f"{load['before'][0]:.2f} -> {load['after'][0]:.2f} on {load['cores']} cores ({load['level']});"
                      f" dense {timing['dense_cpu_ms']:.2f} ms CPU."]
    spread = report["spread"]
    lines += ["", "## Latency per MAC (tables, dense model)", "",
              "| over | count | min | median | max | MAC-weighted q10 / q25 / q50 / q75 / q90 | MAC-weighted mean |",
              "|---|---|---|---|---|---|---|"]
    for name, key in (("layers: ms per GMAC of the dense layer", "layer_summary"),
                      ("groups: ms saved per GMAC removed (group halved)", "group_summary")):
        s = spread[key]
        quantiles = " / ".join(f"{v:.2f}" for v in s["mac_weighted"].values())
        lines.append(f"| {name} | {s['count']} | {s['min']:.2f} | {s['median']:.2f} | {s['max']:.2f} | "
                     f"{quantiles} | {s['mac_weighted_mean']:.2f} |")
    lines += ["", "| layer | kind | in | out | GMACs | ms | ms/GMAC |", "|---|---|---|---|---|---|---|"]
    for r in sorted(spread["layers"], key=lambda r: r["ms_per_gmac"]):
        lines.append(f"| {r['layer']} | {r['kind']} | {r['in']} | {r['out']} | {r['gmacs']:.4f} | {r['ms']:.3f} | "
                     f"{r['ms_per_gmac']:.2f} |")
    lines += ["", "## Where the fastest allocation and sparsecc's default differ (kept channels)", "",
              "| group | size | fastest | default | GMACs per channel |", "|---|---|---|---|---|"]
    for r in report["fastest_vs_default"][:15]:
        lines.append(f"| {_short(r['group'])} | {r['size']} | {r['fastest']} | {r['default']} | "
                     f"{r['channel_gmacs']:.5f} |")
    return "\n".join(lines) + "\n"


def _short(group: str) -> str:
    """A group by its first layer (a residual group names every layer writing into it)."""
    layers = group.split(" + ")
    return layers[0] + (f" (+{len(layers) - 1} layers)" if len(layers) > 1 else "")


def _interval(data: dict) -> str:
    return f"{data['estimate']:.3f} [{data['low']:.3f}, {data['high']:.3f}]"


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch_pruning

    from sparsecc.environment import environment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=2.0, help="Torch-Pruning's MAC target (default 2)")
    parser.add_argument("--pairs", type=int, default=40, help="paired rounds per replication (default 40; 0: none)")
    parser.add_argument("--replications", type=int, default=3, help="replications of the timing (default 3)")
    parser.add_argument("--out", type=Path, default=Path("docs/speed-target/bound"))
    parser.add_argument("--timing-cache", help="timing cache of the tables (default OUT/timing-cache.json)")
    parser.add_argument("--timer", default="measured", choices=("measured", "analytic"),
                        help="how the tables are made (default measured; analytic: a dry run)")
    args = parser.parse_args(argv)
    command = " ".join(["python", f"tools/{Path(__file__).name}", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    started, load_at_start = time.perf_counter(), list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="sparsecc-bound-") as folder:
        report = run(args, command, Path(folder))
    report.update(environment=environment(), torch_pruning=torch_pruning.__version__,
                  seconds=round(time.perf_counter() - started), load_at_start=load_at_start,
                  load_at_end=list(os.getloadavg()))
    (args.out / "bound.json").write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    (args.out / "bound.md").write_text(render(report))
    say(f"wrote {args.out}/bound.md and bound.json ({report['seconds']} s)")
    return 0


def _plain(value):
    return value.item() if isinstance(value, (np.integer, np.floating)) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
