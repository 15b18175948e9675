"""The CLI end to end, through a subprocess, as a user runs it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from graphs import conv_bn_relu_fc, init, make_model, randn, save
from onnx import helper


@pytest.fixture
def model_path(tmp_path):
    return save(conv_bn_relu_fc(), tmp_path / "model.onnx")


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inspect_table_and_json(cli, model_path):
    result = cli("inspect", model_path, "--shape", "x:2x4x6x6", check=True)
    assert "conv0" in result.stdout and "fc" in result.stdout and "weight layers" in result.stdout
    data = json.loads(cli("inspect", model_path, "--shape", "x:2x4x6x6", "--json", check=True).stdout)
    macs = {row["node"]: row["macs"] for row in data["layers"]}
    assert macs == {"conv0": 2 * 8 * 36 * 4 * 9, "fc": 2 * 288 * 10}
    assert data["totals"]["macs"] == sum(macs.values()) and data["totals"]["by_kind"] == {"conv": 1, "matmul": 1}


def test_compile_none_end_to_end(cli, model_path, tmp_path):
    before = _digest(model_path)
    out = tmp_path / "out"
    result = cli("compile", model_path, "--recipe", "none", "-o", out, "--shape", "x:1x4x6x6", check=True)
    assert "verified against the original" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [".sparsecc-outputs.json", "model.onnx", "plan.json",
                                                     "plan.npz", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["exact"]["passed"]
    assert [(p["name"], p["status"]) for p in report["passes"]] == [
        ("upgrade-opset", "unchanged"), ("constants-to-initializers", "unchanged"), ("fold-constants", "unchanged"),
        ("untie-shared-constants", "unchanged"), ("fold-batchnorm", "ran")]
    assert "## Verification" in (out / "report.md").read_text()
    assert _digest(model_path) == before

    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [n.op_type for n in __import__("onnx").load(str(out / "model.onnx")).graph.node] == [
        "Conv", "Relu", "Flatten", "MatMul"]
    assert session.run(None, {"x": np.ones((3, 4, 6, 6), np.float32)})[0].shape == (3, 10)


def test_list_passes_recipes_and_dump(cli, model_path, tmp_path):
    listed = cli("compile", "--list-passes", check=True).stdout
    assert "fold-batchnorm" in listed and "apply-plan" in listed
    assert "none" in cli("recipes", check=True).stdout
    dump = tmp_path / "dump"
    cli("compile", model_path, "-o", tmp_path / "o", "--shape", "x:1x4x6x6", "--dump-dir", dump,
        "--disable-pass", "constants-to-initializers", check=True)
    assert sorted(p.name for p in dump.iterdir()) == ["00-upgrade-opset.onnx", "02-fold-constants.onnx",
                                                      "03-untie-shared-constants.onnx", "04-fold-batchnorm.onnx"]


def test_bench_pair_json(cli, model_path, tmp_path):
    out = tmp_path / "o"
    cli("compile", model_path, "-o", out, "--shape", "x:1x4x6x6", check=True)
    data = json.loads(cli("bench", model_path, out / "model.onnx", "--shape", "x:1x4x6x6", "--runs", "3",
                          "--warmup", "1", "--json", check=True).stdout)
    assert set(data["models"]) == {"baseline", "candidate"}
    assert data["ideal"] == 1.0 and data["speedup"] > 0 and data["models"]["candidate"]["runs"] == 3
    assert data["backend"]["intra_op_num_threads"] == 2 and data["backend"]["allow_spinning"] is False
    low, high = data["speedup_ci"]
    assert low <= data["speedup"] <= high and data["cpu_speedup_ci"][0] <= data["cpu_speedup"]
    assert set(data["load"]) >= {"before", "after", "cores", "level"} and data["pairs"] == 3
    # the candidate does the same work: the bench says a figure away from 1 is noise, whatever it measured
    assert any("same work" in note for note in data["notes"])


def _assert_clean_failure(result, *phrases, code=2):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def test_bad_inputs_each_get_one_clear_error(cli, tmp_path, model_path):
    out = tmp_path / "out"
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello")
    _assert_clean_failure(cli("compile", not_onnx, "-o", out), "not a readable ONNX file", "fix:")

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model_path.read_bytes()[:300])
    _assert_clean_failure(cli("inspect", truncated), str(truncated))

    old = conv_bn_relu_fc(opset=13)
    old.opset_import[0].version = 6
    _assert_clean_failure(cli("inspect", save(old, tmp_path / "old.onnx")), "opset 6 is not supported",
                          "convert_version")

    no_weights = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], [("y", [1, 4])])
    _assert_clean_failure(cli("inspect", save(no_weights, tmp_path / "relu.onnx")), "no weight layers")

    dynamic_weight = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv_dyn")], "g",
        [helper.make_tensor_value_info("x", 1, [1, 2, 4, 4]), helper.make_tensor_value_info("w", 1, [2, 2, 1, 1])],
        [helper.make_tensor_value_info("y", 1, [1, 2, 4, 4])]), opset_imports=[helper.make_opsetid("", 13)])
    dynamic_weight.ir_version = 8
    _assert_clean_failure(cli("inspect", save(dynamic_weight, tmp_path / "dyn.onnx")), "conv_dyn",
                          "not constant")

    _assert_clean_failure(cli("compile", model_path, "-o", out), "dynamic input dimensions", "--shape x:1x4x6x6")
    _assert_clean_failure(cli("compile", model_path, "-o", out, "--shape", "x:1x4x6"), "gives 3 dimensions")
    _assert_clean_failure(cli("compile", model_path, "--recipe", "nope", "-o", out), "neither a built-in recipe")
    _assert_clean_failure(cli("compile", model_path, "-o", out, "--shape", "x:1x4x6x6",
                              "--disable-pass", "fold-batchnrom"), "unknown pass")

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _assert_clean_failure(cli("compile", model_path, "-o", blocker / "sub", "--shape", "x:1x4x6x6"),
                          "cannot write to the output folder")
    _assert_clean_failure(cli("compile", model_path, "-o", blocker, "--shape", "x:1x4x6x6"),
                          "not a folder")
    assert not out.exists() or not any(out.iterdir())  # nothing half-written anywhere

    inside = tmp_path / "inplace"
    inside.mkdir()
    own = inside / "model.onnx"
    own.write_bytes(model_path.read_bytes())
    before = _digest(own)
    _assert_clean_failure(cli("compile", own, "-o", inside, "--shape", "x:1x4x6x6"), "overwrite the input")
    assert _digest(own) == before and sorted(p.name for p in inside.iterdir()) == ["model.onnx"]


def test_shared_initializer_in_a_pruning_recipe_is_refused(cli, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W0"], ["a"], name="first"),
             helper.make_node("Conv", ["a", "W"], ["b"], name="c1"),
             helper.make_node("Conv", ["b", "W"], ["c"], name="c2"),
             helper.make_node("Conv", ["c", "W3"], ["y"], name="last")]
    inits = [init("W0", randn(4, 4, 1, 1)), init("W", randn(4, 4, 1, 1)), init("W3", randn(4, 4, 1, 1))]
    path = save(make_model(nodes, [("x", [1, 4, 2, 2])], [("y", [1, 4, 2, 2])], inits), tmp_path / "tied.onnx")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: test\npasses:\n  - plan-24: {layers: {names: [c1]}}\n  - apply-plan\n")
    result = cli("compile", path, "--recipe", recipe, "-o", tmp_path / "out")
    _assert_clean_failure(result, "shared with", "c1", "untied")
    assert not (tmp_path / "out" / "model.onnx").exists()
    # matched only by a broad selector, the tied layers are left as they were and listed
    recipe.write_text("name: test\npasses:\n  - plan-24: {layers: {exclude_first_last: false}}\n  - apply-plan\n")
    cli("compile", path, "--recipe", recipe, "-o", tmp_path / "out", check=True)
    skipped = json.loads((tmp_path / "out" / "report.json").read_text())["skipped"]
    assert {(s["layer"], "shared with" in s["reason"]) for s in skipped if s["layer"] in ("c1", "c2")} == {
        ("c1", True), ("c2", True)}


def test_internal_errors_are_distinguished(cli):
    result = cli("compile")
    _assert_clean_failure(result, "no model given")


def test_bench_pair_is_timed_in_replications_with_new_sessions(cli, model_path, tmp_path):
    # one pair of sessions agrees with itself more closely than two benches minutes apart do, so the
    # rounds are split over new sessions and the interval takes in how much the sets differ
    out = tmp_path / "o"
    cli("compile", model_path, "-o", out, "--shape", "x:1x4x6x6", check=True)
    data = json.loads(cli("bench", model_path, out / "model.onnx", "--shape", "x:1x4x6x6", "--runs", "25",
                          "--warmup", "1", "--json", check=True).stdout)
    assert data["replications"] == 2 and data["runs"] == 26 and data["models"]["candidate"]["runs"] == 26
    assert "2 replications with new sessions" in data["clock"]
    single = json.loads(cli("bench", model_path, "--shape", "x:1x4x6x6", "--runs", "25", "--warmup", "1", "--json",
                            check=True).stdout)
    assert single["replications"] == 1 and single["models"]["model"]["runs"] == 25
