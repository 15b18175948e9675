"""TensorRT backend: the build-log parser and option checks run everywhere; engine tests need TensorRT."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sparsecc.backends import get_backend
from sparsecc.backends.tensorrt import (SparsityBuildReport, TensorRTBackend, parse_sparsity_log, parser_failure,
                                        resolve_profile_shapes)
from sparsecc.errors import BackendUnavailableError, ModelLoadError, OptionError, ShapeError

TRT_REASON = TensorRTBackend.unavailable_reason()


# ------------------------------------------------------------------------------------------------
# parse_sparsity_log
# ------------------------------------------------------------------------------------------------

def test_both_lines_trtexec_format():
    log = [
        "[08/05/2024-12:06:54] [I] [TRT] Total Activation Memory: 7864832",
        "[08/05/2024-12:06:54] [I] [TRT] (Sparsity) Layers eligible for sparse math: MatMul_401, "
        "Conv_619 + Relu_620, Conv_626",
        "[08/05/2024-12:06:54] [I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: "
        "Conv_619 + Relu_620",
        "[08/05/2024-12:06:54] [I] [TRT] [MemUsageChange] TensorRT-managed allocation in building engine: CPU +0",
    ]
    report = parse_sparsity_log(log)
    assert report.reported
    assert report.eligible == ["MatMul_401", "Conv_619 + Relu_620", "Conv_626"]
    assert report.picked_sparse == ["Conv_619 + Relu_620"]
    assert report.eligible_not_picked == ["MatMul_401", "Conv_626"]
    assert report.to_dict() == {"reported": True, "eligible": ["MatMul_401", "Conv_619 + Relu_620", "Conv_626"],
                                "picked_sparse": ["Conv_619 + Relu_620"],
                                "eligible_not_picked": ["MatMul_401", "Conv_626"]}


def test_only_eligible_raw_logger_messages():
    # What the recording ILogger receives: bare messages, one per element, no prefixes.
    log = [
        "Total Activation Memory: 7864832",
        "(Sparsity) Layers eligible for sparse math: Conv_0",
        "(Sparsity) TRT inference plan picked sparse implementation for layers:",
        "Total Host Persistent Memory: 160",
    ]
    report = parse_sparsity_log(log)
    assert report.reported
    assert report.eligible == ["Conv_0"]
    assert report.picked_sparse == []
    assert report.eligible_not_picked == ["Conv_0"]


def test_old_python_logger_prefix_and_empty_lists():
    log = ["[TensorRT] INFO: (Sparsity) Layers eligible for sparse math: ",
           "[TensorRT] INFO: (Sparsity) TRT inference plan picked sparse implementation for layers: ",
           "[TensorRT] INFO: Detected 1 inputs and 1 output network tensors."]
    report = parse_sparsity_log(log)
    assert report.reported
    assert report.eligible == [] and report.picked_sparse == []


def test_no_sparsity_lines():
    report = parse_sparsity_log(["[I] [TRT] Detected 3 inputs and 2 output network tensors.",
                                 "[I] Finished engine building in 1.2 seconds", ""])
    assert report == SparsityBuildReport(eligible=[], picked_sparse=[], reported=False)
    assert parse_sparsity_log([]).to_dict()["reported"] is False


def test_multiline_lists():
    log = [
        # one message with its names on the following lines (embedded newlines)
        "(Sparsity) Layers eligible for sparse math:\n  /layer1/conv/Conv + /layer1/relu/Relu\n  /fc/MatMul",
        # a log file: names on indented and bullet lines after the header, then a new record
        "[V] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers:",
        "    /layer1/conv/Conv + /layer1/relu/Relu,",
        "    - /fc/MatMul",
        "[V] [TRT] Engine generation completed in 3.1 seconds.",
        "not a layer",
    ]
    report = parse_sparsity_log(log)
    assert report.eligible == ["/layer1/conv/Conv + /layer1/relu/Relu", "/fc/MatMul"]
    assert report.picked_sparse == ["/layer1/conv/Conv + /layer1/relu/Relu", "/fc/MatMul"]


def test_wrapped_list_ending_with_comma_and_space_separated_names():
    log = ["[07/19/2022-11:58:20] [I] [TRT] (Sparsity) Layers eligible for sparse math: Conv_22, MatMul_51,",
           "MatMul_69, Gemm_725",
           "[07/19/2022-11:58:20] [I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: "
           "conv1 conv2",
           "Total Activation Memory: 1024"]  # unindented, no trailing comma before it: not a name
    report = parse_sparsity_log(log)
    assert report.eligible == ["Conv_22", "MatMul_51", "MatMul_69", "Gemm_725"]
    assert report.picked_sparse == ["conv1", "conv2"]


def test_fused_pointwise_names_keep_their_commas_and_duplicates_collapse():
    log = ["(Sparsity) Layers eligible for sparse math: /c/Conv + PWN(/a/Sigmoid, /a/Mul), /d/Conv",
           "(Sparsity) Layers eligible for sparse math: /d/Conv",  # a second build: names kept once
           "(Sparsity) TRT inference plan picked sparse implementation for layers: /c/Conv + PWN(/a/Sigmoid, /a/Mul)"]
    report = parse_sparsity_log(log)
    assert report.eligible == ["/c/Conv + PWN(/a/Sigmoid, /a/Mul)", "/d/Conv"]
    assert report.picked_sparse == ["/c/Conv + PWN(/a/Sigmoid, /a/Mul)"]


# ------------------------------------------------------------------------------------------------
# Pure helpers: profile shapes and parser errors
# ------------------------------------------------------------------------------------------------

def test_resolve_profile_shapes():
    inputs = {"x": (-1, 8, 16, 16), "s": (4,)}
    assert resolve_profile_shapes(inputs, {"x": (2, 8, 16, 16)}) == {"x": (2, 8, 16, 16)}
    assert resolve_profile_shapes({"s": (4,)}, None) == {}
    with pytest.raises(ShapeError, match=r"x \(None, 8, 16, 16\)"):
        resolve_profile_shapes(inputs, None)
    with pytest.raises(ShapeError, match="does not fit"):
        resolve_profile_shapes(inputs, {"x": (2, 4, 16, 16)})  # contradicts the static channel dim
    with pytest.raises(OptionError, match=r"\['y'\]"):
        resolve_profile_shapes(inputs, {"x": (1, 8, 16, 16), "y": (1,)})


def test_parser_failure_names_the_node():
    messages = [
        'ModelImporter.cpp:961: While parsing node number 3 [Foo -> "y"]:',
        "In node 3 with name: /block/Foo and operator: Foo (checkFallbackPluginImporter): INVALID_NODE: "
        'creator && "Plugin not found, are the plugin name, version, and namespace correct?"',
    ]
    err = parser_failure("m.onnx", messages, "Could not parse ONNX correctly")
    assert isinstance(err, ModelLoadError)
    assert err.where == "m.onnx: node 3 '/block/Foo' (Foo)"
    assert "Plugin not found" in err.what and "Could not parse ONNX correctly" in err.what
    assert "polygraphy inspect capability" in err.fix
    assert parser_failure("m.onnx", ['While parsing node number 7 [Conv -> "c_out"]:']).where == \
        "m.onnx: node 7 (Conv -> c_out)"


# ------------------------------------------------------------------------------------------------
# Availability and options (no TensorRT needed)
# ------------------------------------------------------------------------------------------------

def test_unavailable_reason_does_not_raise():
    reason = TensorRTBackend.unavailable_reason()
    assert reason is None or isinstance(reason, str)
    if reason is not None:
        assert "TensorRT" in reason


@pytest.mark.skipif(TRT_REASON is None, reason="TensorRT is available here")
def test_reason_when_tensorrt_missing_and_get_backend_raises():
    assert "TensorRT" in TRT_REASON and "libnvinfer" in TRT_REASON
    with pytest.raises(BackendUnavailableError) as info:
        get_backend("tensorrt")
    assert TRT_REASON in str(info.value)
    assert "--backend ort" in str(info.value)
    with pytest.raises(BackendUnavailableError, match="not installed"):
        TensorRTBackend().load(b"")  # built directly, it still refuses with the reason


def test_option_validation_and_describe_without_tensorrt():
    with pytest.raises(OptionError, match="workspace_mb"):
        TensorRTBackend(workspace_mb=0)
    with pytest.raises(OptionError, match="0 to 5"):
        TensorRTBackend(builder_optimization_level=7)
    with pytest.raises(OptionError, match="shapes"):
        TensorRTBackend(shapes=[(1, 3)])
    info = TensorRTBackend(shapes={"x": [1, 8, 4, 4]}, workspace_mb=256).describe()
    assert info["backend"] == "tensorrt" and info["sparse_weights"] is True
    assert info["shapes"] == {"x": [1, 8, 4, 4]} and info["workspace_mb"] == 256
    assert info["strongly_typed"] is True


def test_import_does_not_import_tensorrt():
    code = ("import sys, sparsecc.backends.tensorrt as t; "
            "assert 'tensorrt' not in sys.modules, 'tensorrt imported'; "
            "assert not any(m == 'polygraphy' or m.startswith('polygraphy.') for m in sys.modules), 'polygraphy'; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ------------------------------------------------------------------------------------------------
# End to end (TensorRT and a GPU)
# ------------------------------------------------------------------------------------------------

def _conv_relu_model(dtype=np.float32, batch: int | str = 1):
    """x[N, 8, 8, 8] -> Conv(16 out, 3x3, pad 1, 2:4-sparse weights along C_in) -> Relu -> y."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    # 2:4 along input channels: in every group of 4 consecutive channels, zero the 2 smallest |w|
    groups = w.reshape(16, 2, 4, 3, 3)
    order = np.argsort(np.abs(groups), axis=2)
    np.put_along_axis(groups, order[:, :, :2], 0.0, axis=2)
    w = groups.reshape(16, 8, 3, 3)
    b = rng.standard_normal(16).astype(np.float32)
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(
        nodes, "conv_relu",
        [helper.make_tensor_value_info("x", elem, [batch, 8, 8, 8])],
        [helper.make_tensor_value_info("y", elem, [batch, 16, 8, 8])],
        [numpy_helper.from_array(w.astype(dtype), "w"), numpy_helper.from_array(b.astype(dtype), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _ort(model: bytes, feeds):
    return get_backend("ort").load(model).run(feeds)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(np.float32, 1e-3), (np.float16, 5e-2)])
def test_engine_matches_onnxruntime(dtype, atol, tmp_path):
    if TRT_REASON:
        pytest.skip(TRT_REASON)
    model = _conv_relu_model(dtype, batch="N")
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 8)).astype(dtype)
    engine_path = tmp_path / "conv_relu.engine"
    backend = get_backend("tensorrt", shapes={"x": (2, 8, 8, 8)}, engine_path=str(engine_path), workspace_mb=256)
    with backend.load(model) as session:
        assert [(s.name, s.shape, s.dtype) for s in session.inputs] == [("x", (2, 8, 8, 8), np.dtype(dtype))]
        got = session.run({"x": x})
        want = _ort(model, {"x": x})
        assert set(got) == {"y"} and got["y"].dtype == np.dtype(dtype)
        np.testing.assert_allclose(got["y"].astype(np.float32), want["y"].astype(np.float32), atol=atol, rtol=atol)
        ms = session.device_time_ms({"x": x})
        assert ms is None or ms > 0
        info = session.describe()
        assert info["sparse_weights"] is True and info["tensorrt"]
        sparsity = info["sparsity"]
        assert set(sparsity["picked_sparse"]) <= set(sparsity["eligible"])
    assert engine_path.stat().st_size > 0


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_parser_error_is_a_model_load_error():
    if TRT_REASON:
        pytest.skip(TRT_REASON)
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery", domain="sparsecc.test")
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("sparsecc.test", 1)])
    with pytest.raises(ModelLoadError, match="parser rejected"):
        get_backend("tensorrt").load(model.SerializeToString())
