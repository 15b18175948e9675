"""The timing cache: reproducible compiles, entries that hold evidence, when an entry is used again."""

from __future__ import annotations

import json

import pytest
from graphs import init, make_model, randn, save
from onnx import helper

from sparsecc.compiler import compile_model
from evidence import FASTER, SLOWER, STRADDLES, evidence

from sparsecc.lowering import (AnalyticCost, Candidate, TimingCache, analytic_seconds, choose_lowering,
                               open_timing_cache)
from sparsecc.lowering.timing_cache import ENV, default_timing_cache_path
from sparsecc.measure import Measurement
from sparsecc.measure.cached import compare_through_cache, describe_entry, entry_for, evidence_of, reuse_rule


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
    # evidence, never a verdict: both ratios with intervals, load, when, threads, spinning
    forms = {e["form"] for e in entries.values()}
    assert entries and forms <= {"paired-evidence/1", "analytic-calibration/2"} and "paired-evidence/1" in forms
    for entry in entries.values():
        if entry["form"] == "paired-evidence/1":
            assert {"cpu", "wall", "load", "taken_at", "threads", "spinning", "pairs"} <= set(entry["evidence"])
            assert not {"kept", "verdict", "faster"} & set(entry["evidence"]) and entry["evidence"]["spinning"] is False


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


class FixedCost:
    """A cost model that hands out given evidence (and records whether the analytic fallback was asked)."""

    def __init__(self, timing, estimate_s=None):
        self.timing, self.estimate_s, self.estimated = timing, estimate_s, False

    def time(self, candidates, *args, **kwargs):
        for candidate in candidates[1:]:
            candidate.evidence = evidence(self.timing, candidate=candidate.name)

    def estimate(self, candidates):
        self.estimated = True
        for candidate, seconds in zip(candidates, self.estimate_s):
            candidate.estimate_s = seconds

    def fallback(self):
        return AnalyticCost()


def _candidates():
    noop = lambda *a: None  # noqa: E731  (the machine-independent model puts the tap gather at 3.1x)
    return [Candidate("dense", noop, 100_000_000, 0, 1), Candidate("tap-gather", noop, 30_000_000, 0, 3)]


def test_a_conclusive_timing_decides_and_no_estimate_is_made():
    cost = FixedCost(FASTER)
    choice, decision = choose_lowering(_candidates(), 0.1, cost, "Conv", (1, 4, 8, 8), (1, 4, 8, 8))
    assert choice.name == "tap-gather" and decision.by == "CPU time" and not cost.estimated
    choice, decision = choose_lowering(_candidates(), 0.1, FixedCost(SLOWER), "Conv", (1, 4, 8, 8), (1, 4, 8, 8))
    assert choice.name == "dense" and "below 1.1" in decision.reason


@pytest.mark.parametrize("estimates, expected", [((2.0, 1.0), "tap-gather"), ((1.0, 2.0), "dense")])
def test_an_inconclusive_layer_timing_is_decided_by_the_analytic_model(estimates, expected):
    cost = FixedCost(STRADDLES, estimates)
    choice, decision = choose_lowering(_candidates(), 0.1, cost, "Conv", (1, 4, 8, 8), (1, 4, 8, 8))
    assert cost.estimated and choice.name == expected and decision.fallback
    assert decision.by == "analytic model" and "timing inconclusive" in decision.reason


class Store(dict):
    """A dict with the get/put of the timing cache (the entry logic needs no file)."""

    def put(self, key, entry):
        self[key] = entry


def _measurement(label, timing, load=0.5):
    return Measurement("dense", {label: evidence(timing, load=load, candidate=label)}, {}, {}, None, 1, False, 0.0,
                       "decided")


def test_the_reuse_rule():
    assert not reuse_rule(None, "quiet", entry_present=False).use
    assert "older cache entry" in reuse_rule(None, "quiet").reason
    busy = evidence(FASTER, load=16.0)  # 8 per core: too busy for one-thread CPU time
    assert not reuse_rule(busy, 0.4).use and "measured again" in reuse_rule(busy, 0.4).reason
    assert reuse_rule(busy, 9.0).use  # no better evidence to be had now; judged inconclusive anyway
    # an inconclusive entry is used as it is: the analytic model decides, the same way every time
    assert reuse_rule(evidence(STRADDLES), 0.4).use and reuse_rule(evidence(FASTER, load=6.0), 0.4).use


