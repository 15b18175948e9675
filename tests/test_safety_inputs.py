"""The safety probe, inputs: bad and hostile models, external data, shapes, recipes, plans, dump folders.

Every case must end cleanly (tests/probe.py): a model ONNX Runtime refuses is a user error naming the
node, sizes are checked before anything is allocated, a plugin node that does not fit its op never
reaches its reference, and nothing prints a traceback or kills the process.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from graphs import conv_bn_relu_fc, save
from hostile import (alias_bomb_recipe, constant_with_external_data, custom_domain_op, duplicate_node_names,
                     dynamic_image_model, external_weights, fp16_weights_fp32_input, huge_declared_external_tensor,
                     kernel_larger_than_input, non_finite_weights, plan_files, plugin_conv_model, plugin_model,
                     string_input, subgraph_with_external_data, truncated_external_data, zip_bomb_plan)
from probe import Outcome, check, lost, run_inprocess, run_subprocess, snapshot


def _compile(capsys, tmp_path, model, *extra, name="case"):
    code, _, err = run_inprocess(capsys, "compile", model, "-o", tmp_path / f"out-{name}", "--timing-cache", "off",
                                 *extra)
    return code, err


# -- models ONNX Runtime refuses: user errors naming the node ---------------------------------------------------

ORT_REFUSALS = {
    "duplicate-node-names": (duplicate_node_names, "node 'twin'"),
    "custom-domain-op": (custom_domain_op, "com.example:Mystery"),
    "string-input": (string_input, "input 's' holds strings"),
    "kernel-larger-than-input": (kernel_larger_than_input, "node 'conv0' (Conv)"),
    "fp16-weights-fp32-input": (fp16_weights_fp32_input, "node 'conv0' (Conv)"),
}


@pytest.mark.parametrize("case", sorted(ORT_REFUSALS))
def test_a_model_onnx_runtime_refuses_is_a_user_error_naming_the_node(capsys, tmp_path, case):
    build, phrase = ORT_REFUSALS[case]
    model = save(build(), tmp_path / f"{case}.onnx")
    before = snapshot(tmp_path)
    code, err = _compile(capsys, tmp_path, model)
    check(Outcome(case, "bad input", code, err, (2,), phrase, lost(before, snapshot(tmp_path))))
    assert "ONNX Runtime cannot" in err or "holds strings" in err
    assert not (tmp_path / "out-case").exists()


@pytest.mark.parametrize("case", ["constant", "subgraph"])
def test_constant_and_subgraph_external_data_compile(capsys, tmp_path, case):
    model = constant_with_external_data(tmp_path) if case == "constant" else subgraph_with_external_data(tmp_path)
    code, err = _compile(capsys, tmp_path, model)
    check(Outcome(f"{case}-external-data", "bad input", code, err, (0,)))


def test_truncated_external_data_is_a_user_error(capsys, tmp_path):
    code, err = _compile(capsys, tmp_path, truncated_external_data(tmp_path))
    check(Outcome("truncated-external-data", "bad input", code, err, (2,), "which holds"))


# -- sizes checked before anything is allocated -----------------------------------------------------------------

def test_a_tensor_larger_than_its_file_is_refused_before_reading(capsys, tmp_path):
    code, err = _compile(capsys, tmp_path, huge_declared_external_tensor(tmp_path))
    check(Outcome("external-data-3.5-TiB", "sizes", code, err, (2,), "the limit"))
    assert "3.5 TiB" in err


@pytest.mark.parametrize("shape,phrase", [("x:1x4x100000x100000", "the limit is 25%"),
                                          ("x:99999999999999999999x4x6x6", "above the limit of 2147483647"),
                                          ("x:" + "1x" * 5000 + "1", "cannot read the shape")])
def test_an_input_shape_no_machine_holds_is_refused(capsys, tmp_path, shape, phrase):
    model = save(dynamic_image_model(), tmp_path / "dynamic.onnx")
    code, err = _compile(capsys, tmp_path, model, "--shape", shape)
    check(Outcome(f"shape-{shape[:24]}", "sizes", code, err, (2,), phrase))


# -- recipes ----------------------------------------------------------------------------------------------------

RECIPES = {
    "passes-5": ("name: r\npasses: 5\n", "'passes' must be a list"),
    "verify-strict": ("name: r\npasses: []\nverify: strict\n", "'verify' must be a mapping"),
    "layers-kinds-5": ("name: r\npasses:\n  - plan-groupwise: {keep: 0.5, layers: {kinds: 5}}\n  - apply-plan\n",
                       "'kinds' must be a name or a list of names"),
    "layers-5": ("name: r\npasses:\n  - plan-groupwise: {keep: 0.5, layers: 5}\n", "must be a mapping"),
    "keep-text": ("name: r\npasses:\n  - plan-groupwise: {keep: half}\n", "got 'half'"),
    "ratio-text": ("name: r\npasses:\n  - plan-filters: {ratio: most}\n", "option 'ratio' of pass 'plan-filters' "
                                                                          "must be a number"),
    "fold-number": ("name: r\npasses:\n  - groupwise-rewrite: {fold: 3}\n", "must be true or false"),
    "name-list": ("name: [1, 2]\npasses: []\n", "'name' must be text"),
    "alias-bomb": (alias_bomb_recipe(), "once its YAML aliases are expanded"),
    "two-megabytes": ("name: r\npasses: []\ndescription: '" + "x" * (2 << 20) + "'\n", "above the limit"),
}


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_a_malformed_recipe_is_refused_with_what_and_where(capsys, tmp_path, case):
    text, phrase = RECIPES[case]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    model = save(conv_bn_relu_fc(batch=1), tmp_path / "model.onnx")
    code, err = _compile(capsys, tmp_path, model, "-r", recipe)
    check(Outcome(f"recipe-{case}", "bad input", code, err, (2,), phrase))
    assert len(err) < 5000 and not (tmp_path / "out-case" / "report.json").exists()


def test_a_recipe_that_is_not_text_is_refused(capsys, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"\xff\xfe\x00name: r")
    model = save(conv_bn_relu_fc(batch=1), tmp_path / "model.onnx")
    code, err = _compile(capsys, tmp_path, model, "-r", recipe)
    check(Outcome("recipe-binary", "bad input", code, err, (2,), "cannot read the recipe"))


# -- plans ------------------------------------------------------------------------------------------------------

ENTRY = {"weight": "W", "layer": "conv0", "pattern": "group-wise", "shape": [8, 4, 3, 3], "mask_key": "mask0"}
PLANS = {
    "a-list": ([1, 2, 3], "a plan is a JSON object"),
    "masks-outside": ({"masks": "../../elsewhere.npz", "weights": []}, "'masks' must name a file beside"),
    "masks-absolute": ({"masks": "/etc/passwd", "weights": []}, "'masks' must name a file beside"),
    "shape-text": ({"masks": "plan.npz", "weights": [{**ENTRY, "shape": ["8", 4]}]}, "shape must be"),
    "entry-not-object": ({"masks": "plan.npz", "weights": ["W"]}, "weights[0] must be an object"),
    "huge-shape": ({"masks": "plan.npz", "weights": [{**ENTRY, "shape": [10**6, 10**6, 10**3]}]}, "the limit"),
}


@pytest.mark.parametrize("case", sorted(PLANS))
def test_a_malformed_plan_is_refused(capsys, tmp_path, case):
    data, phrase = PLANS[case]
    plan = plan_files(tmp_path, data)
    model = save(conv_bn_relu_fc(batch=1), tmp_path / "model.onnx")
    code, err = _compile(capsys, tmp_path, model, "-r", "detect", "--plan", plan)
    check(Outcome(f"plan-{case}", "bad input", code, err, (2,), phrase))


def test_a_compressed_mask_that_expands_beyond_its_shape_is_refused_before_reading(capsys, tmp_path):
    plan = zip_bomb_plan(tmp_path)
    model = save(conv_bn_relu_fc(batch=1), tmp_path / "model.onnx")
    code, err = _compile(capsys, tmp_path, model, "-r", "detect", "--plan", plan)
    check(Outcome("plan-zip-bomb", "sizes", code, err, (2,), "its shape needs 1"))


# -- --dump-dir -------------------------------------------------------------------------------------------------

def test_dump_dir_naming_a_file_is_refused_before_any_work(capsys, tmp_path):
    model = save(conv_bn_relu_fc(batch=1), tmp_path / "model.onnx")
    (tmp_path / "afile").write_text("mine")
    before = snapshot(tmp_path)
    code, err = _compile(capsys, tmp_path, model, "--dump-dir", tmp_path / "afile")
    check(Outcome("dump-dir-is-a-file", "bad input", code, err, (2,), "not a folder",
                  lost(before, snapshot(tmp_path), keep=["afile"])))


def test_dump_dir_replaces_a_symbolic_link_instead_of_writing_through_it(capsys, tmp_path):
    model = save(conv_bn_relu_fc(batch=1), tmp_path / "model.onnx")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dump = tmp_path / "dump"
    dump.mkdir()
    os.symlink(victim, dump / "00-upgrade-opset.onnx")
    before = snapshot(tmp_path)
    code, err = _compile(capsys, tmp_path, model, "--dump-dir", dump)
    check(Outcome("dump-dir-symlink", "wrong results", code, err, (0,),
                  lost=lost(before, snapshot(tmp_path), keep=["victim.txt", "model.onnx"])))
    assert onnx.load(str(dump / "00-upgrade-opset.onnx")).graph.node  # a model now, where the link was


# -- NaN and infinite weights: compared honestly, said, never blamed on a pass --------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_compile_with_a_warning(capsys, tmp_path, value):
    model = save(non_finite_weights(value), tmp_path / "model.onnx")
    code, err = _compile(capsys, tmp_path, model)
    report = json.loads((tmp_path / "out-case" / "report.json").read_text())
    warnings = " ".join(report["summary"]["warnings"])
    check(Outcome(f"weights-{value}", "wrong results", code, err + warnings, (0,), "NaN or infinite values (W)"))
    assert report["verification"]["exact"]["passed"]


def test_a_nan_where_the_reference_has_a_number_is_still_a_mismatch():
    from sparsecc.verify import VerifyConfig, worst_agreements

    ref = {"y": np.array([1.0, np.nan, np.inf], np.float32)}
    agree = worst_agreements([ref], [{"y": np.array([1.0, np.nan, np.inf], np.float32)}], VerifyConfig(1e-5, 1e-4))
    assert agree["y"].passed and agree["y"].max_abs_reference == 1.0  # an infinity does not widen the tolerance
    for wrong in ([1.0, 0.0, np.inf], [1.0, np.nan, -np.inf], [np.nan, np.nan, np.inf]):
        assert not worst_agreements([ref], [{"y": np.array(wrong, np.float32)}], VerifyConfig(1e-5, 1e-4))["y"].passed


# -- plugin nodes that do not fit their op: refused before any reference runs (subprocess: an abort kills) ----------

PLUGINS = {
    "unexpected-attribute": (lambda: plugin_model({"evil": 5}), "unexpected attributes ['evil']"),
    "attribute-wrong-type": (lambda: plugin_conv_model(kernel_shape="3x3"), "must be a list of ints"),
    "huge-kernel": (lambda: plugin_conv_model(kernel_shape=[60000, 60000], pads=[30000] * 4), "limit 2 GiB"),
    "kept-out-of-range": (lambda: plugin_model(kept=[100, 200, 3, 4]), "holds positions outside 0..7"),
}


@pytest.mark.parametrize("case", sorted(PLUGINS))
def test_a_plugin_node_that_does_not_fit_never_aborts_the_process(tmp_path, case):
    build, phrase = PLUGINS[case]
    model = save(build(), tmp_path / "plugin.onnx")
    code, _, err = run_subprocess("compile", model, "-o", tmp_path / "out")
    check(Outcome(f"plugin-{case}", "killing models", code, err, (2,), phrase))
    assert "gw_" in err  # the node is named


def test_external_weights_in_the_models_folder_load_and_are_protected(tmp_path):
    from sparsecc.model import load_model

    model = load_model(external_weights(tmp_path))
    assert (tmp_path / "weights.bin").resolve() in model.files
