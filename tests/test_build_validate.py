"""sparsecc build / validate / bench --backend tensorrt, and plugin nodes on ONNX Runtime.

What needs TensorRT and a GPU is tested for its precise refusal here and runs for real where TensorRT is.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsecc.backends.tensorrt import TensorRTBackend, engine_load_failure, load_sparsecc_plugins
from sparsecc.errors import ModelLoadError, UnsupportedModelError
from sparsecc.plugins import GROUPWISE_CONV, NAMESPACE, get_reference, plugin_node_attributes

TRT_REASON = TensorRTBackend.unavailable_reason()
torch = pytest.importorskip("torch")


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _export(path, scale=1.0, dynamo=False, half=False):
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():
        net.fc.weight.mul_(scale)
    x = torch.randn(1, 3, 8, 8)
    if half:
        net, x = net.half(), x.half()
    torch.onnx.export(net, (x,), str(path), dynamo=dynamo, input_names=["x"], output_names=["logits"])
    return path


def _plugin_model(path, aot=1):
    rng = np.random.default_rng(0)
    kept = np.array([0, 2, 4, 5, 8, 11, 13, 17], dtype=np.int32)           # of 2 * 3 * 3 = 18 im2col rows
    inits = [numpy_helper.from_array(rng.standard_normal((4, kept.size)).astype(np.float32), "wk"),
             numpy_helper.from_array(kept, "kept"), numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    node = helper.make_node(GROUPWISE_CONV, ["x", "wk", "kept", "b"], ["y"], name="gw_conv_0", domain=NAMESPACE,
                            **plugin_node_attributes(GROUPWISE_CONV, aot=bool(aot), kernel_shape=[3, 3], strides=[1, 1],
                                                     pads=[1, 1, 1, 1], dilations=[1, 1]))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(NAMESPACE, 1)])
    onnx.save(model, str(path))
    return path


def test_validate_onnx_against_onnx_on_onnxruntime(cli, tmp_path):
    original = _export(tmp_path / "a.onnx")
    same = _export(tmp_path / "b.onnx")
    off = _export(tmp_path / "c.onnx", scale=1.01)
    ok = cli("validate", same, "--against", original)
    assert ok.returncode == 0 and "PASSED" in ok.stdout, ok.stderr
    bad = cli("validate", off, "--against", original)
    assert bad.returncode == 3 and "FAIL logits" in bad.stdout
    loose = cli("validate", off, "--against", original, "--rtol", "logits:0.05", "--json")
    assert loose.returncode == 0, loose.stdout + loose.stderr
    assert '"rtol": 0.05' in loose.stdout
    unknown = cli("validate", same, "--against", original, "--atol", "nope:1")
    assert unknown.returncode == 2 and "['nope']" in unknown.stderr


@pytest.mark.parametrize("dynamo,half", [(True, False), (False, True)])
def test_validate_other_exporters_and_fp16(tmp_path, dynamo, half):
    from sparsecc.validate import parse_tolerances, validate

    original = _export(tmp_path / "a.onnx", dynamo=dynamo, half=half)
    same = _export(tmp_path / "b.onnx", dynamo=dynamo, half=half)
    off = _export(tmp_path / "c.onnx", scale=1.05, dynamo=dynamo, half=half)
    tol = parse_tolerances(["1e-3"], ["1e-2"]) if half else None
    assert validate(same, original, tolerances=tol)["passed"]
    result = validate(off, original, tolerances=tol)
    assert not result["passed"] and result["outputs"][0]["name"] == "logits"
    assert result["outputs"][0]["max_abs_error"] > 0


def test_plugin_nodes_on_onnxruntime_are_a_clear_error(cli, tmp_path):
    from sparsecc.backends.ort import OrtBackend

    model = _plugin_model(tmp_path / "lowered.onnx")
    with pytest.raises(UnsupportedModelError, match="'gw_conv_0' \\(GroupwiseConv\\)") as info:
        OrtBackend().load(model)
    assert "--backend tensorrt" in info.value.format()
    result = cli("validate", model, "--against", model)
    assert result.returncode == 2 and "gw_conv_0" in result.stderr and "ONNX Runtime cannot run" in result.stderr


def test_unknown_op_in_sparsecc_domain_is_refused_before_tensorrt():
    with pytest.raises(UnsupportedModelError, match="'Mystery' in the sparsecc domain"):
        load_sparsecc_plugins([("n0", "Mystery", "float32")], "m.onnx")


def test_engine_for_another_gpu_is_named():
    err = engine_load_failure("m.engine", [
        "IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error (The engine plan file is generated on an "
        "incompatible device, expecting compute 8.6 got compute 9.0, please rebuild.)"])
    assert isinstance(err, ModelLoadError)
    assert "built for another GPU (compute 8.6); this GPU is compute 9.0" in err.format()
    assert "sparsecc build" in err.format()
    other = engine_load_failure("m.engine", ["Serialization assertion stdVersionRead == kSERIALIZATION_VERSION "
                                             "failed.Version tag does not match"])
    assert "another TensorRT version" in other.format()


@pytest.mark.skipif(TRT_REASON is None, reason="TensorRT is available: the refusal path does not apply")
def test_commands_say_what_is_missing_without_tensorrt(cli, tmp_path):
    model = _export(tmp_path / "a.onnx")
    engine = tmp_path / "a.engine"
    build = cli("build", model, "-o", engine)
    assert build.returncode == 2 and "cannot build a TensorRT engine here" in build.stderr
    assert "TensorRT runtime libraries are not installed" in build.stderr and not engine.exists()
    bench = cli("bench", model, "--backend", "tensorrt", "--runs", "1", "--warmup", "0")
    assert bench.returncode == 2 and "TensorRT runtime libraries are not installed" in bench.stderr
    engine.write_bytes(b"not an engine")
    validate = cli("validate", engine, "--against", model)
    assert validate.returncode == 2 and "TensorRT runtime libraries are not installed" in validate.stderr
    wrong = cli("validate", engine, "--against", model, "--backend", "ort")
    assert wrong.returncode == 2 and "runs only with --backend tensorrt" in wrong.stderr


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(TRT_REASON is not None, reason=f"needs TensorRT and a GPU: {TRT_REASON}")
@pytest.mark.parametrize("aot", [1, 0])
def test_plugin_engine_matches_reference(tmp_path, aot):
    from sparsecc.backends import get_backend

    model_path = _plugin_model(tmp_path / "lowered.onnx", aot=aot)
    model = onnx.load(str(model_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    x = np.random.default_rng(1).standard_normal((1, 2, 6, 6)).astype(np.float32)
    (expected,) = get_reference(GROUPWISE_CONV)(x, inits["wk"], inits["kept"], inits["b"], kernel_shape=[3, 3],
                                                strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1])
    session = get_backend("tensorrt", engine_path=str(tmp_path / "m.engine")).load(model_path)
    try:
        assert session.describe()["plugin_layers"], "the plugin node did not become a plugin layer"
        np.testing.assert_allclose(session.run({"x": x})["y"], expected, atol=1e-4, rtol=1e-4)
    finally:
        session.close()
    reloaded = get_backend("tensorrt").load(tmp_path / "m.engine")
    try:
        np.testing.assert_allclose(reloaded.run({"x": x})["y"], expected, atol=1e-4, rtol=1e-4)
    finally:
        reloaded.close()


def test_a_missing_model_or_engine_is_said_first_by_build_and_validate(cli, tmp_path):
    model = _export(tmp_path / "a.onnx")
    build = cli("build", tmp_path / "nosuch.onnx", "-o", tmp_path / "e.engine")
    assert build.returncode == 2 and "the file does not exist" in build.stderr
    validate = cli("validate", tmp_path / "nosuch.engine", "--against", model)
    assert validate.returncode == 2 and "the file does not exist" in validate.stderr


def test_engine_loading_survives_any_plugin_registration_failure(monkeypatch):
    import sys
    import types

    from sparsecc.backends.tensorrt import register_for_engine

    settings, problem = register_for_engine()  # here: no TensorRT, so the plugins cannot register
    assert settings is None and problem.startswith(("ModuleNotFoundError", "ImportError"))
    broken = types.ModuleType("sparsecc.plugins.qdp")

    def register_plugins(tf32=False):
        raise TypeError("issubclass() arg 1 must be a class")

    broken.register_plugins = register_plugins
    monkeypatch.setitem(sys.modules, "sparsecc.plugins.qdp", broken)
    assert register_for_engine() == (None, "TypeError: issubclass() arg 1 must be a class")
    # an engine that then fails to deserialize says that the plugins could not be registered
    err = engine_load_failure("m.engine", ["IPluginRegistry::getCreator: Error Code 4: Cannot find plugin"],
                              plugin_problem="TypeError: issubclass() arg 1 must be a class")
    assert "could not be registered first (TypeError: issubclass() arg 1 must be a class)" in err.format()
    assert "aot=1" in err.format()
    plain = engine_load_failure("m.engine", ["some other error"])
    assert "registered" not in plain.format()


def test_validate_takes_its_default_tolerances_from_the_precision(cli, tmp_path):
    from sparsecc.backends.tensorrt import precision_name
    from sparsecc.validate import ENGINE_TOLERANCES, Tolerances, validate

    assert [precision_name(d, t) for d, t in (("float32", False), ("float32", True), ("float16", True),
                                              ("bfloat16", False))] == ["fp32", "tf32", "fp16", "bf16"]
    original = _export(tmp_path / "a.onnx")
    half = _export(tmp_path / "h.onnx", half=True)
    same = validate(_export(tmp_path / "b.onnx"), original)
    assert same["precision"]["name"] == "fp32" and same["outputs"][0]["atol"] == ENGINE_TOLERANCES["fp32"][0]
    # an FP16 model checked against its FP32 original: FP16's tolerances, said so; FP32's would fail it
    result = validate(half, original)
    assert result["precision"]["name"] == "fp16" and "float16" in result["precision"]["why"]
    assert (result["outputs"][0]["atol"], result["outputs"][0]["rtol"]) == ENGINE_TOLERANCES["fp16"]
    assert result["passed"]
    assert not validate(half, original, tolerances=Tolerances(*ENGINE_TOLERANCES["fp32"]))["passed"]
    shown = cli("validate", half, "--against", original)
    assert shown.returncode == 0 and "precision FP16" in shown.stdout and "atol 0.001, rtol 0.02" in shown.stdout
    given = validate(half, original, tolerances=Tolerances(rtol=0.5))
    assert given["outputs"][0]["rtol"] == 0.5 and given["outputs"][0]["atol"] == ENGINE_TOLERANCES["fp16"][0]