def test_a_cache_filled_when_too_busy_is_measured_again_on_a_calmer_machine():
    store, measured = Store(), []

    def measure(labels, timing, load):
        measured.append(labels)
        return _measurement(labels[0], timing, load)

    keys, what = {"tap-gather": "k1"}, {"tap-gather": {"op": "Conv"}}
    first = compare_through_cache(store, keys, what, lambda labels: measure(labels, SLOWER, 16.0), lambda: 8.0)
    assert first["tap-gather"].source == "measured" and evidence_of(store["k1"]).load.per_core == 8.0
    again = compare_through_cache(store, keys, what, lambda labels: measure(labels, FASTER, 0.5), lambda: 8.0)
    assert again["tap-gather"].source == "timing cache" and len(measured) == 1
    quiet = compare_through_cache(store, keys, what, lambda labels: measure(labels, FASTER, 0.5), lambda: 0.3)
    assert quiet["tap-gather"].source == "measured" and "too busy" in quiet["tap-gather"].note
    assert evidence_of(store["k1"]).load.level == "quiet" and len(measured) == 2  # the quiet evidence replaced it
    assert describe_entry(store["k1"])["form"] == "evidence" and describe_entry({"seconds": 1.0})["form"] == "older"


def test_an_older_entry_without_evidence_is_never_reused():
    store = Store(k1={"seconds": 1e-3, "spread": 0.5, "runs": 5})
    found = compare_through_cache(store, {"x": "k1"}, {"x": {}}, lambda labels: _measurement("x", FASTER))
    assert found["x"].source == "measured" and store["k1"] == entry_for(found["x"].evidence, {})
    assert evidence_of(store["k1"]) == found["x"].evidence  # decided from the evidence exactly as stored


def _forbid_timing(monkeypatch):
    import sparsecc.measure.sessions as sessions

    def no(*args, **kwargs):
        raise AssertionError("the analytic cost model read the timing cache or timed something")

    monkeypatch.setattr(TimingCache, "get", no)
    monkeypatch.setattr(sessions, "measure_models", no)
    monkeypatch.setattr("sparsecc.measure.measure_models", no)


