"""A CLI that never surprises: each behaviour a new user tripped over, pinned by a test.

The CLI runs in-process (``sparsecc.cli.main``) to keep these fast; exit codes and
messages are what a user sees.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from graphs import conv_bn_relu_fc, init, make_model, randn, save
from probe import run_inprocess
from onnx import helper

import sparsecc
from sparsecc.errors import OptionError, PlanError
from sparsecc.verify import OutputAgreement, VerifyConfig, VerifyResult
from sparsecc.verify_options import precision_explanation, refuse_unusable_tolerances, verify_config


@pytest.fixture
def model_path(tmp_path):
    return save(conv_bn_relu_fc(batch=1), tmp_path / "model.onnx")


def _run(capsys, *args):
    code, out, err = run_inprocess(capsys, *args)
    assert "Traceback" not in err, err
    return code, out, err


def conv_chain(tmp_path, channels: int = 16, name: str = "chain.onnx", output_middle: bool = False):
    """x -> Conv -> Relu -> Conv -> Relu -> Conv -> Relu -> Conv -> y (3x3, pad 1), 8x8 images."""
    nodes, inits, source = [], [], "x"
    shapes = [(channels, 4), (channels, channels), (channels, channels), (4, channels)]
    for i, (c_out, c_in) in enumerate(shapes):
        inits.append(init(f"W{i}", randn(c_out, c_in, 3, 3, scale=0.3)))
        nodes.append(helper.make_node("Conv", [source, f"W{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
        if i < len(shapes) - 1:
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
            source = f"r{i}"
    outputs = [("c3", [1, 4, 8, 8])]
    if output_middle:  # every inner layer's output is also a graph output: its channels cannot be removed
        outputs += [("c1", [1, channels, 8, 8]), ("c2", [1, channels, 8, 8])]
    return save(make_model(nodes, [("x", [1, 4, 8, 8])], outputs, inits), tmp_path / name)


# -- compile -o DIR -------------------------------------------------------------------------------

def test_compile_refuses_a_folder_that_is_not_empty_unless_force(capsys, tmp_path, model_path):
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "notes.txt"
    keep.write_text("mine")
    code, _, err = _run(capsys, "compile", model_path, "-o", out)
    assert code == 2 and "not empty" in err and "notes.txt" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, _, _ = _run(capsys, "compile", model_path, "-o", out, "--force")
    assert code == 0 and (out / "model.onnx").exists() and keep.read_text() == "mine"
    with pytest.raises(sparsecc.SparseccError, match="not empty"):
        sparsecc.compile_model(model_path, "none", out)
    assert sparsecc.compile_model(model_path, "none", out, force=True).report["verification"]["exact"]["passed"]


def test_a_failed_compile_leaves_no_folder_it_created(capsys, tmp_path):
    dynamic = save(conv_bn_relu_fc(batch="N"), tmp_path / "dynamic.onnx")
    out = tmp_path / "new" / "deeper" / "out"
    code, _, err = _run(capsys, "compile", dynamic, "-o", out)
    assert code == 2 and "dynamic input dimensions" in err
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    code, _, _ = _run(capsys, "compile", dynamic, "-o", existing)
    assert code == 2 and existing.is_dir() and not any(existing.iterdir())  # a folder it did not make stays


# -- --atol / --rtol ------------------------------------------------------------------------------

@pytest.mark.parametrize("option,value,phrase", [("--atol", "-1", "must not be negative"),
                                                 ("--rtol", "-0.5", "must not be negative"),
                                                 ("--atol", "abc", "must be a number"),
                                                 ("--rtol", "nan", "finite"),
                                                 ("--atol", "inf", "finite")])
def test_tolerances_on_the_command_line_are_checked(capsys, tmp_path, model_path, option, value, phrase):
    code, _, err = _run(capsys, "compile", model_path, "-o", tmp_path / "out", option, value)
    assert code == 2 and phrase in err and "fix:" in err
    assert not (tmp_path / "out").exists()


def test_recipe_verify_block_goes_through_the_same_checks(capsys, tmp_path, model_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\npasses: []\nverify: {atol: 1.0e-5, tolerance: 3}\n")
    code, _, err = _run(capsys, "compile", model_path, "-r", recipe, "-o", tmp_path / "o1", "--atol", "1e-4")
    assert code == 2 and "unknown verification option" in err and "tolerance" in err  # was a TypeError, exit 70
    recipe.write_text("name: r\npasses: []\nverify: {atol: -1.0e-5}\n")
    code, _, err = _run(capsys, "compile", model_path, "-r", recipe, "-o", tmp_path / "o2")
    assert code == 2 and "must not be negative" in err and str(recipe) in err
    with pytest.raises(OptionError, match="must not be negative"):
        sparsecc.compile_model(model_path, "none", tmp_path / "o3", verify={"rtol": -1})
    assert verify_config({"atol": "0.001", "seed": "3"}).atol == 0.001
    with pytest.raises(OptionError, match="whole number"):
        verify_config({"iterations": 0})


@pytest.mark.parametrize("atol,rtol", [("1e-30", "0"), ("0", "1e-30"), ("1e-8", "1e-9")])
def test_tolerances_below_float32_resolution_are_refused_before_any_work(capsys, tmp_path, model_path, atol, rtol):
    code, _, err = _run(capsys, "compile", model_path, "-o", tmp_path / "out", "--atol", atol, "--rtol", rtol)
    assert code == 2, err
    assert f"atol {float(atol):g} and rtol {float(rtol):g} are both below float32's resolution" in err
    assert "--rtol 1.2e-07 or more, the smallest meaningful value" in err and "(--atol/--rtol)" in err
    assert "compiled" not in err and "pass '" not in err  # no pass ran
    assert not (tmp_path / "out").exists()


def test_zero_tolerances_ask_for_bit_identical_outputs(capsys, tmp_path):
    # a model whose compile changes no arithmetic (no BatchNorm to fold) passes a check of bit-identical outputs
    import onnx
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])], [weight])
    path = tmp_path / "matmul.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    code, _, err = _run(capsys, "compile", path, "-o", tmp_path / "out", "--recipe", "none", "--atol", "0",
                        "--rtol", "0")
    assert code == 0, err
    assert (tmp_path / "out" / "model.onnx").exists()


def test_the_resolution_a_tolerance_is_held_to_is_the_model_float_type():
    refuse_unusable_tolerances(VerifyConfig(1e-5, 1e-4, dtype="float32"), where=None)  # float32's defaults
    refuse_unusable_tolerances(VerifyConfig(0.0, 1.2e-7, dtype="float32"), where=None)  # one ulp: the least
    refuse_unusable_tolerances(VerifyConfig(0.0, 1e-12, dtype="float64"), where=None)
    refuse_unusable_tolerances(VerifyConfig(0.0, 0.0, dtype="float32"), where=None)  # bit-identical, asked for
    refuse_unusable_tolerances(VerifyConfig(1e-3, 0.0, dtype="float16"), where=None)  # float16's default atol
    with pytest.raises(OptionError, match="(?s)below float16's resolution.*--rtol 0.00098 or more"):
        refuse_unusable_tolerances(VerifyConfig(1e-5, 1e-4, dtype="float16"), where=None)
    with pytest.raises(OptionError, match="below bfloat16's resolution"):
        refuse_unusable_tolerances(VerifyConfig(1e-3, 1e-3, dtype="bfloat16"), where=None)
    with pytest.raises(OptionError, match="r.yaml"):
        refuse_unusable_tolerances(VerifyConfig(0.0, 1e-9, dtype="float32"), where="verify: of recipe 'r' (r.yaml)")


def _conv_bn(path):
    """x -> Conv(16 -> 32, 3x3) -> BatchNorm -> y, its own seeded weights: folding the BatchNorm moves the 2048
    outputs by 3-4 float32 ulps of max |y| (3.4 here, 3.2-4.4 over six seeds)."""
    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], name="bn0")]
    inits = [init("W", normal(32, 16, 3, 3)), init("gamma", normal(32) + 2), init("beta", normal(32)),
             init("mean", normal(32)), init("var", rng.random(32).astype(np.float32) + 0.5)]
    return save(make_model(nodes, [("x", [1, 16, 8, 8])], [("y", [1, 32, 8, 8])], inits), path)


def test_a_tolerance_below_float32_precision_is_not_called_a_bug(capsys, tmp_path):
    # the smallest tolerance accepted (one ulp), below the few ulps that folding BatchNorm moves the outputs by:
    # known only once they are computed
    code, _, err = _run(capsys, "compile", _conv_bn(tmp_path / "m.onnx"), "-o", tmp_path / "out", "--atol", "0",
                        "--rtol", "1.2e-7")
    assert code == 3, err
    assert "below float32's precision" in err and "ulp" in err and "--rtol" in err
    assert "bug" not in err
    assert not (tmp_path / "out").exists()


def test_a_wrong_rewrite_at_a_tight_tolerance_is_still_a_failure():
    def result(error, dtype="float32"):
        output = OutputAgreement("y", error, 1.0, error, (0,), 1.0, 1.0 + error, False, dtype)
        return VerifyResult(False, 0.0, 0.0, [output])

    assert precision_explanation(result(3e-7)) is not None
    assert precision_explanation(result(0.3)) is None  # far beyond rounding: a real difference
    assert precision_explanation(result(3e-7, "int64")) is None
    loose = VerifyResult(False, 1e-5, 1e-3, [OutputAgreement("y", 2e-3, 1.0, 2e-3, (0,), 1, 1, False, "float32")])
    assert precision_explanation(loose) is None  # the tolerance was not below float32's precision


# -- --target-speedup / --target-latency -----------------------------------------------------------

@pytest.mark.parametrize("command", ["compile", "finetune"])
@pytest.mark.parametrize("option,value,phrase", [("--target-speedup", "0.5", "is not above 1"),
                                                 ("--target-speedup", "1", "is not above 1"),
                                                 ("--target-speedup", "5000", "is not below 1000"),
                                                 ("--target-speedup", "nan", "is not a number"),
                                                 ("--target-speedup", "fast", "is not a number"),
                                                 ("--target-latency", "0", "is not a positive, finite"),
                                                 ("--target-latency", "inf", "is not a positive, finite")])
def test_a_bad_speed_target_names_the_flag_the_user_typed(capsys, tmp_path, model_path, command, option, value,
                                                          phrase):
    extra = ["--data", "digits"] if command == "finetune" else []
    code, _, err = _run(capsys, command, model_path, "--recipe", "filter-l2", *extra, option, value,
                        "-o", tmp_path / "out")
    assert code == 2, err
    assert f"argument {option}: '{value}' {phrase}" in err  # the flag, the value given, what is wrong
    assert f"e.g. {option} " in err  # what to do
    assert "plan-filters" not in err and "target_speedup" not in err and "target_latency" not in err
    assert not (tmp_path / "out").exists()


def test_a_bad_speed_target_in_a_recipe_file_names_the_pass_option(capsys, tmp_path, model_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\npasses:\n  - plan-filters: {target_speedup: 0.5}\n  - apply-plan\n")
    code, _, err = _run(capsys, "compile", model_path, "-r", recipe, "-o", tmp_path / "out")
    assert code == 2 and "plan-filters: target_speedup: target speedup 0.5 is not above 1" in err, err
    assert not (tmp_path / "out").exists()


# -- dynamic-shape hint ---------------------------------------------------------------------------

def test_the_dynamic_shape_hint_proposes_a_realistic_image_size(capsys, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1], name="conv0")]
    proto = make_model(nodes, [("x", ["batch", 3, "height", "width"])], [("y", ["batch", 8, "height", "width"])],
                       [init("W", randn(8, 3, 3, 3))])
    unnamed = make_model(nodes, [("x", [None, 3, None, None])], [("y", [None, 8, None, None])],
                         [init("W", randn(8, 3, 3, 3))])
    for path in (save(proto, tmp_path / "named.onnx"), save(unnamed, tmp_path / "unnamed.onnx")):
        code, _, err = _run(capsys, "compile", path, "-o", tmp_path / "out")
        assert code == 2 and "--shape x:1x3x224x224" in err, err
        assert "x1x1" not in err and "224x224 for an image" in err  # and it says why


def test_the_hint_sizes_a_sequence_and_leaves_unknown_dimensions_to_the_user():
    from sparsecc.model import example_shape

    assert example_shape(["batch", "sequence", 768]) == "1x128x768"
    assert example_shape(["N", "C", "H", "W"]) == "1x<C>x224x224"


# -- bench ----------------------------------------------------------------------------------------

def test_bench_refuses_two_models_with_different_inputs_or_outputs(capsys, tmp_path, model_path):
    other = conv_bn_relu_fc(batch=1)
    other.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 7  # another image size
    other.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 5
    code, out, err = _run(capsys, "bench", model_path, save(other, tmp_path / "other.onnx"), "--runs", "1")
    assert code == 2 and "different inputs" in err and "[1, 4, 6, 6]" in err and "[1, 4, 7, 5]" in err
    assert "speedup" not in out
    renamed = conv_bn_relu_fc(batch=1)
    renamed.graph.output[0].name = renamed.graph.node[-1].output[0] = "logits"
    code, _, err = _run(capsys, "bench", model_path, save(renamed, tmp_path / "renamed.onnx"), "--runs", "1")
    assert code == 2 and "different outputs" in err and "'logits' only in the second" in err


def test_bench_accepts_a_model_and_its_compiled_version(capsys, tmp_path, model_path):
    sparsecc.compile_model(model_path, "none", tmp_path / "o")
    code, out, _ = _run(capsys, "bench", model_path, tmp_path / "o" / "model.onnx", "--runs", "2", "--warmup", "0")
    assert code == 0 and "speedup" in out


# -- inspect --------------------------------------------------------------------------------------

def test_inspect_calls_a_weight_element_wise_only_above_the_threshold():
    from sparsecc.sparsity.detect import ELEMENT_WISE_MIN_SPARSITY, detect_gemm

    weight = randn(512, 512) + 10.0  # no zero by chance
    weight[3, 7] = 0.0  # one zero in 262144
    found = detect_gemm(weight)
    assert found.pattern == "dense" and 0 < found.sparsity < ELEMENT_WISE_MIN_SPARSITY
    weight.flat[::50] = 0.0  # 2 %: scattered zeros worth naming
    assert detect_gemm(weight).pattern == "element-wise"


# -- planning that plans nothing, and recipes that gain nothing -----------------------------------

def test_a_planner_that_plans_nothing_says_how_many_and_why(tmp_path):
    path = conv_chain(tmp_path, output_middle=True)
    with pytest.raises(PlanError) as caught:
        sparsecc.compile_model(path, "filter-l1", tmp_path / "out")
    message = caught.value.format()
    assert "'plan-filters' planned nothing to prune" in message
    assert "channel groups considered, all left out" in message and "graph output" in message
    assert "no sparsity plan to apply" not in message and "fix:" in message
    assert not (tmp_path / "out").exists()


def test_a_pruning_recipe_that_gains_nothing_says_so(tmp_path):
    recipe = tmp_path / "mask-only.yaml"
    recipe.write_text("name: mask-only\npasses:\n  - plan-groupwise: {keep: 0.5}\n  - apply-plan\n")
    result = sparsecc.compile_model(conv_chain(tmp_path), recipe, tmp_path / "out")
    summary = result.report["summary"]
    assert summary["ideal_speedup"] == 1.0
    assert summary["warnings"] and "gains nothing" in summary["warnings"][0]
    assert "**Warning**" in (tmp_path / "out" / "report.md").read_text()
    none = sparsecc.compile_model(conv_chain(tmp_path, name="b.onnx"), "none", tmp_path / "out2")
    assert none.report["summary"]["warnings"] == []  # canonicalising only promises nothing


def test_the_report_explains_every_shape_change(tmp_path):
    result = sparsecc.compile_model(conv_chain(tmp_path, channels=32), "filter-l1", tmp_path / "out")
    changes = {c["layer"]: c for c in result.report["shape_changes"]}
    assert changes, "filter-l1 removed no channel"
    before = {r["node"]: r["weight_shape"] for r in result.report["before"]["layers"]}
    after = {r["node"]: r["weight_shape"] for r in result.report["after"]["layers"]}
    assert set(changes) == {n for n in before if before[n] != after.get(n)}
    assert any("filter(s) removed" in c["why"] for c in changes.values())
    assert any("input channel(s) removed with the filters" in c["why"] for c in changes.values())
    assert all(c["why"] for c in changes.values())
    assert "## Shape changes" in (tmp_path / "out" / "report.md").read_text()


# -- scale: external data -------------------------------------------------------------------------

def test_a_model_with_external_data_loads_compiles_and_is_written_with_external_data(tmp_path, monkeypatch):
    import onnxruntime as ort

    from sparsecc import onnx_files

    proto = conv_bn_relu_fc(batch=1)
    source = tmp_path / "in" / "model.onnx"
    source.parent.mkdir()
    onnx.save(proto, str(source), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    monkeypatch.setattr(onnx_files, "EXTERNAL_ABOVE", 1000)  # as if the model were over 2 GB
    result = sparsecc.compile_model(source, "none", tmp_path / "out")
    out = tmp_path / "out"
    written = ["model.onnx", "model.onnx.data", "plan.json", "plan.npz", "report.json", "report.md"]
    assert sorted(p.name for p in out.iterdir()) == [".sparsecc-outputs.json", *written]
    assert json.loads((out / ".sparsecc-outputs.json").read_text())["outputs"] == written  # what --force may remove
    assert "model.onnx.data" in result.report["outputs"]
    assert (out / "model.onnx").stat().st_size < 2000  # the weights are in model.onnx.data
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    want = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    again = sparsecc.compile_model(out / "model.onnx", "none", tmp_path / "again")  # and it reads back
    assert again.report["verification"]["exact"]["passed"]


def test_streamed_files_hold_the_same_model_as_onnx_save(tmp_path):
    from sparsecc.model import load_model
    from sparsecc.onnx_files import read_onnx, write_model

    proto = conv_bn_relu_fc(batch=1)
    path = save(proto, tmp_path / "model.onnx")
    model = load_model(path)
    expected = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    for external in (False, True):
        folder = tmp_path / f"external-{external}"
        folder.mkdir()
        written = write_model(model.graph, folder / "model.onnx", external=external)
        assert (folder / "model.onnx.data").exists() == external
        onnx.checker.check_model(str(written))
        loaded = onnx.load(str(written))  # loads external data too
        got = {t.name: onnx.numpy_helper.to_array(t) for t in loaded.graph.initializer}
        assert set(got) == set(expected)
        for name, values in expected.items():
            np.testing.assert_array_equal(got[name], values)
    stripped = read_onnx(path)  # the large weights point into the file instead of being parsed
    assert stripped.ByteSize() < path.stat().st_size / 2
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in stripped.graph.initializer)


def test_verification_reads_the_weights_from_one_shared_file(tmp_path):
    from sparsecc.model import load_model
    from sparsecc.session_files import SessionFiles

    model = load_model(save(conv_bn_relu_fc(batch=1), tmp_path / "m.onnx"))
    with SessionFiles() as files:
        first = files.write(model.graph)
        size = (first.parent / "weights.data").stat().st_size
        second = files.write(model.copy().graph)  # same arrays: nothing new written
        assert (first.parent / "weights.data").stat().st_size == size
        assert files.outputs(second, "k") is None
        files.keep_outputs(first, "k", ["outputs"])
        assert files.outputs(second, "k") == ["outputs"]  # the same graph is not run twice


def test_weights_still_as_read_are_linked_not_written(tmp_path):
    import onnxruntime as ort

    from sparsecc.model import load_model
    from sparsecc.session_files import SessionFiles

    source = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu_fc(batch=1), str(source), save_as_external_data=True, location="m.data",
              size_threshold=0)
    model = load_model(source)
    weight = model.graph.tensors()["Wfc"]
    with SessionFiles() as files:
        first = files.write(model.graph)
        assert (first.parent / "input1.data").samefile(tmp_path / "m.data")  # linked, not copied
        linked_size = (first.parent / "weights.data").stat().st_size
        weight.values = weight.values * 2  # a pass replaces an array: only that one is written
        second = files.write(model.graph)
        assert (first.parent / "weights.data").stat().st_size >= linked_size + weight.values.nbytes
        x = {"x": np.ones((1, 4, 6, 6), np.float32)}
        one = ort.InferenceSession(str(first), providers=["CPUExecutionProvider"]).run(None, x)[0]
        two = ort.InferenceSession(str(second), providers=["CPUExecutionProvider"]).run(None, x)[0]
        want = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, x)[0]
        np.testing.assert_allclose(one, want, rtol=1e-6)
        np.testing.assert_allclose(two, 2 * want, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "m.data").exists() and source.exists()  # the input is never touched
