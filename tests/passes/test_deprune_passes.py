"""DEPrune passes: plan, dead-channel removal and every depthwise lowering, verified against the masked model."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import init, make_model, randn
from onnx import helper

from sparsecc.backends.ort import OrtBackend
from sparsecc.errors import OptionError
from sparsecc.model import model_from_proto
from sparsecc.lowering import LayerToLower, get_lowering
from sparsecc.lowering.depthwise import dr_width
from sparsecc.passmanager import PassContext, PassManager, make_pass
from sparsecc.recipe import load_recipe

TOLERANCE = 1e-4  # max |rewritten - masked| <= TOLERANCE * max |masked|


def _same(reference, candidate, seed=3):
    backend = OrtBackend(threads=1)
    a, b = backend.load(reference.to_bytes()), backend.load(candidate.to_bytes())
    rng = np.random.default_rng(seed)
    feeds = {s.name: rng.standard_normal(reference.input_shapes[s.name]).astype(np.float32) for s in a.inputs}
    ref, out = a.run(feeds), b.run(feeds)
    for name in ref:
        scale = float(np.abs(ref[name]).max())
        assert scale > 0
        assert float(np.abs(ref[name] - out[name]).max()) <= TOLERANCE * scale


def _dw_model(channels=64, size=10, kernel=3, zeros=0.8, bias=True, seed=0, **attrs):
    rng = np.random.default_rng(seed)
    weight = randn(channels, 1, kernel, kernel)
    weight[rng.random(weight.shape) < zeros] = 0.0
    inputs = ["x", "W"] + (["B"] if bias else [])
    inits = [init("W", weight)] + ([init("B", randn(channels))] if bias else [])
    node = helper.make_node("Conv", inputs, ["y"], name="dw", group=channels, **attrs)
    return make_model([node], [("x", [2, channels, size, size])], [("y", [2, channels, None, None])], inits)


CASES = {
    "3x3-pad1": dict(pads=[1, 1, 1, 1]),
    "stride2": dict(pads=[1, 1, 1, 1], strides=[2, 2]),
    "dilation2": dict(pads=[2, 2, 2, 2], dilations=[2, 2]),
    "5x5-asym": dict(kernel=5, pads=[2, 1, 1, 2]),
    "7x7-same": dict(kernel=7, auto_pad="SAME_UPPER"),
    "40ch-no-bias": dict(channels=40, pads=[1, 1, 1, 1], bias=False),
}


@pytest.mark.parametrize("lowering", ["dr-grouped", "dr-compact", "kernel-crop"])
@pytest.mark.parametrize("case", list(CASES))
def test_forced_lowering_is_exact(lowering, case):
    options = dict(CASES[case])
    if lowering == "kernel-crop":  # zeros in the whole outer ring of taps, so there is something to crop
        options["zeros"] = 0.3
    proto = _dw_model(**options)
    if lowering == "kernel-crop":
        k = options.get("kernel", 3)
        w = next(i for i in proto.graph.initializer if i.name == "W")
        from onnx import numpy_helper
        values = numpy_helper.to_array(w).copy()
        values[:, :, 0, :] = 0
        values[:, :, :, k - 1] = 0
        w.CopyFrom(numpy_helper.from_array(values, "W"))
    model = model_from_proto(proto)
    ctx = PassContext(model.copy())
    (record,) = PassManager([make_pass("deprune-rewrite", lowering=lowering)]).run(ctx).records  # the manager verifies
    assert record.to_dict()["verification"]["passed"]
    info = ctx.details_of("deprune-rewrite")["layers"]["dw"]
    assert info["lowering"] == lowering, info
    ops = sorted(n.op for n in ctx.model.graph.nodes)
    assert ops == {"dr-grouped": ["Conv"], "dr-compact": ["Conv", "Conv", "Gather"], "kernel-crop": ["Conv"]}[lowering]
    _same(model, ctx.model)
    if lowering == "dr-grouped":
        conv = ctx.model.graph.nodes[0]
        assert conv.attrs["group"] == options.get("channels", 64) // dr_width(options.get("channels", 64), 32)
    if lowering == "kernel-crop":
        k = options.get("kernel", 3)
        assert list(ctx.model.graph.nodes[0].inputs[1].values.shape[2:]) == [k - 1, k - 1]


def test_dr_width_falls_back_to_a_divisor():
    assert dr_width(64, 32) == 32 and dr_width(40, 32) == 20 and dr_width(24, 32) == 24 and dr_width(37, 32) == 1


def _view(weight, channels=64):
    node = model_from_proto(_dw_model(channels=channels)).graph.nodes[0]
    return LayerToLower(node, None, weight, None, (1, channels, 10, 10), (1, channels, 10, 10), {"width": 32})


def test_dr_refuses_1x1_and_prime_channel_counts_with_reasons():
    assert "1x1" in get_lowering("dr-grouped").candidate(_view(np.ones((64, 1, 1, 1), np.float32)))
    reason = get_lowering("dr-compact").candidate(_view(np.ones((37, 1, 3, 3), np.float32), channels=37))
    assert reason == "no sub-GEMM width above 1 divides 37 channels"
    assert get_lowering("kernel-crop").candidate(_view(np.zeros((64, 1, 3, 3), np.float32))) == "every tap is pruned"


@pytest.mark.parametrize("lowering", ["dr-grouped", "dr-compact", "kernel-crop"])
def test_forced_lowering_on_fp16_weights_is_verified_and_stays_fp16(lowering):
    from onnx import numpy_helper
    from onnxconverter_common import float16

    proto = _dw_model(zeros=0.5, pads=[1, 1, 1, 1])
    w = next(i for i in proto.graph.initializer if i.name == "W")
    values = numpy_helper.to_array(w).copy()
    values[:, :, 0, :] = 0  # a row no channel keeps, so kernel-crop applies
    w.CopyFrom(numpy_helper.from_array(values, "W"))
    ctx = PassContext(model_from_proto(float16.convert_float_to_float16(proto)))
    (record,) = PassManager([make_pass("deprune-rewrite", lowering=lowering)]).run(ctx).records
    result = record.to_dict()
    assert result["status"] == "ran" and result["verification"]["passed"]
    assert ctx.details_of("deprune-rewrite")["layers"]["dw"]["lowering"] == lowering
    floats = [t for t in ctx.model.graph.tensors().values()
              if hasattr(t, "values") and np.issubdtype(np.asarray(t.values).dtype, np.floating)]
    assert floats and all(np.asarray(t.values).dtype == np.float16 for t in floats)


def test_why_each_lowering_did_not_apply_is_recorded_for_trace():
    from sparsecc.passmanager import trace_lines

    ctx = PassContext(model_from_proto(_dw_model(channels=37, zeros=0.0, pads=[1, 1, 1, 1])))
    (record,) = PassManager([make_pass("deprune-rewrite", cost_model="analytic")]).run(ctx).records
    info = ctx.details_of("deprune-rewrite")["layers"]["dw"]
    assert info["lowering"] == "depthwise" and info["reason"] == "no other lowering applies"
    assert set(info["not_applicable"]) == {"kernel-crop", "dr-grouped", "dr-compact"}
    lines = trace_lines(record)
    assert "deprune-rewrite: dw: dr-grouped did not fire: no sub-GEMM width above 1 divides 37 channels" in lines
    assert "deprune-rewrite: dw: kernel-crop did not fire: some channel keeps a tap in every kernel row and column" \
        in lines


def test_cost_model_keeps_plain_depthwise_unless_faster():
    ctx = PassContext(model_from_proto(_dw_model()))
    PassManager([make_pass("deprune-rewrite", cost_model="analytic")]).run(ctx)
    info = ctx.details_of("deprune-rewrite")["layers"]["dw"]
    # DR does width x more MACs than the depthwise it replaces: never cheaper on the analytic CPU model
    assert info["lowering"] == "depthwise" and info["macs"]["dr-grouped"] == 32 * info["macs"]["depthwise"]


def test_choices_go_through_the_timing_cache_and_follow_the_compile_wide_cost_model(tmp_path):
    from sparsecc.lowering import TimingCache

    model = model_from_proto(_dw_model(pads=[1, 1, 1, 1]))
    decisions = []
    for _ in range(2):  # a second compile with the same cache measures nothing: the same decision
        ctx = PassContext(model.copy(), timing_cache=TimingCache(tmp_path / "timings.json"))
        PassManager([make_pass("deprune-rewrite", runs=2)]).run(ctx)
        info = ctx.details_of("deprune-rewrite")["layers"]["dw"]
        decisions.append((info["timing"], info["lowering"], info["candidates_ms"]))
        assert ctx.details_of("deprune-rewrite")["cost_model"] == "measured"
    assert "timing cache" not in decisions[0][0] and decisions[1][0] == "timing cache"
    assert decisions[1][1:] == decisions[0][1:]
    ctx = PassContext(model.copy(), cost_model="analytic")  # compile --cost-model analytic
    PassManager([make_pass("deprune-rewrite")]).run(ctx)
    assert ctx.details_of("deprune-rewrite")["cost_model"] == "analytic"
    assert ctx.details_of("deprune-rewrite")["layers"]["dw"]["timing"] == "analytic"


def test_bad_options():
    with pytest.raises(OptionError):
        make_pass("deprune-rewrite", lowering="magic")
    with pytest.raises(OptionError):
        make_pass("plan-deprune", method="magic")
    with pytest.raises(OptionError):
        make_pass("plan-deprune", dw_ratio=1.5)


torch = pytest.importorskip("torch")
import dsc_nets  # noqa: E402


def _run(proto, recipe_passes, disabled=("deprune-model-check",)):
    """Run passes; the final timing check is off unless a test is about it (tiny nets time as noise)."""
    ctx = PassContext(model_from_proto(proto))
    records = PassManager(recipe_passes, disabled=disabled).run(ctx).records
    return ctx, {r.name: r.to_dict() for r in records}


@pytest.mark.parametrize("recipe", ["deprune", "deprune-b", "deprune-bh"])
def test_recipes_on_a_mobilenetv2_like_net(recipe):
    proto = dsc_nets.export(dsc_nets.build("v2"))
    ctx, records = _run(proto, load_recipe(recipe).build_passes())
    plan = records["plan-deprune"]["details"]["dw"]
    assert len(plan) == 3
    sizes = {name: len(f["sub_gemm_ratios"]) for name, f in plan.items()}  # 1, 2, 3 sub-GEMMs of 32 x 288
    total = sum(f["dw_ratio"] * sizes[name] for name, f in plan.items()) / sum(sizes.values())
    assert total == pytest.approx(0.8, abs=0.04)  # HSR keeps the model's ratio
    for facts in plan.values():
        # a layer moves by at most one tile of 32 vectors per 288-vector sub-GEMM under HSR
        assert facts["dw_ratio"] == pytest.approx(0.8, abs=0.12 if recipe == "deprune-bh" else 0.01)
        if recipe != "deprune":
            assert facts["imbalance"] <= 0.01  # balanced sub-GEMMs (up to rounding of a narrower last one)
        if recipe == "deprune-bh":
            assert facts["hsr"] in ("u", "o")
            full = [r for r in facts["sub_gemm_ratios"]]
            assert all(abs(r * 288 - round(r * 288 / 32) * 32) < 0.05 for r in full[:1])  # tile-aligned
    dead = records["deprune-dead-channels"]
    assert dead["status"] == "ran" and dead["verification"]["passed"]
    _same(ctx.masked, ctx.model)
    removed = ctx.details_of("deprune-dead-channels")
    assert sum(d["removed"] for d in removed.values()) > 0
    pw1 = [n for n in ctx.model.graph.nodes if n.name.endswith("pw1.0/Conv")]
    assert sum(n.inputs[1].values.shape[0] for n in pw1) < 64 + 96  # PW1 filters of dead channels are gone


@pytest.mark.parametrize("kind", ["eff", "v3"])
def test_dead_channels_under_squeeze_excitation_go_through_a_side_branch(kind):
    proto = dsc_nets.export(dsc_nets.build(kind))
    ctx, records = _run(proto, [make_pass("plan-deprune", method="dcp", dw_ratio=0.9, pw_ratio=0.0),
                                make_pass("apply-plan"), make_pass("deprune-dead-channels")])
    record = records["deprune-dead-channels"]
    assert record["status"] == "ran" and record["verification"]["passed"]
    details = ctx.details_of("deprune-dead-channels")
    assert sum(d["removed"] for d in details.values()) > 0 and all(d["se_branch"] for d in details.values())
    branch = [n for n in ctx.model.graph.nodes if "dead_se" in n.name]
    assert sorted({n.op for n in branch}) == ["Add", "Conv", "HardSigmoid" if kind == "v3" else "Sigmoid"]
    _same(ctx.masked, ctx.model)


def test_dw_feeding_concat_keeps_dead_channels_with_reason():
    proto = dsc_nets.export(dsc_nets.build("concat"))
    ctx, records = _run(proto, [make_pass("plan-deprune", method="dcp", dw_ratio=0.9, pw_ratio=0.0),
                                make_pass("apply-plan"), make_pass("deprune-dead-channels")])
    reasons = [s["reason"] for s in records["deprune-dead-channels"]["skipped"]]
    assert reasons and all("does not feed a pointwise conv" in r for r in reasons)


@pytest.mark.parametrize("kind", ["v2", "eff"])
def test_fp16_model_dead_channels_are_folded_within_fp16_tolerances(kind):
    """FP16 dead-channel folding changes FP16 rounding (~4e-4 relative measured): inside FP16's tolerance
    (1e-2 relative, sparsecc.verify.DTYPE_TOLERANCES), so it is allowed and verified at that tolerance."""
    from onnxconverter_common import float16

    proto = float16.convert_float_to_float16(dsc_nets.export(dsc_nets.build(kind)))
    from sparsecc.passes.canonicalize import CANONICAL_PASSES

    canonical = [make_pass(n) for n in CANONICAL_PASSES]
    ctx, records = _run(proto, canonical + [
        make_pass("plan-deprune", method="bwt", dw_ratio=0.9), make_pass("apply-plan"), make_pass("remove-filters"),
        make_pass("deprune-dead-channels"), make_pass("deprune-rewrite", cost_model="analytic")])
    assert records["remove-filters"]["status"] == "ran" and records["remove-filters"]["verification"]["passed"]
    dead = records["deprune-dead-channels"]
    assert dead["status"] == "ran" and not dead["skipped"]
    assert dead["verification"]["passed"] and dead["verification"]["dtype"] == "float16"
    assert dead["verification"]["rtol"] == 1e-2
    assert sum(d["removed"] for d in ctx.details_of("deprune-dead-channels").values()) > 0
    floats = [t for t in ctx.model.graph.tensors().values()
              if hasattr(t, "values") and np.issubdtype(np.asarray(t.values).dtype, np.floating)]
    assert all(np.asarray(t.values).dtype == np.float16 for t in floats)  # the SE side branch too
    assert all(d["lowering"] == "depthwise" for d in ctx.details_of("deprune-rewrite")["layers"].values())


def test_depth_multiplier_is_left_out_with_reason():
    proto = dsc_nets.export(dsc_nets.build("v2", multiplier=2))
    _, records = _run(proto, [make_pass("plan-deprune", pw_ratio=0.0)])
    assert any("depth multiplier 2" in s["reason"] for s in records["plan-deprune"]["skipped"])


def test_detect_mode_on_taps_pruned_elsewhere_dynamo_export():
    net = dsc_nets.build("v2")
    rng = np.random.default_rng(0)
    with torch.no_grad():  # prune 80% of the depthwise taps "elsewhere", by magnitude
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d) and m.groups > 1:
                w = m.weight.abs().flatten()
                m.weight[m.weight.abs() <= w.kthvalue(int(0.8 * w.numel())).values] = 0.0
    del rng
    proto = dsc_nets.export(net, dynamo=True)
    ctx, records = _run(proto, load_recipe("deprune-zeros").build_passes())
    assert records["deprune-dead-channels"]["status"] == "ran"
    _same(ctx.masked, ctx.model)


def test_readme_deprune_recipe_parses():
    import re
    from pathlib import Path

    from sparsecc.recipe import parse_recipe

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = re.search(r"```yaml\n(name: my-deprune.*?)```", text, re.S).group(1)
    recipe = parse_recipe(example, "README")
    assert [p.name for p in recipe.build_passes()][-6:] == ["plan-deprune", "apply-plan", "remove-filters",
                                                             "deprune-dead-channels", "deprune-rewrite",
                                                             "deprune-model-check"]


def test_cpu_recipe_empties_whole_channels_and_removes_them_exactly():
    proto = dsc_nets.export(dsc_nets.build("eff"))
    ctx, records = _run(proto, load_recipe("deprune-cpu").build_passes())
    plan = records["plan-deprune"]["details"]["dw"]
    assert all(f["dw_ratio"] == pytest.approx(0.8, abs=0.02) for f in plan.values())
    # half the budget of 0.8 * 9 taps on whole channels: floor(0.4 * M) channels per layer at least
    dead = [f["dead_channels"] for f in plan.values()]
    assert all(d >= floor for d, floor in zip(dead, [12, 25, 38]))
    details = ctx.details_of("deprune-dead-channels")
    # kept counts rounded up to multiples of 8
    assert [d["removed"] for d in details.values()] == [m - -(-(m - d) // 8) * 8 for m, d in zip([32, 64, 96], dead)]
    _same(ctx.masked, ctx.model)
    with pytest.raises(OptionError):
        make_pass("plan-deprune", method="bwt-hsr", channel_share=0.5)


@pytest.mark.parametrize("compiled_faster", [True, False])
def test_model_check_keeps_the_masked_model_when_the_compiled_one_is_slower(monkeypatch, compiled_faster):
    import sparsecc.passes.deprune_model_check as deprune

    def timed(reference, candidate, runs, threads, cache=None, labels=("dense", "rewritten"),
              fallback="every layer was left dense"):
        kept = compiled_faster
        return {"kept": kept, "reason": f"whole model: {labels[1]} 1 ms vs {labels[0]} 2 ms: "
                                        f"{'kept' if kept else 'not faster, so ' + fallback}"}

    monkeypatch.setattr(deprune, "whole_model_check", timed)
    from sparsecc.passes.canonicalize import CANONICAL_PASSES

    proto = dsc_nets.export(dsc_nets.build("v2"))
    ctx, records = _run(proto, [make_pass(n) for n in CANONICAL_PASSES] + [
        make_pass("plan-deprune"), make_pass("apply-plan"), make_pass("remove-filters"),
        make_pass("deprune-dead-channels"), make_pass("deprune-model-check")], disabled=())
    record = records["deprune-model-check"]
    masked_convs = sum(n.inputs[1].values.size for n in ctx.masked.graph.nodes if n.op == "Conv")
    convs = sum(n.inputs[1].values.size for n in ctx.model.graph.nodes if n.op == "Conv")
    if compiled_faster:
        assert record["status"] == "unchanged" and convs < masked_convs
    else:
        assert record["status"] == "ran" and convs == masked_convs and "masked model is kept" in record["notes"][0]
    _same(ctx.masked, ctx.model)