@pytest.mark.parametrize("recipe", ["groupwise-25", "deprune-bh"])
def test_the_analytic_cost_model_reads_no_cache_and_gives_the_same_bytes_with_any_cache_or_none(tmp_path,
                                                                                                 monkeypatch, recipe):
    if recipe.startswith("deprune"):
        pytest.importorskip("torch")
        import dsc_nets

        model = tmp_path / "m.onnx"
        model.write_bytes(dsc_nets.export(dsc_nets.build("eff")).SerializeToString())
    else:
        model = _three_convs(tmp_path / "m.onnx")
    # a cache full of evidence that would decide otherwise if it were read: every lowering conclusively faster
    filled = tmp_path / "filled.json"
    compile_model(model, recipe, tmp_path / "fill", timing_cache=filled)
    entries = json.loads(filled.read_text())
    for entry in entries["entries"].values():
        if entry.get("form") == "paired-evidence/1":
            entry["evidence"]["cpu"] = entry["evidence"]["wall"] = {"estimate": 9.0, "low": 8.0, "high": 10.0}
    filled.write_text(json.dumps(entries))
    _forbid_timing(monkeypatch)
    outputs = []
    for name, cache in (("none", "off"), ("filled", filled), ("other", tmp_path / "absent.json")):
        compile_model(model, recipe, tmp_path / name, cost_model="analytic", timing_cache=cache)
        outputs.append((tmp_path / name / "model.onnx").read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    assert not (tmp_path / "absent.json").exists()


def test_cli_cache_show_path_clear(tmp_path, cli):
    cache = tmp_path / "cache.json"
    model = _three_convs(tmp_path / "m.onnx")
    cli("compile", model, "--recipe", "groupwise-25", "-o", tmp_path / "a", "--timing-cache", cache, check=True)
    path = cli("cache", "path", "--timing-cache", cache, check=True)
    assert path.stdout.strip() == str(cache)
    shown = json.loads(cli("cache", "show", "--timing-cache", cache, "--json", check=True).stdout)
    assert shown["entries"] and all(e["form"] in ("evidence", "calibration") for e in shown["entries"])
    text = cli("cache", "show", "--timing-cache", cache, check=True).stdout
    assert "CPU speedup [90% CI]" in text and "tap-gather" in text
    cleared = cli("cache", "clear", "--timing-cache", cache, check=True)
    assert "cleared" in cleared.stdout and not cache.exists()
    off = cli("cache", "show", "--timing-cache", "off")
    assert off.returncode == 2 and "off" in off.stderr


def test_cli_cache_show_tells_apart_entries_that_read_alike(tmp_path, cli):
    """Every speed-target entry measured "dense vs pruned", and two layer entries differ only at the end of a
    long description: each entry is listed with a key no other starts with, and its description whole."""
    cache = TimingCache(tmp_path / "cache.json")
    model_pair = {"what": "speed-target model", "baseline": "dense", "candidate": "pruned"}
    layer = {"op": "Conv", "lowering": "tap-gather", "baseline": "dense", "in": [1, 64, 56, 56], "dtype": "float32"}
    keys = {"0123456789abcdef0000": model_pair, "0123456789abcdef1111": model_pair,
            "fedcba9876543210aaaa": {**layer, "out": [1, 64, 56, 56]},
            "fedcba9876543210bbbb": {**layer, "out": [1, 64, 28, 28]}}
    for key, what in keys.items():
        cache.put(key, entry_for(evidence(FASTER), what))
    cache.save()
    text = cli("cache", "show", "--timing-cache", cache.path, check=True).stdout
    listed = [line for line in text.splitlines() if line.startswith(("0123", "fedc"))]
    assert [line.split()[0] for line in listed] == ["0123456789abcdef0", "0123456789abcdef1",
                                                    "fedcba9876543210a", "fedcba9876543210b"]
    assert "out=[1, 64, 56, 56]" in text and "out=[1, 64, 28, 28]" in text  # not cut off
    continued = [line for line in text.splitlines() if line.startswith(" ") and "=" in line]
    assert len(continued) == 2  # the two long descriptions go on over a second line: the table stays narrow


def test_cli_timing_cache_and_cost_model_options(tmp_path, cli):
    model = _three_convs(tmp_path / "m.onnx")
    cache = tmp_path / "cache.json"
    for out in ("a", "b"):
        cli("compile", model, "--recipe", "groupwise-25", "-o", tmp_path / out, "--timing-cache", cache, check=True)
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    assert cache.exists()
    bad = cli("compile", model, "--recipe", "groupwise-25", "-o", tmp_path / "c", "--cost-model", "magic")
    assert bad.returncode == 2 and "--cost-model" in bad.stderr


def test_the_calibration_prices_a_layer_by_the_reference_layer_nearest_to_it():
    from sparsecc.lowering.calibration import Calibration, layer_geometry
    from sparsecc.measure import LoadReading

    assert layer_geometry((1, 64, 56, 56), (1, 64, 56, 56)) == (4, 64, 3136)
    assert layer_geometry((1, 64, 56, 56), (1, 128, 28, 28)) == (4, 64, 784)  # positions of the output
    assert layer_geometry((8, 512), (8, 256)) == (2, 512, 8)
    load = LoadReading((0.5,) * 3, (0.5,) * 3, 2)
    samples = {"tap-gather": [((4, 64, 3136), 0.8), ((4, 128, 784), 1.2), ((4, 512, 49), 1.6), ((2, 512, 8), 3.0)]}
    calibration = Calibration({"tap-gather": 1.4}, samples, 1, load, "2026-01-01T00:00:00+00:00")
    assert calibration.factor("tap-gather", (4, 64, 3136)) == 0.8    # a stage-1 layer: the stage-1 reference
    assert calibration.factor("tap-gather", (4, 96, 2000)) == 0.8    # nearer 64@56x56 than 128@28x28
    assert calibration.factor("tap-gather", (4, 256, 196)) == 1.2    # ties go to the first measured
    assert calibration.factor("tap-gather", (4, 1024, 49)) == 1.6
    assert calibration.factor("tap-gather", (2, 64, 3136)) == 3.0    # another rank only as a last resort
    assert calibration.factor("tap-gather") == 1.4                   # no geometry: the median
    assert calibration.factor("channel-gather", (4, 64, 3136)) == 1.0  # never measured
    again = Calibration.from_entry(calibration.to_entry())
    assert again.samples == samples and again.factors == calibration.factors
    # an estimate through the calibration reads the candidate's geometry, set where the layer is chosen
    noop = lambda *a: None  # noqa: E731
    near, far = (Candidate("tap-gather", noop, 10, 0, 1, geometry=g) for g in ((4, 64, 3136), (4, 512, 49)))
    AnalyticCost(calibration).estimate([near, far])
    assert far.estimate_s == pytest.approx(2.0 * near.estimate_s)
    cost = FixedCost(FASTER)
    candidates = _candidates()
    choose_lowering(candidates, 0.1, cost, "Conv", (1, 64, 56, 56), (1, 64, 56, 56))
    assert {c.geometry for c in candidates} == {(4, 64, 3136)}


def test_a_calibration_may_veto_a_lowering_the_fixed_model_takes_but_never_take_one_it_does_not():
    # calibrations measured minutes apart moved a layer's estimate by 10%: the fixed model bounds it
    from sparsecc.lowering.cost import fallback_speedup

    base, lowered = _candidates()
    fixed = analytic_seconds(base) / analytic_seconds(lowered)
    assert fixed == pytest.approx(3.124, rel=0.001)
    for factor, expected in ((0.5, fixed), (1.0, fixed), (2.0, fixed / 2.0)):
        base.estimate_s, lowered.estimate_s = analytic_seconds(base), analytic_seconds(lowered) * factor
        assert fallback_speedup(base, lowered) == pytest.approx(expected)
    # in a choice: a calibration that prices the lowering at 6.2x still reads 3.1x, one at 1.0x vetoes it
    cost = FixedCost(STRADDLES, (analytic_seconds(base), analytic_seconds(lowered) / 2.0))
    candidates = _candidates()
    choice, decision = choose_lowering(candidates, 0.1, cost, "Conv", (1, 4, 8, 8), (1, 4, 8, 8))
    assert choice.name == "tap-gather" and "3.124x" in decision.reason and "6.248x" not in decision.reason
    cost = FixedCost(STRADDLES, (analytic_seconds(base), analytic_seconds(base)))
    choice, decision = choose_lowering(_candidates(), 0.1, cost, "Conv", (1, 4, 8, 8), (1, 4, 8, 8))
    assert choice.name == "dense" and decision.fallback


def test_a_calibration_of_the_earlier_form_is_kept_in_the_file_but_never_used():
    # one factor per lowering (form /1) mispriced whole stages; it stays a valid entry (listed, cleared
    # by `cache clear`, not reported as a damaged file) and is never read as this version's calibration
    from sparsecc.lowering.calibration import Calibration
    from sparsecc.lowering.timing_cache import CALIBRATION_FORM, valid_entry

    earlier = {"form": "analytic-calibration/1", "factors": {"tap-gather": 1.3}, "samples": {"tap-gather": [1.3]},
               "threads": 1, "load": {"before": [0.5] * 3, "after": [0.5] * 3, "cores": 2}, "taken_at": "2026-01-01"}
    assert CALIBRATION_FORM != earlier["form"] and valid_entry(earlier)
    assert Calibration.from_entry(earlier) is None
    assert describe_entry(earlier)["form"] == "calibration"
    assert not valid_entry({**earlier, "factors": {"tap-gather": float("nan")}})
