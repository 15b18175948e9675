"""Zero-detect mode: a model pruned elsewhere compiles with the zeros it already has."""

from __future__ import annotations

import json

import onnx
from graphs import init, make_model, randn, save
from onnx import helper, numpy_helper


def _pruned_elsewhere(tmp_path):
    """Conv 8->16 3x3 -> Relu -> Conv 16->16 3x3 (half its im2col rows zero) -> Relu -> Conv 16->8 1x1."""
    middle = randn(16, 16, 3, 3)
    rows = middle.reshape(16, -1)
    rows[:, ::2] = 0.0  # every other (c_in, i, j) row zero across all output channels
    nodes = [helper.make_node("Conv", ["x", "W0"], ["a"], pads=[1, 1, 1, 1], name="first"),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "W1"], ["b"], pads=[1, 1, 1, 1], name="middle"),
             helper.make_node("Relu", ["b"], ["br"]),
             helper.make_node("Conv", ["br", "W2"], ["y"], name="last")]
    inits = [init("W0", randn(16, 8, 3, 3)), init("W1", rows.reshape(16, 16, 3, 3)), init("W2", randn(8, 16, 1, 1))]
    return save(make_model(nodes, [("x", [1, 8, 20, 20])], [("y", [1, 8, 20, 20])], inits), tmp_path / "m.onnx")


def test_zeros_recipe_plans_exactly_the_existing_zeros_and_keeps_the_function(cli, tmp_path):
    path = _pruned_elsewhere(tmp_path)
    out = tmp_path / "out"
    cli("compile", path, "--recipe", "zeros", "-o", out, check=True)
    report = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert [(w["layer"], w["pattern"], w["kept_fraction"]) for w in plan["weights"]] == [("middle", "group-wise", 0.5)]
    # nothing is pruned on top of what was there: the compiled model equals the input model
    rewrote = next(p for p in report["passes"] if p["name"] == "groupwise-rewrite")["status"] == "ran"
    # compared with the masked original when the rewrite changed the graph; when the cost model kept
    # it dense the compiled model is the masked original, and the exact passes' own checks stand
    assert report["verification"]["against"] == "masked original" if rewrote else \
        report["verification"]["against"].startswith("graph before each exact pass")
    assert report["verification"]["exact"]["passed"]
    assert report["verification"]["agreement_with_unpruned"]["worst_relative_error"] < 1e-5
    rewrite = next(p for p in report["passes"] if p["name"] == "groupwise-rewrite")
    decision = rewrite["details"]["layers"]["middle"]  # whatever the cost model chose, it says why
    assert decision["lowering"] and decision["reason"]


def test_detected_zero_rows_become_a_smaller_gemm(cli, tmp_path):
    path = _pruned_elsewhere(tmp_path)
    recipe = tmp_path / "forced.yaml"
    recipe.write_text("name: forced\npasses:\n  - plan-from-zeros\n  - apply-plan\n"
                      "  - groupwise-rewrite: {lowering: tap-gather}\n")
    out = tmp_path / "out"
    cli("compile", path, "--recipe", recipe, "-o", out, check=True)
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["exact"]["passed"]
    macs = {row["node"]: row["macs"] for row in report["before"]["layers"]}
    # middle (16x16x3x3 on 20x20) becomes: one-hot 3x3 depthwise shift of the 72 kept planes
    # (72 x 400 x 9 MACs) + a 1x1 conv with K' = 72 (16 x 72 x 400 MACs)
    rewritten = 72 * 400 * 9 + 16 * 72 * 400
    assert report["summary"]["macs_after"] == report["summary"]["macs_before"] - macs["middle"] + rewritten
    compiled = onnx.load(str(out / "model.onnx"))
    shapes = sorted(tuple(numpy_helper.to_array(t).shape) for t in compiled.graph.initializer
                    if numpy_helper.to_array(t).ndim == 4)
    assert (16, 72, 1, 1) in shapes  # K' = 72 of the 144 im2col rows


def test_groupwise_rewrite_keeps_dynamic_input_dims_and_is_checked_at_a_second_shape(cli, tmp_path):
    """The tap-gather lowering is shape-generic: the model keeps its symbolic H and W, runs at another size,
    and the compile itself checks it there."""
    import numpy as np
    import onnxruntime as ort

    proto = onnx.load(str(_pruned_elsewhere(tmp_path)))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    out_dims[2].dim_param, out_dims[3].dim_param = "H", "W"
    path = tmp_path / "dynamic.onnx"
    onnx.save(proto, str(path))
    recipe = tmp_path / "forced.yaml"
    recipe.write_text("name: forced\npasses:\n  - plan-from-zeros\n  - apply-plan\n"
                      "  - groupwise-rewrite: {lowering: tap-gather}\n")
    out = tmp_path / "out"
    cli("compile", path, "--recipe", recipe, "-o", out, "--shape", "x:1x8x12x12", check=True)
    report = json.loads((out / "report.json").read_text())
    assert report["specialized_input_shapes"] == {}
    assert report["verification"]["second_shape"]["shapes"] == {"x": [1, 8, 44, 44]}
    assert report["verification"]["second_shape"]["passed"] is True
    compiled = onnx.load(str(out / "model.onnx"))
    assert [d.dim_param for d in compiled.graph.input[0].type.tensor_type.shape.dim][2:] == ["H", "W"]
    assert any(n.name.startswith("groupwise") or "tap" in n.name for n in compiled.graph.node)
    x = np.random.default_rng(1).standard_normal((1, 8, 20, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    # canonicalisation alone does not depend on sizes: dynamic dims stay dynamic
    cli("compile", path, "-o", tmp_path / "none", "--shape", "x:1x8x12x12", check=True)
    kept = onnx.load(str(tmp_path / "none" / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in kept][2:] == ["H", "W"]


