"""The timing cache: reproducible compiles, decisions from the cache, the noise rule."""

from __future__ import annotations

import json

import pytest
from graphs import init, make_model, randn, save
from onnx import helper

from sparsecc.compiler import compile_model
from sparsecc.lowering import Candidate, TimingCache, choose_lowering, open_timing_cache
from sparsecc.lowering.timing_cache import ENV, default_timing_cache_path


def _three_convs(path):
    nodes = [helper.make_node("Conv", ["x", "W0"], ["a"], name="first", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"], name="relu"),
             helper.make_node("Conv", ["ar", "W1"], ["b"], name="mid", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "W2"], ["y"], name="last")]
    inits = [init("W0", randn(16, 3, 3, 3)), init("W1", randn(16, 16, 3, 3)), init("W2", randn(8, 16, 1, 1))]
    return save(make_model(nodes, [("x", [1, 3, 12, 12])], [("y", [1, 8, 12, 12])], inits), path)


def test_two_compiles_with_one_timing_cache_give_byte_identical_models(tmp_path):
    model = _three_convs(tmp_path / "m.onnx")
    cache = tmp_path / "cache.json"
    first = compile_model(model, "groupwise-25", tmp_path / "a", timing_cache=cache)
    second = compile_model(model, "groupwise-25", tmp_path / "b", timing_cache=cache)
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    # the first compile measured and filled the cache; every decision of the second came from it
    assert first.report["timing_cache"]["misses"] > 0
    assert second.report["timing_cache"]["misses"] == 0 and second.report["timing_cache"]["hits"] > 0
    rewrite = next(p for p in second.report["passes"] if p["name"] == "groupwise-rewrite")
    assert rewrite["details"]["layers"]["mid"]["timing"] == "timing cache"
    if "model_check" in rewrite["details"]:
        assert rewrite["details"]["model_check"]["source"] == "timing cache"
    markdown = (tmp_path / "b" / "report.md").read_text()
    assert "Lowering decisions of `groupwise-rewrite`" in markdown and "taken from it, 0 measured" in markdown
    entries = json.loads(cache.read_text())["entries"]
    layer_fields, model_fields = {"seconds", "spread", "runs", "lowering"}, {"dense_ms", "rewritten_ms", "spread", "runs"}
    assert entries and all(layer_fields <= set(e) or model_fields <= set(e) for e in entries.values())


def test_analytic_cost_model_is_deterministic_without_a_cache(tmp_path):
    model = _three_convs(tmp_path / "m.onnx")
    for out in ("a", "b"):
        report = compile_model(model, "groupwise-25", tmp_path / out, cost_model="analytic",
                               timing_cache="off").report
        assert report["timing_cache"] == {"path": None, "hits": 0, "misses": 0}
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()


def test_cache_location_and_bad_files(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(ENV, str(tmp_path / "env.json"))
    assert default_timing_cache_path() == tmp_path / "env.json"
    monkeypatch.setenv(ENV, "off")
    assert default_timing_cache_path() is None and open_timing_cache(None).path is None
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_timing_cache_path() == tmp_path / "xdg" / "sparsecc" / "timing-cache.json"
    # a corrupt or foreign cache is set aside with a warning, and the compile goes on with an empty one
    for text, phrase in (("{not json", "cannot be read as JSON"), ('{"something": 1}', "not a sparsecc timing cache"),
                         ('{"sparsecc_timing_cache": 1, "entries": [1, 2]}', "'entries' is not a mapping")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with caplog.at_level("WARNING", logger="sparsecc"):
            assert TimingCache(bad).entries == {}
        assert phrase in caplog.text and "set aside" in caplog.text
        assert not bad.exists() and any(p.read_text() == text for p in tmp_path.glob("bad.json.unreadable-*"))
        caplog.clear()


def test_cache_saves_merge_with_what_is_on_disk(tmp_path):
    path = tmp_path / "c.json"
    one, two = TimingCache(path), TimingCache(path)
    one.put("a", {"seconds": 1.0, "spread": 0.0, "runs": 5})
    two.put("b", {"seconds": 2.0, "spread": 0.0, "runs": 5})
    one.save()
    two.save()
    assert set(TimingCache(path).entries) == {"a", "b"}


def _candidates(dense_s, best_s, spread, source="measured"):
    noop = lambda *a: None  # noqa: E731
    return [Candidate("dense", noop, 10, 0, 1, seconds=dense_s, spread=spread, source=source),
            Candidate("tap-gather", noop, 5, 0, 3, seconds=best_s, spread=spread, source=source)]


def test_a_win_inside_the_noise_is_remeasured_then_kept_dense():
    candidates = _candidates(1.0, 0.85, spread=0.2)  # 15% faster (5% past min_gain), spread 20%
    remeasured = []
    choice, why = choose_lowering(candidates, 0.1, remeasured.append)
    assert remeasured and choice.name == "dense" and "inside the measured spread" in why


def test_a_win_inside_the_noise_that_holds_on_remeasuring_is_taken():
    candidates = _candidates(1.0, 0.85, spread=0.2)

    def quieter(chosen):
        for candidate in chosen:
            candidate.spread = 0.01

    choice, why = choose_lowering(candidates, 0.1, quieter)
    assert choice.name == "tap-gather" and "spread 1.0%" in why


def test_cached_timings_are_not_remeasured_and_decide_as_the_compile_that_measured_them():
    # the cache holds what the measuring compile decided on (the second measurement, if it took one):
    # a margin inside its spread kept the layer dense there, so it must here too
    remeasured = []
    choice, why = choose_lowering(_candidates(1.0, 0.85, 0.2, source="timing cache"), 0.1, remeasured.append)
    assert not remeasured and choice.name == "dense" and "timing cache" in why
    choice, why = choose_lowering(_candidates(1.0, 0.85, 0.01, source="timing cache"), 0.1, remeasured.append)
    assert not remeasured and choice.name == "tap-gather" and "timing cache" in why


def test_cli_timing_cache_and_cost_model_options(tmp_path, cli):
    model = _three_convs(tmp_path / "m.onnx")
    cache = tmp_path / "cache.json"
    for out in ("a", "b"):
        cli("compile", model, "--recipe", "groupwise-25", "-o", tmp_path / out, "--timing-cache", cache, check=True)
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    assert cache.exists()
    bad = cli("compile", model, "--recipe", "groupwise-25", "-o", tmp_path / "c", "--cost-model", "magic")
    assert bad.returncode == 2 and "--cost-model" in bad.stderr
