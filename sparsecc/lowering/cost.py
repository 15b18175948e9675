"""Cost models: how long a candidate lowering takes, and which candidate to take.

- :class:`AnalyticCost`: MACs, moved elements and nodes, calibrated on ONNX Runtime CPU
  (deterministic; every lowering carries its own time per MAC, so an unknown one never fails).
- :class:`MeasuredCost`: each candidate timed as a one-layer model on ONNX Runtime CPU,
  interleaved (BENCHMARKS.md), through the timing cache.
- :func:`choose_lowering`: the fastest candidate if it beats dense by ``min_gain``; a win whose
  margin is inside the measured noise is re-measured once, then resolved conservatively (dense).
- :func:`whole_model_check`: the rewritten model against the graph it came from (a rewrite can
  win on each layer and lose in the model), through the same cache and the same noise rule.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.lowering.emitter import Emitter
from sparsecc.lowering.registry import Candidate
from sparsecc.lowering.timing_cache import TimingCache, graph_signature
from sparsecc.passmanager import Skipped

# ~0.8 ns per element moved by Gather/Transpose/NCHWc reorder, ~15 us per node on ONNX Runtime CPU
# (tools/bench_groupwise.py profiles, 2 threads).
S_PER_COPY = 0.8e-9
S_PER_NODE = 15e-6


def analytic_seconds(candidate: Candidate) -> float:
    """Estimated run time of a candidate lowering (analytical model, calibrated as above)."""
    return candidate.macs * candidate.s_per_mac + candidate.copied * S_PER_COPY + candidate.nodes * S_PER_NODE


class AnalyticCost:
    """Estimates from MACs and moved data: no timing, the same answer on every machine."""

    name = "analytic"

    def time(self, candidates: list[Candidate], op: str, in_shape, out_shape, dtype=np.float32) -> None:
        for candidate in candidates:
            candidate.seconds = analytic_seconds(candidate)
            candidate.source = "analytic"

    def remeasure(self, candidates: list[Candidate], op: str, in_shape, out_shape, dtype=np.float32) -> None:
        """Estimates carry no noise: nothing to re-measure."""


def _measure_environment(threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    from sparsecc.environment import cpu_model

    return {"backend": f"onnxruntime {ort.__version__} CPU", "threads": threads, "cpu": cpu_model()}


class MeasuredCost:
    """Times candidates on ONNX Runtime CPU, through a timing cache.

    Args:
        runs: Timed runs per candidate. Defaults to 5.
        threads: ONNX Runtime intra-op threads. Defaults to 2.
        cache: The timing cache. Defaults to one kept in memory for this compile only.
    """

    name = "measured"

    def __init__(self, runs: int = 5, threads: int = 2, cache: TimingCache | None = None):
        self.runs = runs
        self.threads = threads
        self.cache = cache if cache is not None else TimingCache(None)
        self._env = _measure_environment(threads)

    def time(self, candidates: list[Candidate], op: str, in_shape, out_shape, dtype=np.float32) -> None:
        graphs = [layer_graph(c, in_shape, out_shape, dtype) for c in candidates]
        keys = [self._key(c, op, in_shape, out_shape, dtype, g) for c, g in zip(candidates, graphs)]
        missing = []
        for index, (candidate, key) in enumerate(zip(candidates, keys)):
            entry = self.cache.get(key)
            if entry is None:
                missing.append(index)
            else:
                candidate.seconds, candidate.spread, candidate.source = entry["seconds"], entry["spread"], \
                    "timing cache"
        if missing:
            self._measure([candidates[i] for i in missing], [graphs[i] for i in missing],
                          [keys[i] for i in missing], in_shape, dtype, self.runs)

    def remeasure(self, candidates: list[Candidate], op: str, in_shape, out_shape, dtype=np.float32) -> None:
        """Measure again with twice the runs (a margin inside the noise); the cache keeps the new figures."""
        graphs = [layer_graph(c, in_shape, out_shape, dtype) for c in candidates]
        keys = [self._key(c, op, in_shape, out_shape, dtype, g) for c, g in zip(candidates, graphs)]
        self._measure(candidates, graphs, keys, in_shape, dtype, 2 * self.runs)

    def _key(self, candidate: Candidate, op: str, in_shape, out_shape, dtype, graph: gs.Graph) -> str:
        fields = {"what": "layer", "op": op, "lowering": candidate.name, "in": list(in_shape),
                  "out": list(out_shape), "dtype": np.dtype(dtype).name, "graph": graph_signature(graph),
                  **self._env}
        return TimingCache.key(fields)

    def _measure(self, candidates, graphs, keys, in_shape, dtype, runs: int) -> None:
        from sparsecc.backends.ort import OrtBackend
        from sparsecc.bench import time_interleaved
        from sparsecc.session_files import SessionFiles

        backend = OrtBackend(threads=self.threads)
        # loaded by path: a dense FC layer of VGG-16 is 400 MB, which serialised bytes would hold twice
        with SessionFiles() as files:
            paths = [files.write(g) for g in graphs]
            sessions = {i: backend.load(p, files.initializers(p)) for i, p in enumerate(paths)}
            feed = {"x": np.random.default_rng(0).standard_normal(in_shape).astype(dtype)}
            timings = time_interleaved(sessions, dict.fromkeys(sessions, feed), warmup=1, runs=runs)
            del sessions
        for index, (candidate, key) in enumerate(zip(candidates, keys)):
            timing = timings[index]
            candidate.seconds = timing.min_ms / 1e3
            candidate.spread = round((timing.median_ms - timing.min_ms) / timing.min_ms, 4)
            candidate.source = "measured"
            self.cache.put(key, {"seconds": candidate.seconds, "spread": candidate.spread, "runs": runs,
                                 "lowering": candidate.name, "in": list(in_shape)})


def layer_graph(candidate: Candidate, in_shape, out_shape, dtype=np.float32) -> gs.Graph:
    """A one-layer model of a candidate, as the measured cost model times it.

    A Conv layer sits between two 1x1 depthwise Convs: in a network its neighbours are Convs, so
    ONNX Runtime keeps a dense layer in its blocked (NCHWc) layout while a lowering leaves it; the
    wrappers make each candidate pay the layout changes it would pay in the model.
    """
    graph = gs.Graph(opset=17)
    em = Emitter(graph, "m", "cost-model", dtype)
    x = gs.Variable("x", dtype=em.dtype, shape=list(in_shape))
    y = gs.Variable("y", dtype=em.dtype, shape=list(out_shape))
    graph.inputs, graph.outputs = [x], [y]
    if len(in_shape) == 4 and len(out_shape) == 4:
        inner_x, inner_y = em.var("in"), em.var("out")
        em.node("Conv", [x, em.const("w_in", np.ones((in_shape[1], 1, 1, 1)))], [inner_x], "wrap_in",
                group=in_shape[1])
        em.node("Conv", [inner_y, em.const("w_out", np.ones((out_shape[1], 1, 1, 1)))], [y], "wrap_out",
                group=out_shape[1])
        candidate.emit(em, inner_x, inner_y)
    else:
        candidate.emit(em, x, y)
    return graph


def describe_candidates(candidates: list[Candidate]) -> dict[str, Any]:
    """What a pass records of its candidates for one layer: times, MACs, timing source and spread."""
    described = {"candidates_ms": {c.name: round(c.seconds * 1e3, 4) for c in candidates if c.seconds is not None},
                 "macs": {c.name: c.macs for c in candidates}}
    sources = {c.source for c in candidates if c.source}
    if sources:
        described["timing"] = " + ".join(sorted(sources))
    spreads = {c.name: c.spread for c in candidates if c.spread is not None}
    if spreads:
        described["spread"] = spreads
    return described


def _margin(dense_s: float, best_s: float, min_gain: float) -> float:
    """How far ``best * (1 + min_gain)`` is below dense, relative to dense (negative: it is not)."""
    return (dense_s - best_s * (1.0 + min_gain)) / dense_s


def _noise(*candidates: Candidate) -> float:
    return max((c.spread or 0.0) for c in candidates)


def choose_lowering(candidates: list[Candidate], min_gain: float, remeasure: Callable[[list[Candidate]], None]
                    ) -> tuple[Candidate, str]:
    """The candidate to take (``candidates[0]`` is dense) and why, from their ``seconds``.

    A lowering must beat dense by ``min_gain``. A win by a margin inside the noise of fresh
    measurements is measured once more (``remeasure``); if it is still inside, dense is kept.
    Cached timings are not measured again but go through the same rule (the cache holds the
    second measurement), so a compile from a full cache decides as the one that filled it.
    """
    dense, options = candidates[0], candidates[1:]
    best = min(options, key=lambda c: c.seconds)
    unit = {"analytic": "estimated", "timing cache": "measured (timing cache)"}.get(best.source, best.source)
    margin = _margin(dense.seconds, best.seconds, min_gain)
    fresh = "measured" in (best.source, dense.source)
    if margin > 0 and margin <= _noise(dense, best):
        if fresh:
            remeasure([dense, best])
            margin = _margin(dense.seconds, best.seconds, min_gain)
        # the same rule for cached timings: the cache holds the second measurement, so a compile
        # from it decides as the compile that measured did
        if margin > 0 and margin <= _noise(dense, best):
            how = "measured twice" if fresh else "timing cache"
            return dense, (f"{best.name} {best.seconds * 1e3:.3f} ms vs dense {dense.seconds * 1e3:.3f} ms: "
                           f"the margin {margin:.1%} is inside the measured spread {_noise(dense, best):.1%} "
                           f"({how}), so the layer stays dense")
    if margin > 0:
        spread = f", spread {_noise(dense, best):.1%}" if best.source != "analytic" else ""
        return best, (f"{best.name} {unit} {best.seconds * 1e3:.3f} ms vs dense {dense.seconds * 1e3:.3f} ms "
                      f"({dense.seconds / best.seconds:.2f}x{spread})")
    return dense, (f"no lowering is faster: best {best.name} {unit} {best.seconds * 1e3:.3f} ms vs dense "
                   f"{dense.seconds * 1e3:.3f} ms (needs {min_gain:.0%} gain)")


def whole_model_check(dense, rewritten, runs: int, threads: int, cache: TimingCache | None = None,
                      labels: tuple[str, str] = ("dense", "rewritten"),
                      fallback: str = "every layer was left dense") -> dict[str, Any]:
    """Time the whole rewritten model against the model it came from, interleaved, through the cache.

    Layers are chosen one at a time, but a rewrite can win on each layer and lose in the model
    (layout changes between neighbours, cache effects): the rewrite is kept only if the whole model
    is faster on the target backend, by more than the measured spread (else it is re-measured once,
    then undone: the conservative choice).
    """
    cache = cache if cache is not None else TimingCache(None)
    fields = {"what": "model", "dense": graph_signature(dense.graph), "rewritten": graph_signature(rewritten.graph),
              **_measure_environment(threads)}
    key = TimingCache.key(fields)
    entry = cache.get(key)
    source = "timing cache"
    if entry is None:
        entry = _time_models(dense, rewritten, runs, threads)
        source = "measured"
        margin = entry["dense_ms"] / entry["rewritten_ms"] - 1.0
        if 0 < margin <= entry["spread"]:
            entry = _time_models(dense, rewritten, 2 * runs, threads)
            source = "measured twice (the first margin was inside the spread)"
        cache.put(key, entry)
    dense_ms, rewritten_ms, spread = entry["dense_ms"], entry["rewritten_ms"], entry["spread"]
    margin = dense_ms / rewritten_ms - 1.0
    kept = margin > spread
    if kept:
        verdict = "kept"
    elif margin > 0:
        verdict = f"faster by {margin:.1%}, inside the measured spread {spread:.1%}, so {fallback}"
    else:
        verdict = f"not faster, so {fallback}"
    base, candidate = labels
    return {"dense_ms": dense_ms, "rewritten_ms": rewritten_ms, "runs": entry["runs"], "spread": spread,
            "source": source, "kept": kept,
            "reason": f"whole model: {candidate} {rewritten_ms:.3f} ms vs {base} {dense_ms:.3f} ms "
                      f"(median of {entry['runs']}, spread {spread:.1%}, ONNX Runtime CPU, {source}): {verdict}"}


def undo_unless_faster(before, model, runs: int, threads: int, cache: TimingCache | None, details: dict,
                       skipped: list, notes: list) -> bool:
    """A lowering pass's last step: keep the rewritten ``model`` only if the whole model is faster.

    Runs :func:`whole_model_check`, records it in ``details["model_check"]``; when the rewrite is not
    kept, puts ``before``'s graph back and lists the reason in ``skipped`` and ``notes``. True when kept.
    """
    check = whole_model_check(before, model, runs, threads, cache)
    details["model_check"] = check
    if check["kept"]:
        return True
    model.graph = before.graph
    skipped.append(Skipped("(whole model)", check["reason"]))
    notes.append(check["reason"])
    return False


def _time_models(dense, rewritten, runs: int, threads: int) -> dict[str, Any]:
    """Median times of the two models, each loaded as deployed (prepacked weights, optimised graph).

    One session is alive at a time (each holds a whole model's weights, prepacked): dense, then
    rewritten for twice as many runs, then dense again, so a load that drifts during the
    measurement weighs on both alike (interleaving run by run would need both at once).
    """
    from sparsecc.backends.ort import OrtBackend
    from sparsecc.bench import Timing, time_interleaved
    from sparsecc.session_files import SessionFiles
    from sparsecc.verify import input_specs, random_feeds

    backend = OrtBackend(threads=threads)
    feed = random_feeds(input_specs(rewritten), seed=0)[0]
    timings = {"dense": Timing("dense"), "rewritten": Timing("rewritten")}
    half = max(1, (runs + 1) // 2)
    with SessionFiles() as files:  # loaded by path: no serialised copy of either model's weights
        paths = {"dense": files.write(dense.graph), "rewritten": files.write(rewritten.graph)}
        # ONNX Runtime takes the weights from memory (no copy; it prepacks as deployed); the dense
        # model's layers that were not rewritten use the rewritten model's arrays of the same bytes
        arrays = {label: files.initializers(path) for label, path in paths.items()}
        for label, block_runs in (("dense", half), ("rewritten", 2 * half), ("dense", half)):
            session = backend.load(paths[label], arrays[label])
            block = time_interleaved({label: session}, {label: feed}, warmup=1, runs=block_runs)
            timings[label].times_ms += block[label].times_ms
            del session, block
    spread = max((t.median_ms - t.min_ms) / t.min_ms for t in timings.values())
    return {"dense_ms": round(timings["dense"].median_ms, 4), "rewritten_ms": round(timings["rewritten"].median_ms, 4),
            "spread": round(spread, 4), "runs": len(timings["dense"].times_ms)}
